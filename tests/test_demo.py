"""`outfitter demo --quick`: the whole pipeline on a small synthetic catalog, end to end."""

from __future__ import annotations

import json

import pytest
from serve_helpers import free_port
from typer.testing import CliRunner

from outfitter.cli import app


@pytest.mark.slow
def test_quick_demo_runs_every_stage(ray_session, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("OUTFITTER_CACHE_DIR", str(tmp_path / "cache"))
    work = tmp_path / "work"
    result = CliRunner().invoke(
        app, ["demo", "--quick", "--workdir", str(work), "--port", str(free_port())]
    )
    assert result.exit_code == 0, result.output[-3000:]
    summary = json.loads((work / "demo_summary.json").read_text())
    assert (work / "demo_results.png").stat().st_size > 10_000
    assert summary["model_version"] == "1"
    for key in ("compatibility_auc", "fitb_accuracy", "recall_at_10"):
        assert 0.0 <= summary["test"][key] <= 1.0
    stages = summary["stages_s"]
    assert len(stages) == 9 and all(seconds > 0 for seconds in stages.values())
    for text in (
        "POST /v1/compatibility",
        "the FITB question's candidates",
        "<- true",
        "POST /v1/retrieve",
        "POST /v1/complete",
        "GET /v1/items",
        "GET /v1/model",
        "GET /healthz",
        "MLflow UI",
    ):
        assert text in result.output, f"{text!r} missing from the demo output"
