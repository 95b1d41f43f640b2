"""The faiss catalog index: exact results, category filter, exclusions, approximate recall, disk."""

from __future__ import annotations

import numpy as np
import pytest

from outfitter.data.types import CATEGORIES
from outfitter.platform.index import CatalogIndex, IndexConfig


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _catalog(n: int, dim: int = 32, seed: int = 0, clusters: int = 0):
    """n unit vectors (random, or around `clusters` centres), ids and category indexes."""
    rng = np.random.default_rng(seed)
    if clusters:
        centres = rng.normal(size=(clusters, dim))
        vectors = centres[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, dim))
    else:
        vectors = rng.normal(size=(n, dim))
    ids = [f"item{i:05d}" for i in range(n)]
    categories = rng.integers(0, len(CATEGORIES), n)
    return _unit(vectors), ids, categories


def _brute_force(vectors, ids, categories, query, k, category=None, exclude=()):
    scores = vectors @ query
    order = [i for i in np.argsort(-scores) if ids[i] not in exclude]
    if category is not None:
        order = [i for i in order if categories[i] == category]
    return [ids[i] for i in order[:k]]


def test_exact_index_matches_brute_force():
    vectors, ids, cats = _catalog(500)
    index = CatalogIndex.build(vectors, ids, cats, IndexConfig(kind="flat"))
    queries = _unit(np.random.default_rng(1).normal(size=(5, 32)))
    results = index.search(queries, k=10)
    for query, hits in zip(queries, results, strict=True):
        assert [h.item_id for h in hits] == _brute_force(vectors, ids, cats, query, 10)
        expected = [float(vectors[index.row[h.item_id]] @ query) for h in hits]
        assert [h.score for h in hits] == pytest.approx(expected, abs=1e-5)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_category_filter_and_exclude_are_exact():
    vectors, ids, cats = _catalog(600, seed=2)
    index = CatalogIndex.build(vectors, ids, cats, IndexConfig(kind="flat"))
    query = _unit(np.random.default_rng(3).normal(size=(1, 32)))[0]
    top = _brute_force(vectors, ids, cats, query, 5, category=3)
    exclude = set(top[:3]) | {ids[0]}
    hits = index.search(query, k=5, category=3, exclude=exclude)[0]
    assert all(h.category == 3 for h in hits)
    assert not exclude & {h.item_id for h in hits}
    assert [h.item_id for h in hits] == _brute_force(
        vectors, ids, cats, query, 5, category=3, exclude=exclude
    )


def test_per_query_categories_and_excludes():
    vectors, ids, cats = _catalog(400, seed=4)
    index = CatalogIndex.build(vectors, ids, cats, IndexConfig(kind="flat"))
    queries = _unit(np.random.default_rng(5).normal(size=(3, 32)))
    excludes = [set(), {ids[int(np.argmax(vectors @ queries[1]))]}, set()]
    results = index.search(queries, k=4, category=[1, None, 7], exclude=excludes)
    assert {h.category for h in results[0]} == {1}
    assert {h.category for h in results[2]} == {7}
    assert [h.item_id for h in results[1]] == _brute_force(
        vectors, ids, cats, queries[1], 4, exclude=excludes[1]
    )


def test_small_category_returns_what_it_has():
    vectors, ids, _ = _catalog(20, seed=6)
    cats = np.array([0] * 18 + [4, 4])
    index = CatalogIndex.build(vectors, ids, cats, IndexConfig(kind="flat"))
    assert len(index.search(vectors[0], k=10, category=4)[0]) == 2
    assert index.search(vectors[0], k=10, category=9)[0] == []  # a category with no items


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_recall_on_clustered_data(kind):
    vectors, ids, cats = _catalog(6000, dim=32, seed=7, clusters=40)
    cfg = IndexConfig(kind=kind, nprobe=8, ef_search=64)
    index = CatalogIndex.build(vectors, ids, cats, cfg)
    assert set(index.shard_kinds().values()) == {
        "IndexIVFFlat" if kind == "ivf" else "IndexHNSWFlat"
    }
    rng = np.random.default_rng(8)
    queries = _unit(vectors[rng.integers(0, len(ids), 50)] + 0.1 * rng.normal(size=(50, 32)))
    qcats = rng.integers(0, len(CATEGORIES), 50)
    for category in (None, qcats):
        results = index.search(queries, k=10, category=category)
        recall = []
        for q, hits in enumerate(results):
            c = None if category is None else int(qcats[q])
            truth = set(_brute_force(vectors, ids, cats, queries[q], 10, category=c))
            assert c is None or all(h.category == c for h in hits)
            recall.append(len(truth & {h.item_id for h in hits}) / 10)
        assert np.mean(recall) >= 0.9, (kind, category is None, np.mean(recall))


def test_auto_kind_uses_exact_below_threshold():
    vectors, ids, _ = _catalog(300, seed=9)
    cats = np.array([0] * 250 + [1] * 50)
    cfg = IndexConfig(exact_below=100, approximate="hnsw", target_recall=None)  # not calibrated
    index = CatalogIndex.build(vectors, ids, cats, cfg)
    assert index.shard_kinds() == {CATEGORIES[0]: "IndexHNSWFlat", CATEGORIES[1]: "IndexFlatIP"}


def test_save_load_round_trip(tmp_path):
    vectors, ids, cats = _catalog(800, seed=10)
    cfg = IndexConfig(exact_below=100, approximate="ivf", nprobe=4)
    index = CatalogIndex.build(vectors, ids, cats, cfg, meta={"model_version": "3"})
    index.save(tmp_path / "idx")
    assert {p.name for p in (tmp_path / "idx").iterdir()} >= {
        "ids.json",
        "categories.npy",
        "vectors.npy",
        "meta.json",
        f"index-{CATEGORIES[0]}.faiss",
    }
    loaded = CatalogIndex.load(tmp_path / "idx")
    assert loaded.ids == ids and loaded.config == cfg
    assert loaded.meta["model_version"] == "3"
    np.testing.assert_array_equal(loaded.vectors, vectors)
    queries = vectors[:5]
    for a, b in zip(index.search(queries, 7, 2), loaded.search(queries, 7, 2), strict=True):
        assert [h.item_id for h in a] == [h.item_id for h in b]


def test_bad_inputs_are_refused(tmp_path):
    vectors, ids, cats = _catalog(50)
    with pytest.raises(ValueError, match="L2-normalised"):
        CatalogIndex.build(vectors * 2, ids, cats)
    with pytest.raises(ValueError, match="one row per item"):
        CatalogIndex.build(vectors, ids[:-1], cats)
    with pytest.raises(ValueError, match="unique"):
        CatalogIndex.build(vectors, ids[:-1] + ids[:1], cats)
    with pytest.raises(ValueError, match="index kind"):
        IndexConfig(kind="lsh")
    index = CatalogIndex.build(vectors, ids, cats)
    with pytest.raises(ValueError, match="dims"):
        index.search(np.ones((1, 5), np.float32), 3)
    with pytest.raises(KeyError, match="nope"):
        index.vectors_of(["nope"])
    with pytest.raises(FileNotFoundError, match="not an index folder"):
        CatalogIndex.load(tmp_path)


def test_index_build_cli_on_a_checkpoint_folder(tmp_path, synth_dir, tmp_path_factory, monkeypatch):
    """`outfitter index build` on a checkpoint folder writes CHECKPOINT/index, as serving reads."""
    import shutil

    from serve_helpers import tiny_versions
    from typer.testing import CliRunner

    from outfitter.cli import app
    from outfitter.data import load_catalog
    from outfitter.model.checkpoint import load_checkpoint
    from outfitter.model.inputs import InputBuilder
    from outfitter.platform.embed import catalog_stamp, tower_stamp

    source = tiny_versions(tmp_path_factory.getbasetemp() / "tiny-models", synth_dir)[0]
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(source, checkpoint, ignore=shutil.ignore_patterns("index"))
    # the catalog's features, cached where `platform.embed` keeps them (no Ray Data run here)
    model, cfg, _ = load_checkpoint(checkpoint)
    catalog = load_catalog(synth_dir)
    monkeypatch.setenv("OUTFITTER_CACHE_DIR", str(tmp_path / "cache"))
    key = f"{catalog_stamp(catalog)}-{tower_stamp(cfg.clip)}"
    InputBuilder.for_model(model, catalog).features.save(tmp_path / "cache" / "features" / key)

    result = CliRunner().invoke(
        app, ["index", "build", "--model", str(checkpoint), "--data", str(synth_dir)]
    )
    assert result.exit_code == 0, result.output
    assert f"indexed {len(catalog.items)} items" in result.output
    built, reference = CatalogIndex.load(checkpoint / "index"), CatalogIndex.load(source / "index")
    assert built.ids == reference.ids and built.meta["model_config"] == "hybrid-tiny"
    np.testing.assert_allclose(built.vectors, reference.vectors, atol=1e-5)

    bad = CliRunner().invoke(
        app, ["index", "build", "--model", str(tmp_path), "--data", str(synth_dir)]
    )
    assert bad.exit_code == 2 and "not a checkpoint" in bad.output
