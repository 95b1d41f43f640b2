"""CLIP tower pre-training (`clip-pretrain`) and fine-tuned-tower (raw input) checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from outfitter.data import load_catalog
from outfitter.model import load_config
from outfitter.model.checkpoint import load_checkpoint, save_checkpoint
from outfitter.model.clip_pretrain import pretrain
from outfitter.model.config import untrained_frozen_towers
from outfitter.model.factory import build_model
from outfitter.model.towers import create_towers
from outfitter.model.words import word_ids


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_pretrain_writes_open_clip_loadable_weights(synth_dir, tmp_path):
    catalog = load_catalog(synth_dir)
    ids = catalog.item_ids
    out = tmp_path / "towers.safetensors"
    clip = load_config("hybrid-tiny").clip
    result = pretrain(
        catalog, clip, out, 2, train_ids=ids[:256], heldout_ids=ids[-64:], batch_size=64
    )
    assert out.is_file() and result["n_heldout"] == 64 and result["chance_r1"] == 1 / 64
    assert 0.0 <= result["image_to_text_r1"] <= 1.0 and result["final_loss"] > 0
    towers = create_towers(clip.__class__(**{**clip.__dict__, "pretrained": str(out)}))
    random = create_towers(clip)
    text = ["a photo of shoes", catalog.items[ids[0]].title]
    assert not torch.allclose(
        torch.from_numpy(towers.encode_texts(text)), torch.from_numpy(random.encode_texts(text))
    )


def test_pretrain_streams_images_past_the_memory_budget_with_the_same_result(
    synth_dir, tmp_path, monkeypatch
):
    """A catalog too big to hold decoded trains the same weights from per-batch decoding; a
    step budget stops early; recall is measured on a capped sample of held-out items."""
    from safetensors.torch import load_file

    from outfitter.model import clip_pretrain

    catalog = load_catalog(synth_dir)
    ids = catalog.item_ids
    clip = load_config("hybrid-tiny").clip
    kwargs = dict(train_ids=ids[:96], heldout_ids=ids[-40:], batch_size=32, max_steps=2)
    held = pretrain(catalog, clip, tmp_path / "held.safetensors", 5, **kwargs)
    monkeypatch.setattr(clip_pretrain, "PRELOAD_BYTES", 0)
    monkeypatch.setattr(clip_pretrain, "MAX_HELDOUT", 16)
    streamed = pretrain(catalog, clip, tmp_path / "streamed.safetensors", 5, **kwargs)
    assert held["steps"] == streamed["steps"] == 2  # the budget, not 5 epochs x 3 steps
    assert held["n_heldout"] == 40 and streamed["n_heldout"] == 16
    a, b = load_file(tmp_path / "held.safetensors"), load_file(tmp_path / "streamed.safetensors")
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-3) for k in a)
    with pytest.raises(ValueError, match="max_steps"):
        pretrain(catalog, clip, tmp_path / "x.safetensors", 1, max_steps=-1)


def test_cli_clip_pretrain_prints_recall(synth_dir, tmp_path):
    from outfitter.cli import app

    out = tmp_path / "t.safetensors"
    args = ["clip-pretrain", "--data", str(synth_dir), "--out", str(out), "--epochs", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "recall@1 image->text" in result.output and "chance" in result.output
    assert out.is_file()
    bad = CliRunner().invoke(app, [*args[:4], str(tmp_path / "t.bin")])
    assert bad.exit_code != 0 and "safetensors" in bad.output


@pytest.mark.parametrize(
    ("name", "overrides", "untrained"),
    [
        ("hybrid-tiny", {}, ["image", "text"]),
        ("hybrid-tiny", {"clip.pretrained": "towers.safetensors"}, []),
        ("hybrid-tiny", {"clip.freeze_image": False}, ["text"]),  # the image tower trains
        ("image-only", {}, ["image"]),  # reads no text, not even a target's
        ("hybrid-vit-b32", {}, []),  # an open_clip tag
        ("hybrid-fashionclip", {}, []),  # hf-hub: open_clip fetches the weights itself
        ("sun2020-tiny", {}, []),  # no CLIP towers
    ],
)
def test_untrained_frozen_towers(name, overrides, untrained):
    assert untrained_frozen_towers(load_config(name, overrides or None)) == untrained


SMOKE_SEARCH = Path(__file__).resolve().parents[1] / "tune_configs" / "smoke.yaml"


@pytest.mark.parametrize(
    "command", [["train"], ["tune", "--config", str(SMOKE_SEARCH)]], ids=["train", "tune"]
)
def test_cli_refuses_random_frozen_towers(synth_dir, tmp_path, command):
    """The README's first try on a new catalog, `outfitter train` or `outfitter tune` (hybrid-tiny):
    stopped before Ray or MLflow, with the same way out."""
    from outfitter.cli import app

    work = tmp_path / "work"
    args = [*command, "--data", str(synth_dir), "--workdir", str(work)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    out = " ".join(result.output.split())  # rich may wrap the line
    assert out.startswith("error: model config 'hybrid-tiny' reads frozen CLIP image and text")
    assert f"outfitter clip-pretrain --data {synth_dir} --out towers.safetensors" in out
    assert "--set clip.pretrained=towers.safetensors" in out
    assert "--set clip.pretrained=FILE" in out and "--allow-random-towers" in out
    assert "Traceback" not in result.output and not work.exists()


def test_finetuned_towers_round_trip(tmp_path):
    cfg = load_config("hybrid-tiny", {"clip.freeze_text": False})
    model = build_model(cfg).eval()
    assert model.input_kind == "raw" and model.clip is not None
    assert all(p.requires_grad for p in model.clip.transformer.parameters())
    assert not any(p.requires_grad for p in model.clip.visual.parameters())
    with torch.no_grad():  # make the weights differ from any fresh init
        model.clip.text_projection.mul_(1.5)
    inputs = {
        "pixels": torch.randn(2, 3, 64, 64),
        "tokens": model.towers.tokenize(["red silk dress", "navy boots"]),
        "words": word_ids(["red silk dress", "navy boots"], cfg.words.buckets),
    }
    save_checkpoint(tmp_path, model, cfg, {"note": "raw"})
    loaded, loaded_cfg, meta = load_checkpoint(tmp_path)
    assert loaded_cfg == cfg and meta == {"note": "raw"}
    with torch.no_grad():
        assert torch.allclose(loaded.encode_items(inputs), model.encode_items(inputs), atol=1e-5)


def test_frozen_image_tower_keeps_cached_features_when_text_is_finetuned(synth_dir):
    from outfitter.model.inputs import InputBuilder
    from outfitter.model.towers import compute_features

    catalog = load_catalog(synth_dir)
    cfg = load_config("hybrid-tiny", {"clip.freeze_text": False})
    model = build_model(cfg)
    ids = catalog.item_ids[:6]
    features = compute_features(model.towers, catalog, ids)
    builder = InputBuilder.for_model(model, catalog, features)
    inputs = builder.item_inputs(ids)
    # no pixels: the image tower is frozen; the title's words feed the word bag
    assert set(inputs) == {"image_feat", "tokens", "words"}
    vecs = model.encode_items(inputs)
    vecs.sum().backward()
    assert model.clip.token_embedding.weight.grad is not None
    assert model.clip.visual.conv1.weight.grad is None


def test_word_dropout_keeps_a_word_and_follows_the_rate():
    import numpy as np

    from outfitter.model.clip_pretrain import word_dropout

    rng = np.random.default_rng(0)
    texts = ["tailored silk navy blazer. Made for the office."] * 400
    assert word_dropout(texts[:3], 0.0, rng) == texts[:3]
    dropped = word_dropout(texts, 0.3, rng)
    kept = sum(len(t.split()) for t in dropped) / sum(len(t.split()) for t in texts)
    assert 0.62 < kept < 0.78  # ~70 % of the words kept
    assert all(t for t in word_dropout(["one", "two words"] * 50, 0.99, rng))
    assert word_dropout([""], 0.5, rng) == [""]


def test_text_view_loss_is_low_for_matching_views():
    from outfitter.model.clip_pretrain import text_view_loss

    a = torch.nn.functional.normalize(torch.randn(32, 16), dim=-1)
    noisy = torch.nn.functional.normalize(a + 0.05 * torch.randn(32, 16), dim=-1)
    matched, shuffled = (
        text_view_loss(a, noisy, 0.05),
        text_view_loss(a, noisy[torch.randperm(32)], 0.05),
    )
    assert matched < 0.1 < shuffled


def test_pretrain_refuses_bad_text_view_settings(synth_dir, tmp_path):
    catalog = load_catalog(synth_dir)
    clip = load_config("hybrid-tiny").clip
    with pytest.raises(ValueError, match="word_drop=1.0"):
        pretrain(catalog, clip, tmp_path / "t.safetensors", 1, word_drop=1.0)
