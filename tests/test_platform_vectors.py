"""Catalog vectors of a model version are encoded once (`platform.vectors`): a second evaluation
or index build of the same checkpoint on the same catalog encodes nothing, and another checkpoint,
catalog or encoding is encoded anew."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def encodings(monkeypatch) -> list:
    """Every catalog encoding of this process (calls of `model.evaluate.encode_catalog`)."""
    import outfitter.model.evaluate as evaluate

    calls, real = [], evaluate.encode_catalog

    def counted(model, builder, ids, *args, **kwargs):
        calls.append(len(ids))
        return real(model, builder, ids, *args, **kwargs)

    monkeypatch.setattr(evaluate, "encode_catalog", counted)
    return calls


@pytest.fixture
def versions(synth_dir, tmp_path_factory):
    """Two hybrid-tiny checkpoints (other heads, the same frozen towers)."""
    from serve_helpers import tiny_versions

    return tiny_versions(tmp_path_factory.getbasetemp() / "tiny-models", synth_dir)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """A 40-outfit catalog (~200 items): encodings here take a fraction of a second."""
    from outfitter.data.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("small"), n_outfits=40, seed=1, image_size=32)


def _seed_feature_cache(checkpoint: Path, data_dir: Path, cache: Path) -> None:
    """The catalog's tower features where `platform.embed` caches them (no Ray Data run here)."""
    from outfitter.data import load_catalog
    from outfitter.model.checkpoint import load_checkpoint
    from outfitter.model.inputs import InputBuilder
    from outfitter.platform.embed import catalog_stamp, tower_stamp

    model, cfg, _ = load_checkpoint(checkpoint)
    catalog = load_catalog(data_dir)
    key = f"{catalog_stamp(catalog)}-{tower_stamp(cfg.clip)}"
    if not (cache / "features" / key / "meta.json").is_file():
        InputBuilder.for_model(model, catalog).features.save(cache / "features" / key)


def test_second_evaluate_and_index_build_reuse_the_vectors(
    versions, small, tmp_path, monkeypatch, encodings
):
    from outfitter.data import load_catalog
    from outfitter.model.checkpoint import load_checkpoint
    from outfitter.model.inputs import InputBuilder
    from outfitter.platform.evaluation import evaluate_checkpoint
    from outfitter.platform.index import build_index, build_index_for_model
    from outfitter.platform.registry import ResolvedModel

    v1 = versions[0]
    cache = tmp_path / "cache"
    monkeypatch.setenv("OUTFITTER_CACHE_DIR", str(cache))
    _seed_feature_cache(v1, small, cache)

    first = evaluate_checkpoint(v1, small, "valid", device="cpu")
    assert len(encodings) == 1
    assert len(list((cache / "vectors").iterdir())) == 1
    again = evaluate_checkpoint(v1, small, "valid", device="cpu")
    assert len(encodings) == 1, "a second evaluation of the same version encoded the catalog"
    assert again == first

    # the same checkpoint files elsewhere (as a registry download puts them): found by content
    copy = tmp_path / "downloaded" / "checkpoint"
    shutil.copytree(v1, copy, ignore=shutil.ignore_patterns("index"))
    index = build_index_for_model(ResolvedModel(copy), small, device="cpu")
    assert len(encodings) == 1, "the index build encoded the catalog again"

    model, _, _ = load_checkpoint(v1)
    reference = build_index(model, InputBuilder.for_model(model, load_catalog(small)))
    assert index.ids == reference.ids
    np.testing.assert_allclose(index.vectors, reference.vectors, atol=1e-5)


def test_another_checkpoint_catalog_or_encoding_is_encoded_again(
    versions, small, tmp_path, monkeypatch, encodings
):
    from outfitter.platform import vectors
    from outfitter.platform.vectors import open_checkpoint

    monkeypatch.setenv("OUTFITTER_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "catalog"
    shutil.copytree(small, data)

    def open_(checkpoint):  # features from the checkpoint's towers in this process, no Ray Data
        return open_checkpoint(checkpoint, data, device="cpu", embed_on_ray=False)

    v1, v2 = versions
    base = open_(v1).item_vectors()
    assert len(encodings) == 1
    np.testing.assert_array_equal(open_(v1).item_vectors(), base)
    assert len(encodings) == 1

    other = open_(v2).item_vectors()  # other weights
    assert len(encodings) == 2 and not np.allclose(other, base)

    with monkeypatch.context() as mp:
        mp.setattr(vectors, "ENCODING", vectors.ENCODING + 1)  # other input code
        open_(v1).item_vectors()
    assert len(encodings) == 3

    # another catalog content: one item's title changes, so does its vector (and only its)
    meta_file = data / "polyvore_item_metadata.json"
    meta = json.loads(meta_file.read_text())
    ids = sorted(meta)
    meta[ids[0]]["title"] = "bright red patent leather stiletto heels"
    meta_file.write_text(json.dumps(meta))
    changed = open_(v1).item_vectors()
    assert len(encodings) == 4
    assert not np.allclose(changed[0], base[0])
    np.testing.assert_allclose(changed[1:], base[1:], atol=1e-5)


def test_unusable_cache_entry_is_encoded_again(versions, small, tmp_path, monkeypatch, encodings):
    from outfitter.platform.vectors import open_checkpoint

    monkeypatch.setenv("OUTFITTER_CACHE_DIR", str(tmp_path / "cache"))
    opened = open_checkpoint(versions[0], small, device="cpu", embed_on_ray=False)
    base = opened.item_vectors()
    (opened.vector_folder / "vectors.npy").write_bytes(b"truncated")
    again = open_checkpoint(versions[0], small, device="cpu", embed_on_ray=False)
    np.testing.assert_allclose(again.item_vectors(), base, atol=1e-6)
    assert len(encodings) == 2
    assert np.load(again.vector_folder / "vectors.npy").shape == base.shape  # rewritten whole


def test_embedding_actor_pool_is_sized_from_the_free_resources(monkeypatch):
    """One Ray Data actor per free CPU (per free GPU on a GPU cluster), at most one per block."""
    import ray

    from outfitter.platform.embed import actor_pool_size

    free = {"CPU": 8.0, "GPU": 2.0}
    monkeypatch.setattr(ray, "available_resources", lambda: free)
    assert actor_pool_size(False, n_blocks=64) == 8
    assert actor_pool_size(True, n_blocks=64) == 2
    assert actor_pool_size(False, n_blocks=3) == 3  # a small catalog: no idle actors
    free.update(CPU=0.5)  # everything held (a Serve app): one actor, which waits for a CPU
    assert actor_pool_size(False, n_blocks=64) == 1
