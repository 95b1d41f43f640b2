"""The Serve config files and the application builder, without starting Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from outfitter.platform.serving import launch
from outfitter.platform.serving.deployments import MODEL_DEPLOYMENTS, AppArgs, build_app

CONFIGS = Path(__file__).resolve().parent.parent / "serve_configs"


def _app(config: dict) -> dict:
    (app,) = config["applications"]
    return app


@pytest.mark.parametrize("name", ["local.yaml", "gpu.yaml"])
def test_configs_are_valid_serve_configs_bound_to_loopback(name):
    config = launch.load_serve_config(CONFIGS / name)
    ServeDeploySchema.model_validate(config)
    assert config["http_options"]["host"] == "127.0.0.1"
    app = _app(config)
    assert app["import_path"] == launch.BUILDER
    AppArgs.model_validate(app["args"])
    deployments = {d["name"]: d for d in app["deployments"]}
    assert set(deployments) == {*MODEL_DEPLOYMENTS, "Ingress"}
    assert all("autoscaling_config" in d for d in deployments.values())


def test_gpu_config_shares_gpus_and_autoscales():
    deployments = {
        d["name"]: d for d in _app(launch.load_serve_config(CONFIGS / "gpu.yaml"))["deployments"]
    }
    for name in ("ItemEncoder", "OutfitScorer"):
        assert 0 < deployments[name]["ray_actor_options"]["num_gpus"] < 1
        scaling = deployments[name]["autoscaling_config"]
        assert scaling["min_replicas"] < scaling["max_replicas"]


def test_rayservice_embeds_the_gpu_application():
    manifest = yaml.safe_load((CONFIGS / "rayservice.yaml").read_text())
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayService")
    embedded = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(embedded)
    gpu = launch.load_serve_config(CONFIGS / "gpu.yaml")
    assert embedded["applications"] == gpu["applications"]
    assert {k: v for k, v in embedded["http_options"].items() if k != "host"} == {
        k: v for k, v in gpu["http_options"].items() if k != "host"
    }
    workers = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert any(
        "nvidia.com/gpu" in c["resources"]["limits"]
        for w in workers
        for c in w["template"]["spec"]["containers"]
    )


def test_prepare_config_resolves_paths_and_pins_versions(tmp_path):
    config = launch.load_serve_config(CONFIGS / "local.yaml")
    _app(config)["args"]["model_uri"] = "models:/outfitter/7"
    prepared = launch.prepare_config(config, base=tmp_path)
    args = _app(prepared)["args"]
    assert args["data_dir"] == str(tmp_path / "outfitter-work" / "data")
    assert args["tracking_uri"] == f"sqlite:///{tmp_path / 'outfitter-work' / 'mlflow.db'}"
    configs = {d["name"]: d.get("user_config") for d in _app(prepared)["deployments"]}
    for name in MODEL_DEPLOYMENTS:
        assert configs[name]["model_uri"] == "models:/outfitter/7"
        assert configs[name]["revision"] == "7"  # a change of user_config only: in-place reload
    assert configs["ItemEncoder"]["max_batch_size"] == 16
    assert _app(config)["args"]["data_dir"] == "outfitter-work/data"  # the input is not modified


def test_prepare_config_keeps_local_checkpoints_unpinned(tmp_path):
    config = launch.load_serve_config(CONFIGS / "local.yaml")
    _app(config)["args"]["model_uri"] = "ckpt"
    prepared = launch.prepare_config(config, base=tmp_path)
    scorer = next(d for d in _app(prepared)["deployments"] if d["name"] == "OutfitScorer")
    assert scorer["user_config"]["model_uri"] == str(tmp_path / "ckpt")
    assert scorer["user_config"]["revision"] == "0"


def test_build_app_composes_four_deployments(tmp_path):
    app = build_app({"model_uri": "models:/outfitter@champion", "data_dir": str(tmp_path)})
    assert app._bound_deployment.name == "Ingress"
    with pytest.raises(ValueError, match="data_dir"):
        build_app({"model_uri": "models:/outfitter@champion"})
    with pytest.raises(TypeError, match="max_bodyy"):
        build_app({"data_dir": str(tmp_path), "limits": {"max_bodyy": 1}})


def test_bad_config_files_are_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("applications: [{name: x, import_path: 3, deployments: 7}]")
    with pytest.raises(launch.ServeConfigError, match="not a valid Serve config"):
        launch.load_serve_config(bad)
    with pytest.raises(launch.ServeConfigError, match="does not exist"):
        launch.load_serve_config(tmp_path / "missing.yaml")
