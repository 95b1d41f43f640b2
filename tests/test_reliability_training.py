"""Training faults: unwritable or full storage fails before training, a checkpoint is never
half-written, and a killed driver re-run with the same command resumes from its last checkpoint.

(A killed Train *worker* is covered by test_platform_train.py::
test_killed_worker_resumes_from_last_checkpoint.)
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
import types
from collections import namedtuple
from pathlib import Path

import pytest
from serve_helpers import own_processes
from typer.testing import CliRunner

from outfitter.platform.train import trainer
from outfitter.platform.train.loop import STATE_FILE

COMPLETE = {"config.json", "model.safetensors", "meta.json", STATE_FILE}

# ---------------------------------------------------------------- storage pre-flight


def _unwritable(tmp_path: Path, kind: str) -> Path:
    if kind == "parent-is-a-file":
        (tmp_path / "file").write_text("x")
        return tmp_path / "file" / "ray_results"
    if kind == "kernel-refuses":  # sysfs refuses new entries, even to root
        if not Path("/sys/kernel").is_dir():
            pytest.skip("no sysfs here")
        return Path("/sys/outfitter-ray-results")
    folder = tmp_path / "read-only"  # kind == "no-permission": effective for non-root only
    folder.mkdir()
    folder.chmod(0o500)
    if os.access(folder, os.W_OK):
        pytest.skip("running as root: permission bits do not stop writes")
    return folder / "ray_results"


@pytest.mark.parametrize("kind", ["parent-is-a-file", "kernel-refuses", "no-permission"])
def test_unwritable_storage_fails_with_a_clear_error(tmp_path, kind):
    path = _unwritable(tmp_path, kind)
    with pytest.raises(PermissionError, match=r"training storage path .* is not writable .*"):
        trainer.checked_storage_path(str(path))


def test_full_disk_fails_with_a_clear_error(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(trainer.shutil, "disk_usage", lambda p: usage(2**30, 2**30 - 2**20, 2**20))
    with pytest.raises(PermissionError, match=r"has 1 MiB free; checkpoints need at least 512"):
        trainer.checked_storage_path(str(tmp_path / "ray_results"))


def test_uri_storage_passes_through():
    assert trainer.checked_storage_path("s3://bucket/results") == "s3://bucket/results"


@pytest.mark.parametrize("fault", ["unwritable", "full-disk"])
def test_cli_train_fails_fast_before_anything_starts(tmp_path, synth_dir, monkeypatch, fault):
    """`outfitter train` prints one `error:` line and exits 2; no MLflow store or run is made."""
    from outfitter.cli import app

    storage = tmp_path / "ray_results"
    if fault == "unwritable":
        storage = _unwritable(tmp_path, "parent-is-a-file")
    else:
        usage = namedtuple("usage", "total used free")
        monkeypatch.setattr(trainer.shutil, "disk_usage", lambda p: usage(2**30, 2**30, 0))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    workdir = tmp_path / "work"
    args = ["train", "--data", str(synth_dir), "--workdir", str(workdir), "--allow-random-towers"]
    t0 = time.perf_counter()
    result = CliRunner().invoke(app, [*args, "--storage-path", str(storage)])
    seconds = time.perf_counter() - t0
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    warned = [line for line in lines if line.startswith("WARNING: ")]  # random towers, allowed
    assert len(warned) == 1 and "--allow-random-towers" in warned[0], lines
    lines = [line for line in lines if line not in warned]
    assert len(lines) == 1 and lines[0].startswith("error: training storage path"), lines
    assert "Traceback" not in result.output
    assert not (workdir / "mlflow.db").exists(), "started tracking before the pre-flight"
    assert seconds < 30, f"took {seconds:.1f}s to refuse"  # no dataset check, Ray or MLflow


# ---------------------------------------------------------------- no half-written checkpoint


def _runner(save):
    logged = []
    return types.SimpleNamespace(save=save, log_metrics=lambda m, step: logged.append(step))


def test_a_crash_while_saving_reports_no_checkpoint(monkeypatch):
    """The disk fills after the first file: nothing is reported, the partial folder is gone."""
    import ray.train

    reported, folders = [], []
    monkeypatch.setattr(ray.train, "report", lambda *a, **kw: reported.append((a, kw)))

    def save(directory: Path, epoch, metrics):
        folders.append(directory)
        (directory / "config.json").write_text("{}")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        trainer._report(_runner(save), 0, {"epoch": 1}, rank=0)
    assert reported == [], "a half-written checkpoint was reported"
    assert not folders[0].exists(), "the partial checkpoint folder was left behind"


def test_a_checkpoint_is_complete_when_reported(monkeypatch, synth_dir, tmp_path_factory):
    """The real `EpochRunner.save` writes every file before `ray.train.report` sees the folder."""
    import ray.train
    import torch
    from serve_helpers import tiny_versions

    from outfitter.model.checkpoint import load_checkpoint
    from outfitter.platform.train.loop import EpochRunner
    from outfitter.platform.train.settings import TrainSettings

    model, cfg, _ = load_checkpoint(
        tiny_versions(tmp_path_factory.getbasetemp() / "tiny-models", synth_dir)[0]
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state = types.SimpleNamespace(
        settings=TrainSettings(), cfg=cfg, model=model, optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
        builder=types.SimpleNamespace(towers=None), best=None, bad_epochs=0,
    )  # fmt: skip
    seen = []

    def report(metrics, checkpoint=None):
        seen.append({p.name for p in Path(checkpoint.path).iterdir()})

    monkeypatch.setattr(ray.train, "report", report)
    runner = _runner(lambda d, e, m: EpochRunner.save(state, d, e, m))
    trainer._report(runner, 0, {"epoch": 1}, rank=0)
    assert len(seen) == 1 and seen[0] >= COMPLETE, seen


# ---------------------------------------------------------------- killed driver, same command


def _snapshot(storage: Path) -> dict:
    try:
        return json.loads((storage / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return {}


def _registered(storage: Path) -> list[str]:
    return [c["checkpoint_dir_name"] for c in _snapshot(storage).get("checkpoint_results", [])]


def _session_pids(sid: int) -> list[int]:
    """Live processes of session `sid` (the driver's, and the Ray processes it started)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # ended while we looked
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def _end_session(sid: int, grace: float = 15) -> None:
    """Wait until every process of the killed driver's session is gone (Ray workers follow their
    raylet within seconds); SIGKILL any left after `grace` seconds."""
    deadline = time.monotonic() + grace
    while (left := _session_pids(sid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _train_command(synth_dir: Path, workdir: Path) -> list[str]:
    return [
        sys.executable, "-m", "outfitter.cli", "train",
        "--data", str(synth_dir), "--workdir", str(workdir), "--run-name", "driver-kill",
        "--epochs", "3", "--batch-size", "4", "--set", "transformer.layers=1",
        "--allow-random-towers",
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killed_driver_rerun_resumes_from_last_checkpoint(synth_dir, tmp_path):
    """SIGKILL the `outfitter train` process (and its local Ray) after its first checkpoint; the
    same command then finishes the run from that checkpoint, in the same MLflow run."""
    workdir = tmp_path / "work"
    storage = workdir / "ray_results" / "driver-kill"
    # Ray Train's controller registers a reported checkpoint at its next poll of the workers
    # (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default). An epoch reported within that window
    # before the kill is repeated too; real epochs last minutes, these tiny ones about a second,
    # so the test polls at 0.25 s to keep the window well inside one epoch.
    env = {
        **os.environ,
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(
        _train_command(synth_dir, workdir), env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,  # its own session: the driver and the Ray it starts
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not _registered(storage) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _registered(storage), (tmp_path / "first.log").read_text()[-3000:]
        assert first.poll() is None, "the run finished before it could be killed"
        first.send_signal(signal.SIGKILL)  # the driver dies; its local Ray follows it
        first.wait(timeout=30)
    finally:
        _end_session(first.pid)
        log.close()
    # Read once the whole instance is gone: its controller may register an uploaded checkpoint
    # in the second before it follows the driver.
    latest = (_snapshot(storage).get("latest_checkpoint_result") or {}).get("metrics", {})
    last_epoch = int(latest.get("epoch", 0))

    second = subprocess.run(
        _train_command(synth_dir, workdir), env=env, capture_output=True, text=True,
        timeout=420, start_new_session=True,
    )  # fmt: skip
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    result = json.loads(second.stdout[second.stdout.index("{") :])
    history = _mlflow_history(workdir, result["run_id"])
    epochs = [int(h["epoch"]) for h in history]
    resumed = [int(h["resumed_from_epoch"]) for h in history]
    print(
        f"\nkilled after epoch {last_epoch}'s checkpoint; epochs logged {epochs}; resumed {resumed}"
    )
    assert last_epoch >= 1, latest
    assert epochs[-1] == 3, epochs  # ran to the end (patience 3 cannot stop it sooner)
    assert max(resumed) == last_epoch, f"did not resume from the last checkpoint: {resumed}"
    assert len(epochs) - len(set(epochs)) <= 1, f"more than the epoch in flight repeated: {epochs}"
    for name in _registered(storage):  # every registered checkpoint is complete
        files = {p.name for p in (storage / name).iterdir()}
        assert files >= COMPLETE, (name, files)


def _mlflow_history(workdir: Path, run_id: str) -> list[dict]:
    """Epoch reports of the run, both drivers' (the re-run resumes the same MLflow run)."""
    import mlflow

    from outfitter.platform.train.runs import _history

    old = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    try:
        return _history(run_id)
    finally:
        mlflow.set_tracking_uri(old)


# ---------------------------------------------------------------- fault tests kill their own


def _by_title(title: str) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if cmdline.read_bytes().startswith(title.encode()):
                pids.append(int(cmdline.parent.name))
    return pids


def test_a_fault_test_finds_only_the_workers_it_started(tmp_path):
    """Two processes titled like Train workers: one a child of this test, one detached (another
    user's, as far as this test can tell). Only the first is ours to kill."""
    title = "ray::RayTrainWorker"
    own = subprocess.Popen(["bash", "-c", f"exec -a {title}-own sleep 120"])
    pidfile = tmp_path / "foreign.pid"
    subprocess.run(  # double fork + new session: reparented away from this process tree
        ["setsid", "bash", "-c", f"(exec -a {title}-foreign sleep 120) & echo $! > {pidfile}"],
        check=True,
    )
    foreign = int(pidfile.read_text())
    try:
        deadline = time.monotonic() + 10
        while own.pid not in own_processes(title) and time.monotonic() < deadline:
            time.sleep(0.05)  # the exec has not happened yet
        found = own_processes(title)
        assert own.pid in found and foreign not in found, (own.pid, foreign, found)
        assert foreign in _by_title(title)  # what a title-only scan (the old helper) kills
    finally:
        own.kill()
        own.wait()
        with contextlib.suppress(ProcessLookupError):
            os.kill(foreign, signal.SIGKILL)  # started by this test, so ours to end
