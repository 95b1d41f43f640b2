"""The Sun et al. 2020 setting on the platform: both models train on an Amazon co-purchase folder
through Ray Train (`outfitter train`), register a version, `outfitter evaluate` reports the pair
metrics, the version is indexed and served; bad folders fail in one line before any MLflow run."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from outfitter.cli import app

PAIR_METRICS = ("compatibility_auc", "hit_at_1", "hit_at_5", "hit_at_10", "mrr")
FAST = ["--epochs", "2", "--batch-size", "16", "--max-steps-per-epoch", "4", "--patience", "0"]


@pytest.fixture(scope="module")
def amazon_dir(tmp_path_factory) -> Path:
    from outfitter.data.synth import synthesize

    root = tmp_path_factory.mktemp("amazon-tiny")
    synthesize(root, 40, 1, 32, "amazon")
    return root


@pytest.fixture(scope="module")
def no_tracking_env():
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    mp.undo()


def _invoke(args: list[str]):
    result = CliRunner().invoke(app, args)
    return result


def _check_split(metrics: dict) -> None:
    for key in PAIR_METRICS:
        assert 0.0 <= metrics[key] <= 1.0, (key, metrics)
    assert metrics["hit_at_1"] <= metrics["hit_at_5"] <= metrics["hit_at_10"]
    assert metrics["mrr"] >= metrics["hit_at_1"]
    assert metrics["n_pairs"] > 0 and metrics["n_negatives"] > 0 and metrics["n_candidates"] > 5
    assert "fitb_accuracy" not in metrics  # pair metrics only: the folder has no outfits


@pytest.fixture(scope="module")
def trained(ray_session, amazon_dir, tmp_path_factory, no_tracking_env):
    """sun2020-tiny (2 workers) then hybrid-tiny trained with `outfitter train` on Ray Train."""
    work = tmp_path_factory.mktemp("amazon-work")
    outcomes = {}
    for name, extra in [
        ("sun2020-tiny", ["--workers", "2"]),
        ("hybrid-tiny", ["--set", "transformer.layers=1", "--allow-random-towers"]),
    ]:
        out = work / f"{name}.json"
        result = _invoke(
            ["train", "--model-config", name, "--data", str(amazon_dir), "--format", "amazon",
             "--workdir", str(work), "--run-name", f"amazon-{name}", "--metrics-out", str(out),
             *FAST, *extra]
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        outcomes[name] = json.loads(out.read_text())
    return work, outcomes


@pytest.mark.slow
def test_both_models_train_register_and_evaluate(trained, amazon_dir):
    work, outcomes = trained
    assert [outcomes[n]["model_version"] for n in ("sun2020-tiny", "hybrid-tiny")] == ["1", "2"]
    for name, outcome in outcomes.items():
        for split in ("valid", "test"):
            _check_split(outcome[split])
        out = work / f"eval-{name}.json"
        result = _invoke(
            ["evaluate", "--model", f"models:/outfitter/{outcome['model_version']}",
             "--data", str(amazon_dir), "--split", "valid", "--workdir", str(work),
             "--out", str(out)]
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        evaluated = json.loads(out.read_text())
        assert evaluated["data_format"] == "amazon" and evaluated["split"] == "valid"
        for key in PAIR_METRICS:  # evaluate reproduces the run's validation numbers
            assert evaluated[key] == pytest.approx(outcome["valid"][key], abs=1e-6), key


@pytest.mark.slow
def test_serving_an_amazon_trained_version(trained, amazon_dir):
    from fastapi.testclient import TestClient

    from outfitter.data import load_catalog
    from outfitter.platform import registry
    from outfitter.platform.serve.app import create_app
    from outfitter.platform.serve.core import LocalBackend, load_state
    from outfitter.platform.serve.schemas import Limits
    from outfitter.platform.serve.service import CatalogService

    work, _ = trained
    result = _invoke(
        ["index", "build", "--model", "models:/outfitter/1", "--data", str(amazon_dir),
         "--workdir", str(work)]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    uri = registry.configure_tracking(work)
    catalog = load_catalog(amazon_dir)
    state = load_state("models:/outfitter/1", amazon_dir, tracking_uri=uri, device="cpu")
    client = TestClient(create_app(CatalogService(catalog, LocalBackend(state), Limits()),
                                   Limits(), static_dir=None))  # fmt: skip
    first = {}
    for item_id in catalog.item_ids:
        first.setdefault(catalog.items[item_id].category, item_id)
    pair = [{"item_id": first["tops"]}, {"item_id": first["bottoms"]}]
    r = client.post("/v1/compatibility", json={"items": pair})
    assert r.status_code == 200, r.text
    assert 0.0 <= r.json()["score"] <= 1.0 and r.json()["model_version"] == "1"
    outfit = [*pair, {"item_id": first["shoes"]}]
    assert client.post("/v1/compatibility", json={"items": outfit}).status_code == 200
    r = client.post(
        "/v1/retrieve",
        json={"items": pair, "target": {"description": "shoes", "category": "shoes"}, "k": 5},
    )
    assert r.status_code == 200, r.text
    hits = r.json()["items"]
    assert len(hits) == 5 and {h["category"] for h in hits} == {"shoes"}
    assert all(h["item_id"] in catalog.items for h in hits)


def _no_runs(work: Path) -> bool:
    import mlflow

    db = work / "mlflow.db"
    if not db.exists():
        return True
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiments = client.search_experiments()
    return not client.search_runs([e.experiment_id for e in experiments])


@pytest.mark.parametrize("case", ["neither", "truncated-gzip", "not-a-literal", "no-image"])
def test_bad_folders_fail_in_one_line_before_any_run(case, amazon_dir, tmp_path, no_tracking_env):
    data = tmp_path / "data"
    data.mkdir()
    meta = next(amazon_dir.glob("meta*.json"))
    expected = {
        "neither": "neither a Polyvore Outfits nor an Amazon",
        "truncated-gzip": "truncated or corrupt",
        "not-a-literal": ":3: neither JSON nor a Python literal",
        "no-image": "image",
    }[case]
    if case == "truncated-gzip":
        blob = gzip.compress(meta.read_bytes())
        (data / "meta_Clothing.json.gz").write_bytes(blob[: len(blob) // 2])
    elif case == "not-a-literal":
        lines = meta.read_text().splitlines()
        lines[2] = "{'asin': 'B1', 'title': oops}"
        (data / meta.name).write_text("\n".join(lines) + "\n")
    elif case == "no-image":
        shutil.copy(meta, data / meta.name)
        shutil.copytree(amazon_dir / "images", data / "images")
        next((data / "images").iterdir()).unlink()
    work = tmp_path / "work"
    result = _invoke(
        ["train", "--model-config", "sun2020-tiny", "--data", str(data), "--workdir", str(work)]
    )
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output
    assert _no_runs(work)


def test_clip_pretrain_reads_an_amazon_folder(amazon_dir, tmp_path):
    """The README's hybrid sequence on Amazon data starts with clip-pretrain: every product of a
    nondisjoint split trains, so recall is measured on a seeded 10% of them held out."""
    out = tmp_path / "towers.safetensors"
    result = _invoke(
        ["clip-pretrain", "--data", str(amazon_dir), "--out", str(out), "--epochs", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "held-out items:" in result.output and out.is_file()
