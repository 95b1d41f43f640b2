"""The Serve config files and the application builder, without starting Ray."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from outfitter.platform.serve import launch
from outfitter.platform.serve.deployments import DEPLOYMENT, AppArgs, build_app

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
    (deployment,) = app["deployments"]  # one replica answers a request: no hops
    assert deployment["name"] == DEPLOYMENT
    scaling = deployment["autoscaling_config"]
    assert 1 <= scaling["min_replicas"] < scaling["max_replicas"]
    # a bounded queue (503 + Retry-After beyond it), batches that fit in a replica's admissions
    assert deployment["max_queued_requests"] > 0
    assert deployment["backpressure_config"]["retry_after_s"] >= 1
    max_batch = app["args"]["max_batch_size"]
    assert deployment["max_ongoing_requests"] >= max_batch
    in_flight = app["args"]["limits"]["max_in_flight"]
    assert max_batch <= in_flight < deployment["max_ongoing_requests"]
    assert app["logging_config"]["enable_access_log"] is False


def test_local_config_autoscales_within_this_machine():
    (deployment,) = _app(launch.load_serve_config(CONFIGS / "local.yaml"))["deployments"]
    scaling = deployment["autoscaling_config"]
    assert scaling["max_replicas"] * deployment["ray_actor_options"]["num_cpus"] <= 2


def test_gpu_config_places_its_largest_scale_out():
    """Every GPU fraction times max_replicas fits the GPUs the RayService's workers can hold, and
    the per-replica admission sits 1.2-1.5x above the autoscaler's target."""
    (deployment,) = _app(launch.load_serve_config(CONFIGS / "gpu.yaml"))["deployments"]
    scaling, actor = deployment["autoscaling_config"], deployment["ray_actor_options"]
    assert 0 < actor["num_gpus"] < 1
    assert 1.2 <= deployment["max_ongoing_requests"] / scaling["target_ongoing_requests"] <= 1.5
    assert scaling["upscale_delay_s"] < scaling["downscale_delay_s"]
    manifest = yaml.safe_load((CONFIGS / "rayservice.yaml").read_text())
    (workers,) = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    (container,) = workers["template"]["spec"]["containers"]
    gpus = workers["maxReplicas"] * int(container["resources"]["limits"]["nvidia.com/gpu"])
    cpus = workers["maxReplicas"] * int(container["resources"]["limits"]["cpu"])
    assert scaling["max_replicas"] * actor["num_gpus"] <= gpus
    assert scaling["max_replicas"] * actor["num_cpus"] <= cpus


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
    (deployment,) = _app(prepared)["deployments"]
    assert deployment["user_config"]["model_uri"] == "models:/outfitter/7"
    assert deployment["user_config"]["revision"] == "7"  # a change of user_config only: in place
    assert deployment["user_config"]["max_batch_size"] == 16
    assert _app(config)["args"]["data_dir"] == "outfitter-work/data"  # the input is not modified


def test_prepare_config_keeps_local_checkpoints_unpinned(tmp_path):
    config = launch.load_serve_config(CONFIGS / "local.yaml")
    _app(config)["args"]["model_uri"] = "ckpt"
    prepared = launch.prepare_config(config, base=tmp_path)
    (deployment,) = _app(prepared)["deployments"]
    assert deployment["user_config"]["model_uri"] == str(tmp_path / "ckpt")
    assert deployment["user_config"]["revision"] == "0"


def test_build_app_is_one_deployment(tmp_path):
    app = build_app({"model_uri": str(tmp_path / "ckpt"), "data_dir": str(tmp_path)})
    assert app._bound_deployment.name == DEPLOYMENT
    assert app._bound_deployment._deployment_config.user_config["model_uri"] == str(
        tmp_path / "ckpt"
    )
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


def test_haproxy_ingress_is_on_where_serve_starts(monkeypatch):
    """`outfitter serve` and the demo start Ray with HAProxy on unless the user chose; the
    RayService sets it on every node."""
    monkeypatch.delenv("RAY_SERVE_ENABLE_HA_PROXY", raising=False)
    launch.apply_serve_env()
    assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")
    launch.apply_serve_env()
    assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "0"  # an explicit choice is kept
    manifest = yaml.safe_load((CONFIGS / "rayservice.yaml").read_text())
    cluster = manifest["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            env = {e["name"]: e["value"] for e in container["env"]}
            for key, value in launch.SERVE_ENV.items():  # the same settings as a local start
                assert env.get(key) == value, (container["name"], key)


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_serve_stops_gracefully_on_sigterm_and_on_an_inherited_ignored_sigint(signame):
    """`outfitter serve` turns SIGTERM, and SIGINT even when started in the background (which
    inherits SIGINT ignored), into its Ctrl-C shutdown of Serve."""
    import os
    import signal

    from outfitter.cli import _stop_on_signals

    sig = getattr(signal, signame)
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a background job inherits it
        _stop_on_signals()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), sig)  # the handler runs as soon as the call returns
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
