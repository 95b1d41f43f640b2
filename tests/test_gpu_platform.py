"""The platform on GPUs: DDP training with `--gpu` (NCCL, bf16), the killed-worker resume on GPU
workers, Ray Data embedding on a GPU actor and a Serve replica with `device: auto`.

All `gpu`-marked: they run wherever torch sees CUDA (`bench/gpu_check.sh` runs them first) and
are reported as skipped elsewhere. The CPU versions of the same paths are in
test_platform_train.py, test_serve_ray.py, test_device.py and test_gpu_autocast.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parent.parent
TINY = ["--set", "transformer.layers=1", "--allow-random-towers"]


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _history(workdir: Path, run_id: str) -> dict[str, list[float]]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir.resolve() / 'mlflow.db'}")
    keys = ("gpus", "bf16", "train_loss", "epoch")
    return {k: [m.value for m in client.get_metric_history(run_id, k)] for k in keys}


def test_two_worker_ddp_with_gpu_trains_in_bf16_on_nccl(synth_dir, tmp_path, monkeypatch):
    """`outfitter train --workers 2 --gpu`: both workers on GPUs (NCCL backend), bf16 autocast."""
    if _gpus() < 2:
        pytest.skip(f"2-worker DDP needs 2 GPUs; torch sees {_gpus()}")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "metrics.json"
    cmd = [
        sys.executable, "-m", "outfitter.cli", "train", "--model-config", "hybrid-tiny",
        "--data", str(synth_dir), "--workers", "2", "--gpu", "--epochs", "2",
        "--batch-size", "16", "--max-steps-per-epoch", "8", "--workdir", str(tmp_path),
        "--metrics-out", str(out), "--run-name", "ddp-gpu", *TINY,
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for split in ("valid", "test"):
        assert 0.0 <= result[split]["compatibility_auc"] <= 1.0
    history = _history(tmp_path, result["run_id"])
    assert history["gpus"] and set(history["gpus"]) == {2.0}, history
    assert set(history["bf16"]) == {1.0}, history
    assert all(np.isfinite(history["train_loss"])), history


def test_killed_gpu_worker_resumes_from_the_last_checkpoint(ray_session, synth_dir, tmp_path):
    """SIGKILL a GPU Train worker after the first checkpoint: the run finishes from it."""
    from test_platform_train import _settings, kill_a_worker_mid_run

    from outfitter.platform.train.runs import train_and_register

    if _gpus() < 1 or ray_session.cluster_resources().get("GPU", 0) < 1:
        pytest.skip("Ray sees no GPU")
    workers = min(2, int(ray_session.cluster_resources()["GPU"]))
    settings = _settings(
        tmp_path, "killed-gpu", epochs=4, batch_size=4, max_steps_per_epoch=48,
        workers=workers, use_gpu=True,
    )  # fmt: skip
    outcome, _ = kill_a_worker_mid_run(
        lambda: train_and_register(
            "hybrid-tiny",
            synth_dir,
            settings,
            workdir=tmp_path,
            overrides={"transformer.layers": 1},
        ),
        Path(settings.storage_path) / "killed-gpu",
        wait_s=300,
        join_s=600,
    )
    history = outcome.history
    assert history[-1]["epoch"] == 4
    assert max(h["resumed_from_epoch"] for h in history) >= 1
    assert {h["gpus"] for h in history} == {float(workers)}


def test_ray_data_embeds_on_a_gpu_actor(ray_session, synth_dir, tmp_path):
    """`embed_catalog(use_gpu=True)`: actors with num_gpus=1; same features as the CPU towers."""
    from outfitter.data import load_catalog
    from outfitter.model import load_config
    from outfitter.model.towers import compute_features, create_towers
    from outfitter.platform.embed import embed_catalog

    if ray_session.cluster_resources().get("GPU", 0) < 1:
        pytest.skip("Ray sees no GPU")
    catalog = load_catalog(synth_dir)
    clip = load_config("hybrid-tiny").clip
    table, _, cached = embed_catalog(
        catalog, clip, cache_dir=tmp_path, use_gpu=True, actors=1, force=True
    )
    assert not cached
    reference = compute_features(create_towers(clip, device="cpu"), catalog)
    rows = table.rows(reference.ids)
    np.testing.assert_allclose(np.asarray(table.image)[rows], reference.image, atol=2e-3)
    np.testing.assert_allclose(np.asarray(table.text)[rows], reference.text, atol=2e-3)


def _gpu_pids() -> set[int]:
    out = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return {int(line) for line in out.split() if line.strip().isdigit()}


def test_serve_with_device_auto_answers_from_the_gpu(ray_session, synth_dir, tmp_path_factory):
    """serve_configs/local.yaml with `device: auto` and half a GPU per replica: the replica holds
    its model on the GPU (its process is a CUDA compute app) and answers every endpoint."""
    import requests
    from ray import serve
    from serve_helpers import free_port, image_b64, replica_pids, tiny_versions

    from outfitter.data import load_catalog
    from outfitter.platform.serve import launch

    if ray_session.cluster_resources().get("GPU", 0) < 0.5:
        pytest.skip("Ray sees no GPU")
    versions = tiny_versions(tmp_path_factory.getbasetemp() / "tiny-models", synth_dir)
    config = launch.load_serve_config(ROOT / "serve_configs" / "local.yaml")
    config["http_options"]["port"] = free_port()
    app = config["applications"][0]
    app["args"].update(model_uri=str(versions[0]), data_dir=str(synth_dir), device="auto")
    deployment = app["deployments"][0]
    deployment["ray_actor_options"] = {"num_cpus": 1, "num_gpus": 0.5}
    deployment.pop("autoscaling_config", None)
    deployment["num_replicas"] = 1
    launch.deploy(launch.prepare_config(config, pin=False), timeout_s=300)
    try:
        base = launch.url_of(config)
        outfit = [{"item_id": i} for i in load_catalog(synth_dir).item_ids[:2]]
        new = {"title": "green scarf", "description": "wool", "image_b64": image_b64()}
        r = requests.post(f"{base}/v1/compatibility", json={"items": [*outfit, new]}, timeout=60)
        assert r.status_code == 200, r.text
        target = {"description": "white canvas sneakers"}
        r = requests.post(
            f"{base}/v1/retrieve", json={"items": outfit, "target": target}, timeout=60
        )
        assert r.status_code == 200, r.text
        pids = replica_pids(app["name"], deployment["name"])
        assert pids and set(pids) <= _gpu_pids(), f"replicas {pids} hold no CUDA context"
        shards = requests.get(f"{base}/v1/model", timeout=30).json()["index"]["shards"]
        import faiss

        if hasattr(faiss, "StandardGpuResources"):
            assert all(kind.startswith("Gpu") for kind in shards.values()), shards
    finally:
        serve.shutdown()
