"""Ray Tune: search configs are validated before anything starts; `tune_configs/smoke.yaml` runs,
resumes with the same command after its driver is killed, ASHA stops trials early, and the best
trial is registered with its metric."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from outfitter.platform.tune.config import TuneConfigError, load_search_config

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "tune_configs" / "smoke.yaml"


def _write(tmp_path: Path, **changes) -> Path:
    doc = yaml.safe_load(SMOKE.read_text())
    doc.update(changes)
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "tune_configs").glob("*.yaml")))
def test_shipped_configs_validate(name):
    search = load_search_config(ROOT / "tune_configs" / name)
    assert search.num_samples >= 1 and search.search_space


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"search_space": {"settings.lr": {"loguniform": [0.0, 1e-3]}}}, "bounds must be > 0"),
        ({"search_space": {"settings.lr": {"uniform": [1e-3, 1e-4]}}}, "lower bound"),
        ({"search_space": {"settings.nope": {"choice": [1, 2]}}}, "not a training setting"),
        ({"search_space": {"lr": {"choice": [1, 2]}}}, "must start with 'settings.' or 'model.'"),
        ({"search_space": {"settings.lr": {"normal": [0, 1]}}}, "unknown sampler"),
        ({"metric": "accuracy"}, "metric must be one of"),
        ({"scheduler": {"type": "asha", "grace_period": 5, "max_t": 2}}, "grace_period"),
        ({"unknown_key": 1}, "unknown_key"),
        (
            {"search_space": {"settings.lr": {"grid": [1e-3]}}, "searcher": {"type": "optuna"}},
            "grid parameters need searcher type 'random'",
        ),
        ({"settings": {"epochs": 0}}, "epochs must be >= 1"),
    ],
)
def test_bad_search_configs_are_refused_with_the_rule(tmp_path, changes, message):
    with pytest.raises(TuneConfigError, match=message):
        load_search_config(_write(tmp_path, **changes))


def test_missing_config_file_names_it(tmp_path):
    with pytest.raises(TuneConfigError, match="does not exist"):
        load_search_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("extra", "warned"),
    [
        (["--allow-random-towers"], True),  # warned, then searched
        (["--set", "clip.pretrained=towers.safetensors"], False),  # weights given: no word
    ],
)
def test_cli_tune_passes_the_guard_with_the_flag_or_weights(
    synth_dir, tmp_path, monkeypatch, extra, warned
):
    """Past the guard (its refusal: test_model_clip.py::test_cli_refuses_random_frozen_towers) the
    search starts with the `--set` overrides (stopped there: no Ray)."""
    from typer.testing import CliRunner

    from outfitter.cli import app
    from outfitter.platform.tune import driver

    def reached(search, data_dir, **kwargs):
        raise ValueError(f"run_search reached with overrides={kwargs['overrides']}")

    monkeypatch.setattr(driver, "run_search", reached)
    args = ["tune", "--config", str(SMOKE), "--data", str(synth_dir), "--workdir", str(tmp_path)]
    result = CliRunner().invoke(app, args + extra)
    out = " ".join(result.output.split())
    assert result.exit_code == 2 and "run_search reached with overrides=" in out, out
    assert ("WARNING:" in out and "Training anyway (--allow-random-towers)" in out) == warned
    if not warned:
        assert "{'clip.pretrained': 'towers.safetensors'}" in out


def _trial_dirs(storage: Path, name: str) -> list[Path]:
    """Tune's trial folders (named after the trainable, `run_trial_*`: found by their params)."""
    root = storage / name
    return [p for p in root.iterdir() if (p / "params.json").is_file()] if root.is_dir() else []


def _finished_trials(storage: Path, name: str, epochs: int) -> dict[str, str]:
    """Trial folder name -> its result.json, for the trials that reported `epochs` epochs."""
    done = {}
    for trial in _trial_dirs(storage, name):
        result = trial / "result.json"
        text = result.read_text() if result.is_file() else ""
        if len(text.splitlines()) >= epochs:
            done[trial.name] = text
    return done


@pytest.mark.slow
def test_killed_smoke_search_resumes_and_registers_the_best_trial(synth_dir, tmp_path, monkeypatch):
    """`outfitter tune --config tune_configs/smoke.yaml`, its driver SIGKILLed after the first
    trial finished, then the same command again: the search completes without running the
    finished trial again, ASHA stops trials early, and the best trial is registered with its
    metric. (One search for both guarantees: a second, uninterrupted smoke search cost ~90 s.)"""
    from outfitter.platform import registry

    search = load_search_config(SMOKE)
    storage = tmp_path / "ray_results"
    cmd = [
        sys.executable, "-m", "outfitter.cli", "tune", "--config", str(SMOKE),
        "--data", str(synth_dir), "--workdir", str(tmp_path), "--storage-path", str(storage),
        "--allow-random-towers",
    ]  # fmt: skip
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    first = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 300
    max_t = search.scheduler.max_t  # the first trial has no rival to lose to: it runs them all
    while time.time() < deadline and not _finished_trials(storage, search.name, max_t):
        assert first.poll() is None, "the search ended before it could be interrupted"
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)  # the driver and its Ray processes
    first.wait(timeout=60)
    # Two trials run side by side (smoke.yaml): both may have finished by the kill.
    finished = _finished_trials(storage, search.name, max_t)
    assert 1 <= len(finished) < search.num_samples, sorted(finished)
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert len(_trial_dirs(storage, search.name)) == search.num_samples >= 2, (
        "a trial was started twice"
    )
    for name, results in finished.items():  # a finished trial is not run again
        assert (storage / search.name / name / "result.json").read_text() == results, name
    summary = re.search(
        r"(\d+) trials \((\d+) stopped early.* registered version (\d+)", second.stdout
    )
    assert summary, second.stdout[-2000:]
    trials, stopped, model_version = (int(g) for g in summary.groups())
    assert trials == search.num_samples
    assert stopped >= 1, "ASHA stopped no trial"
    # the registered version is the best trial's, with its metric
    table = pd.read_csv(tmp_path / f"tune-{search.name}-results.csv")
    best_metric = table[f"best_{search.metric}"].max()
    assert int(((table["epochs"] < max_t) & ~table["error"]).sum()) == stopped
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}")
    registry.configure_tracking(tmp_path)
    version = registry.version_by_alias("outfitter", "challenger")
    assert int(version.version) == model_version
    logged = registry.version_metrics(version)[search.metric]
    assert logged == pytest.approx(best_metric)
    resolved = registry.resolve_model(f"models:/outfitter/{model_version}")
    meta = (resolved.checkpoint_dir / "meta.json").read_text()
    assert f"{logged}"[:8] in meta
