"""A new workdir's sqlite MLflow store starts from a copy of one empty, migrated store."""

from __future__ import annotations

import os

import mlflow
import pytest

from outfitter.platform import registry


@pytest.fixture
def fresh_tracking(tmp_path, monkeypatch):
    """No tracking URI set, a private cache; MLflow's global URIs put back afterwards."""
    monkeypatch.setenv("OUTFITTER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset")  # so the teardown restores the original
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    yield tmp_path
    mlflow.set_tracking_uri(before[0])
    mlflow.set_registry_uri(before[1])


def _open(workdir) -> tuple[str, list]:
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    registry.configure_tracking(workdir)
    experiment = registry.ensure_experiment("outfitter")
    return experiment, mlflow.search_experiments()


def test_second_workdir_gets_a_seeded_store_of_its_own(fresh_tracking):
    first, _ = _open(fresh_tracking / "w1")
    with mlflow.start_run(experiment_id=first):
        mlflow.log_metric("loss", 1.0)
    template = next((fresh_tracking / "cache" / "mlflow").glob("empty-store-*.db"))

    second, experiments = _open(fresh_tracking / "w2")
    assert (fresh_tracking / "w2" / "mlflow.db").stat().st_ino != template.stat().st_ino
    names = {e.name: e for e in experiments}
    assert set(names) == {"Default", "outfitter"}, names  # nothing of w1's store came along
    assert names["outfitter"].artifact_location.endswith("/w2/mlartifacts")
    assert mlflow.search_runs([second], output_format="list") == []
    with mlflow.start_run(experiment_id=second):  # a usable store: runs, metrics, registry
        mlflow.log_metric("loss", 2.0)
    mlflow.MlflowClient().create_registered_model("outfitter")
    assert [m.name for m in mlflow.search_registered_models()] == ["outfitter"]
    assert not [p for p in (fresh_tracking / "w2").iterdir() if p.name.startswith(".")]


def test_a_damaged_template_is_not_copied(fresh_tracking):
    """A template that is not a database is dropped (the next new store rebuilds it, as in the
    first test) and MLflow builds this store itself."""
    template = fresh_tracking / "cache" / "mlflow" / f"empty-store-{mlflow.__version__}.db"
    template.parent.mkdir(parents=True)
    template.write_bytes(b"not a database" * 100)
    _, experiments = _open(fresh_tracking / "w")
    assert {e.name for e in experiments} == {"Default", "outfitter"}
    assert not template.exists()
