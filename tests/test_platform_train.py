"""Ray Train + MLflow: a tiny 2-worker run end to end, evaluation reproduces it, and a killed
worker costs at most the epoch in flight, in a run tracked and registered by a real `mlflow
server`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from serve_helpers import free_port, wait_http

from outfitter.platform.train.settings import TrainSettings

TINY = {"transformer.layers": 1}
# The module's run: 2 workers, small batches, so an epoch takes a few seconds and a worker killed
# after epoch 1's checkpoint dies mid-run, with epochs left to resume. The uninterrupted `trained`
# run is also the killed run's reference (same settings, same seed).
RUN = dict(workers=2, epochs=3, batch_size=4, max_steps_per_epoch=24)


def _settings(tmp_path: Path, name: str, **kw) -> TrainSettings:
    base = dict(
        epochs=2,
        batch_size=16,
        max_steps_per_epoch=4,
        patience=0,
        run_name=name,
        storage_path=str(tmp_path / "ray_results"),
        max_failures=1,
    )
    base.update(kw)
    return TrainSettings().with_overrides(**base)


@pytest.fixture(scope="module")
def driver_calls(monkeypatch_module) -> dict:
    """Calls made in this (driver) process to the costly steps of a model version's use: opening
    a checkpoint, encoding the catalog, downloading a version from MLflow, stamping the catalog
    (every image file's size and time: the dataset check's task did it already)."""
    import outfitter.model.checkpoint as checkpoint
    import outfitter.model.evaluate as evaluate
    import outfitter.platform.embed as embed
    import outfitter.platform.registry as registry

    calls = {"load_checkpoint": 0, "encode_catalog": 0, "_download": 0, "catalog_stamp": 0}
    for module in (checkpoint, evaluate, registry, embed):
        for name in calls:
            real = getattr(module, name, None)
            if real is None:
                continue

            def counted(*args, _real=real, _name=name, **kwargs):
                calls[_name] += 1
                return _real(*args, **kwargs)

            monkeypatch_module.setattr(module, name, counted)
    return calls


@pytest.fixture(scope="module")
def trained(ray_session, synth_dir, tmp_path_factory, monkeypatch_module, driver_calls):
    """One tiny 2-worker training run registered in a local sqlite MLflow store (and promoted,
    its index built and logged); `driver_calls` after it, in `work/driver_calls.json`."""
    from outfitter.platform.train.runs import train_and_register

    work = tmp_path_factory.mktemp("train")
    monkeypatch_module.delenv("MLFLOW_TRACKING_URI", raising=False)
    outcome = train_and_register(
        "hybrid-tiny",
        synth_dir,
        _settings(work, "two-workers", **RUN),
        workdir=work,
        overrides=TINY,
        promote_if_better=True,
    )
    (work / "driver_calls.json").write_text(json.dumps(driver_calls))
    return work, outcome


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_two_worker_run_registers_a_challenger(trained):
    from outfitter.platform import registry

    work, outcome = trained
    assert outcome.model_version == "1"
    assert [h["epoch"] for h in outcome.history] == [1, 2, 3]
    for split in (outcome.valid, outcome.test):
        assert 0.0 <= split["compatibility_auc"] <= 1.0
        assert 0.0 <= split["fitb_accuracy"] <= 1.0
    challenger = registry.version_by_alias("outfitter", "challenger")
    assert str(challenger.version) == "1"
    metrics = registry.version_metrics(challenger)
    assert metrics["best_valid_compatibility_auc"] == pytest.approx(
        outcome.valid["compatibility_auc"]
    )


def test_a_run_opens_its_best_checkpoint_once_and_encodes_the_catalog_once(trained):
    """Evaluation of both splits, plots, the index and promotion share one opened checkpoint,
    keyed by the catalog stamp the dataset check computed."""
    work, outcome = trained
    calls = json.loads((work / "driver_calls.json").read_text())
    assert outcome.promoted
    assert calls == {
        "load_checkpoint": 1,
        "encode_catalog": 1,
        "_download": 0,
        "catalog_stamp": 0,
    }, calls


def test_evaluate_reproduces_validation_numbers(trained, synth_dir, driver_calls):
    from outfitter.platform.evaluation import evaluate_model

    work, outcome = trained
    encoded = driver_calls["encode_catalog"]
    result = evaluate_model("models:/outfitter@challenger", synth_dir, "valid", workdir=work)
    assert result["model_version"] == outcome.model_version
    for key in ("compatibility_auc", "fitb_accuracy", "recall_at_10"):
        assert result[key] == pytest.approx(outcome.valid[key], abs=1e-6)
    # the downloaded version finds the vectors its training run encoded
    assert driver_calls["encode_catalog"] == encoded


def test_rerunning_a_finished_run_name_is_refused(trained, synth_dir):
    from outfitter.platform.train.runs import train_and_register

    work, _ = trained
    with pytest.raises(ValueError, match="already finished"):
        train_and_register(
            "hybrid-tiny", synth_dir, _settings(work, "two-workers"), workdir=work, overrides=TINY
        )


def _registered_checkpoints(storage: Path) -> list:
    snapshot = storage / "checkpoint_manager_snapshot.json"
    try:
        return json.loads(snapshot.read_text()).get("checkpoint_results", [])
    except (OSError, ValueError):  # not written yet, or being written
        return []


def _train_worker_pids() -> list[int]:
    """Live Ray Train worker processes of this test's own Ray (`ray::RayTrainWorker...`, found
    through the process table: the state API needs the dashboard, off in tests); never another
    user's worker on a shared machine."""
    from serve_helpers import own_processes

    return own_processes("ray::RayTrainWorker")


def kill_a_worker_mid_run(train, storage: Path, *, wait_s: float, join_s: float):
    """Run `train()` in a thread; once the controller has registered a checkpoint (its snapshot
    file lists it), SIGKILL one Train worker of this test's Ray. Returns (what `train()`
    returned, the pid killed)."""
    box: dict = {}

    def run():
        try:
            box["outcome"] = train()
        except BaseException as err:  # surfaced by the assertion below
            box["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.time() + wait_s
    while time.time() < deadline and not _registered_checkpoints(storage):
        time.sleep(0.1)
    assert _registered_checkpoints(storage), "no checkpoint was registered"
    pids = _train_worker_pids()
    assert pids, "no live Ray Train worker to kill"
    os.kill(pids[0], signal.SIGKILL)
    thread.join(timeout=join_s)
    assert "error" not in box, box.get("error")
    return box["outcome"], pids[0]


@contextlib.contextmanager
def mlflow_server(folder: Path):
    """A real `mlflow server` process on 127.0.0.1 (sqlite store and artifacts in `folder`), as
    a cluster's tracking store; yields its URI."""
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{folder / 'server.db'}",
            "--artifacts-destination",
            str(folder / "server-artifacts"),
            "--workers",
            "1",
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        uri = f"http://127.0.0.1:{port}"
        wait_http(uri + "/health", server)
        yield uri
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_killed_worker_resumes_from_last_checkpoint(trained, synth_dir, tmp_path, monkeypatch):
    """The cluster set-up: a real `mlflow server` as the tracking URI, and one of the run's two
    Train workers SIGKILLed after the first checkpoint. The run finishes, restarted from it, with
    the metrics of the same run uninterrupted (the `trained` run, same settings), and its version
    registers and loads back through the server. (One run for both: each alone took ~40 s.)"""
    from outfitter.model.checkpoint import load_checkpoint
    from outfitter.platform import registry
    from outfitter.platform.train.runs import train_and_register

    _, reference = trained
    settings = _settings(tmp_path, "killed", **RUN)
    with mlflow_server(tmp_path) as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        outcome, killed = kill_a_worker_mid_run(
            lambda: train_and_register(
                "hybrid-tiny", synth_dir, settings, workdir=tmp_path, overrides=TINY
            ),
            Path(settings.storage_path) / "killed",
            wait_s=240,
            join_s=300,
        )
        resolved = registry.resolve_model("models:/outfitter@challenger")
        assert resolved.version == outcome.model_version
        _, cfg, meta = load_checkpoint(resolved.checkpoint_dir)
        best = json.loads((outcome.checkpoint_dir / "meta.json").read_text())
        assert cfg.transformer.layers == 1 and meta["epoch"] == best["epoch"], (meta, best)
    assert not (tmp_path / "mlflow.db").exists(), "wrote a local store instead of the server"
    history = outcome.history
    assert history[-1]["epoch"] == 3
    resumed = [h["resumed_from_epoch"] for h in history]
    epochs = [h["epoch"] for h in history]
    assert max(resumed) >= 1, (
        f"the restarted group did not resume from a checkpoint: {resumed} {epochs} killed {killed}"
    )
    assert len(epochs) - len(set(epochs)) <= 1, (
        f"more than the epoch in flight was repeated: {epochs}"
    )
    # The same run without the kill: the resumed run ends with the same weights, so the same
    # losses and validation metrics (each epoch's randomness depends on the epoch alone).
    assert [h["epoch"] for h in reference.history] == [1, 2, 3]
    killed_last, reference_last = history[-1], reference.history[-1]
    for key in ("train_loss", "valid_compatibility_auc", "valid_fitb_accuracy"):
        assert killed_last[key] == pytest.approx(reference_last[key], abs=1e-4), key


def test_epoch_progress_shows_the_epochs_logged_to_mlflow(tmp_path, capsys):
    import mlflow

    from outfitter.platform.train.runs import EpochProgress

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("progress")).info.run_id
    for epoch, auc in ((1, 0.61), (2, 0.74)):
        client.log_metric(run_id, "epoch", epoch, step=epoch)
        client.log_metric(run_id, "train_loss", 3.0 / epoch, step=epoch)
        client.log_metric(run_id, "valid_compatibility_auc", auc, step=epoch)
    with EpochProgress(uri, run_id, 30, "valid_compatibility_auc", every_s=0.05):
        time.sleep(0.5)
    out = capsys.readouterr().out
    assert "epoch 2/30" in out and "loss 1.500" in out and "valid_compatibility_auc 0.740" in out


def test_the_driver_builds_and_starts_a_run_without_importing_torch(tmp_path):
    """`TorchBackend` keeps torch (~0.27 GiB of private memory with this CUDA build) out of the
    driver until training is over: Ray Train builds its backend callbacks and the workers' train
    function in the driver, where `TorchTrainer` imported torch."""
    code = (
        "import sys\n"
        "from outfitter.platform.train.settings import TrainSettings\n"
        "from outfitter.platform.train.trainer import build_trainer\n"
        "trainer = build_trainer({}, TrainSettings(workers=2, storage_path=sys.argv[1]))\n"
        "trainer._create_default_callbacks()\n"  # what fit() builds in the driver
        "trainer._get_train_func()\n"
        "print(type(trainer).__name__, 'torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["DataParallelTrainer", "False"]


def test_torch_backend_is_rays_torch_config():
    from ray.train.torch.config import TorchConfig, _TorchBackend

    from outfitter.platform.train.trainer import TorchBackend

    for backend in ("gloo", "nccl"):
        assert TorchBackend(backend=backend).to_dict() == TorchConfig(backend=backend).to_dict()
    assert TorchBackend().framework == TorchConfig().framework
    ours = TorchBackend().backend_cls()
    assert ours.share_cuda_visible_devices == _TorchBackend.share_cuda_visible_devices
    # every hook Ray's backend implements is passed on to it (a new one would be skipped)
    hooks = {n for n, v in vars(_TorchBackend).items() if callable(v) and not n.startswith("_")}
    assert hooks and hooks <= {n for n in vars(type(ours)) if not n.startswith("_")}
    with TorchBackend().train_func_context():  # a CPU worker: no device to set, nothing raised
        pass


def test_a_run_on_a_broken_dataset_stops_with_the_checks_report(ray_session, synth_dir, tmp_path):
    """The dataset check runs in a Ray task (the driver never parses the catalog): its
    DatasetError reaches the caller as itself, the report a user reads, not Ray's wrapper."""
    import shutil

    from outfitter.data import DatasetError
    from outfitter.model import load_config
    from outfitter.platform.train.runs import shared_inputs

    broken = tmp_path / "broken"
    shutil.copytree(synth_dir, broken)
    missing = sorted((broken / "images").iterdir())[0]
    missing.unlink()
    with pytest.raises(DatasetError) as err:
        shared_inputs(load_config("hybrid-tiny"), broken, version="nondisjoint")
    assert type(err.value) is DatasetError
    assert missing.stem in str(err.value) and "ray::" not in str(err.value)


def test_shared_inputs_hold_the_checked_catalog_and_its_cached_features(ray_session, synth_dir):
    from outfitter.data import load_catalog
    from outfitter.model import load_config
    from outfitter.platform.embed import embed_catalog
    from outfitter.platform.train.runs import shared_inputs, shared_values

    cfg = load_config("hybrid-tiny")
    inputs = shared_inputs(cfg, synth_dir, version="nondisjoint")
    assert inputs["data_dir"] == str(synth_dir.resolve()) and inputs["data_format"] == "polyvore"
    catalog, features = shared_values(inputs)
    expected = load_catalog(synth_dir)
    assert catalog.item_ids == expected.item_ids
    assert catalog.items[expected.item_ids[0]] == expected.items[expected.item_ids[0]]
    cached, _, reused = embed_catalog(expected, cfg.clip)
    assert reused  # the run embedded (or found) exactly the cache entry of this catalog and towers
    assert features.ids == cached.ids
    assert (features.image == cached.image).all() and (features.text == cached.text).all()
