"""The production architecture end to end on the CPU: `hybrid-vit-b32` (open_clip ViT-B-32 towers
at 224 px, 512-d, the 4-layer outfit transformer) with randomly initialised towers on a few dozen
synthetic outfits at 224 px, no hub.

The random towers are written to a local weights file first and passed the way real weights
are (`--set clip.pretrained=FILE`, as with a downloaded `open_clip_pytorch_model.bin`): the
features cache is keyed by the file's content, so the evaluation after training, `evaluate`,
`index build` and serving reuse the features the run embedded instead of embedding again.
(`clip.pretrained=null` builds the same seeded towers but keys them differently from the
checkpoint's `towers.safetensors`, costing one more Ray Data pass.)

Ray Data embeds the catalog with the ViT-B/32 towers, Ray Train runs one epoch (one worker),
`outfitter evaluate` and `outfitter index build` run on the registered version, and one request
goes through the serving core: the in-process plain app (`serve.plain.app_from_env`, the same
`load_state` + routes a Serve replica runs; a Ray Serve start would add ~20 s to this test).
"""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _invoke(*args: str) -> str:
    from outfitter.cli import app

    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output[-3000:]
    return result.output


class _Stages:
    """Seconds per stage of the test (printed: where the time of the slow tier goes)."""

    def __init__(self):
        self.t, self.stages = time.perf_counter(), {}

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.stages[name], self.t = round(now - self.t, 1), now

    def __repr__(self) -> str:
        return " | ".join(f"{k} {v} s" for k, v in self.stages.items())


def _random_vit_b32(path):
    """Randomly initialised ViT-B-32 towers (seeded) saved as a local weights file."""
    from safetensors.torch import save_file

    from outfitter.model import load_config
    from outfitter.model.towers import create_towers

    towers = create_towers(load_config("hybrid-vit-b32", {"clip.pretrained": None}).clip)
    assert towers.image_size == 224 and towers.embed_dim == 512
    state = {k: v.detach().contiguous() for k, v in towers.model.state_dict().items()}
    save_file(state, str(path))
    return path


def test_hybrid_vit_b32_embed_train_evaluate_index_serve(
    ray_session, tmp_path, monkeypatch, feature_cache
):
    from fastapi.testclient import TestClient

    from outfitter.data import load_catalog
    from outfitter.data.synth import synthesize

    clock = _Stages()
    data = synthesize(tmp_path / "data", n_outfits=24, seed=3, image_size=224, workers=1)
    weights = _random_vit_b32(tmp_path / "vit-b32-random.safetensors")
    clock("catalog + random towers")
    catalog = load_catalog(data)
    work = tmp_path / "work"
    cached = set((feature_cache / "features").glob("*"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    # Ray Data embedding (ViT-B/32 actors) + 1 epoch of Ray Train + final evaluation + register
    metrics_file = tmp_path / "train.json"
    _invoke(
        "train", "--model-config", "hybrid-vit-b32", "--data", str(data), "--epochs", "1",
        "--batch-size", "8", "--max-steps-per-epoch", "2", "--workdir", str(work),
        "--metrics-out", str(metrics_file), "--run-name", "vit-b32",
        "--set", f"clip.pretrained={weights}",
    )  # fmt: skip
    clock("embed + train + evaluate + register")
    trained = json.loads(metrics_file.read_text())
    assert trained["model_version"] == "1"
    uri = f"models:/{trained['model_name']}/1"

    from outfitter.platform import registry

    resolved = registry.resolve_model(uri)
    config = json.loads((resolved.checkpoint_dir / "config.json").read_text())
    assert (config["name"], config["clip"]["arch"]) == ("hybrid-vit-b32", "ViT-B-32")
    assert config["clip"]["embed_dim"] == 512 and config["transformer"]["layers"] == 4
    assert (resolved.checkpoint_dir / "towers.safetensors").is_file()  # serving needs no hub

    evaluated = tmp_path / "eval.json"
    _invoke("evaluate", "--model", uri, "--data", str(data), "--workdir", str(work),
            "--out", str(evaluated))  # fmt: skip
    clock("evaluate")
    result = json.loads(evaluated.read_text())
    assert 0.0 <= result["compatibility_auc"] <= 1.0 and 0.0 <= result["fitb_accuracy"] <= 1.0
    assert result["compatibility_auc"] == pytest.approx(trained["test"]["compatibility_auc"])

    built = _invoke("index", "build", "--model", uri, "--data", str(data), "--workdir", str(work))
    clock("index build")
    assert f"indexed {len(catalog.item_ids)} items (512-d" in built, built

    monkeypatch.setenv("OUTFITTER_MODEL", uri)
    monkeypatch.setenv("OUTFITTER_DATA", str(data))
    monkeypatch.setenv("OUTFITTER_DEVICE", "auto")
    from outfitter.platform.serve.plain import app_from_env

    client = TestClient(app_from_env())
    outfit = [{"item_id": i} for i in catalog.item_ids[:2]]
    body = {"items": outfit, "target": {"description": "white leather sneakers"}, "k": 5}
    r = client.post("/v1/retrieve", json=body)
    assert r.status_code == 200, r.text
    hits = r.json()["items"]
    assert len(hits) == 5 and not {h["item_id"] for h in hits} & set(catalog.item_ids[:2])
    clock("serve: load + request")
    print(clock)  # stage timings, shown with -s
    embedded = set((feature_cache / "features").glob("*")) - cached
    assert len(embedded) == 1, f"the catalog was embedded {len(embedded)} times: {embedded}"
    info = client.get("/v1/model").json()
    assert info["version"] == "1" and info["index"]["dim"] == 512
