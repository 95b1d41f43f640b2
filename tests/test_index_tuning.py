"""Shards that pick their own search parameters: calibrated for a target recall at build time,
recorded in the manifest, applied at load; small shards exact; an unreachable target falls back
to exact search or fails loudly; format 2 folders (before calibration) still load."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from outfitter.data.types import CATEGORIES
from outfitter.platform.index import CatalogIndex, IndexConfig, IndexIntegrityError
from outfitter.platform.index_tuning import IndexCalibrationError


def _mixture(n: int, dim: int = 32, clusters: int = 60, seed: int = 0, spread: float = 0.6):
    """`n` unit vectors around fixed cluster centres (the centres depend only on `clusters`),
    so draws with different seeds come from the same distribution."""
    centres = np.random.default_rng(1000 + clusters).normal(size=(clusters, dim))
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _recall(index: CatalogIndex, vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> float:
    """Mean recall@k of `index` against brute force over `vectors` (one category)."""
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :k]
    found = index.search(queries, k)
    hits = [
        len({index.row[h.item_id] for h in f} & set(t)) for f, t in zip(found, truth, strict=True)
    ]
    return float(np.mean(hits)) / k


def _ids(n: int) -> list[str]:
    return [f"item{i:05d}" for i in range(n)]


@pytest.fixture(scope="module")
def clustered():
    """16,000 clustered vectors in one category, and fresh queries from the same mixture."""
    return _mixture(16_000), _mixture(300, seed=1)


@pytest.fixture(scope="module")
def calibrated(clustered):
    vectors, _ = clustered
    cfg = IndexConfig(exact_below=10_000, use_gpu=False)
    return CatalogIndex.build(vectors, _ids(len(vectors)), np.zeros(len(vectors), int), cfg)


def test_calibration_reaches_the_target_recall_on_unseen_queries(clustered, calibrated):
    vectors, queries = clustered
    shard, tuning = calibrated.shards[0], calibrated.tuning[0]
    assert isinstance(shard, faiss.IndexIVFFlat) and tuning["kind"] == "ivf"
    c = tuning["calibration"]
    nprobe = tuning["params"]["nprobe"]
    assert shard.nprobe == nprobe and c["reached"] and c["recall_lower_bound"] >= 0.95
    assert c["curve"][str(nprobe)] == c["recall"] >= 0.95
    # the smallest nprobe that does: every smaller one tried fell short of the target
    assert all(r < 0.96 for v, r in c["curve"].items() if int(v) < nprobe)
    assert nprobe < shard.nlist // 4 and c["speedup"] >= IndexConfig().min_speedup
    assert _recall(calibrated, vectors, queries) >= 0.95  # queries it never saw
    # a lower target settles for fewer lists, and keeps to it
    low = IndexConfig(exact_below=10_000, target_recall=0.8, use_gpu=False)
    loose = CatalogIndex.build(vectors, _ids(len(vectors)), np.zeros(len(vectors), int), low)
    assert loose.tuning[0]["params"]["nprobe"] < nprobe
    assert 0.78 <= _recall(loose, vectors, queries) < _recall(calibrated, vectors, queries)


def test_given_calibration_queries_are_used(clustered):
    vectors, queries = clustered
    cfg = IndexConfig(exact_below=10_000, use_gpu=False, calibration_queries=200)
    ids, cats = _ids(len(vectors)), np.zeros(len(vectors), int)
    index = CatalogIndex.build(vectors, ids, cats, cfg, calibration_queries=queries)
    c = index.tuning[0]["calibration"]
    assert (c["queries_from"], c["queries"]) == ("given", 200)
    assert _recall(index, vectors, queries[200:]) >= 0.95
    per_category = CatalogIndex.build(vectors, ids, cats, cfg, calibration_queries={1: queries})
    assert per_category.tuning[0]["calibration"]["queries_from"] == "items"  # none for category 0


def test_params_are_in_the_manifest_and_applied_at_load(clustered, calibrated, tmp_path):
    folder = calibrated.save(tmp_path / "idx")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format"] == 3
    shard = manifest["shards"][CATEGORIES[0]]
    assert shard["kind"] == "ivf" and shard["faiss_class"] == "IndexIVFFlat"
    assert shard["params"] == {
        "nlist": calibrated.shards[0].nlist,
        "nprobe": shard["params"]["nprobe"],
    }
    assert shard["params"]["nprobe"] == calibrated.shards[0].nprobe
    assert shard["calibration"]["target_recall"] == 0.95 and "recall@10" in shard["reason"]
    _, queries = clustered
    loaded = CatalogIndex.load(folder)
    assert loaded.shard_params() == calibrated.shard_params()
    assert loaded.shards[0].nprobe == calibrated.shards[0].nprobe
    same = zip(loaded.search(queries, 10), calibrated.search(queries, 10), strict=True)
    assert all([h.item_id for h in a] == [h.item_id for h in b] for a, b in same)
    # the manifest's value is the one applied, whatever the shard file holds
    shard["params"]["nprobe"] = 3
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert CatalogIndex.load(folder).shards[0].nprobe == 3
    shard["kind"] = "hnsw"  # a manifest that disagrees with the file is refused
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexIntegrityError, match="says shard .* is hnsw"):
        CatalogIndex.load(folder)
    del manifest["shards"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexIntegrityError, match="rebuild"):
        CatalogIndex.load(folder)


def test_hnsw_ef_search_is_calibrated_and_applied_at_load(tmp_path):
    vectors, queries = _mixture(4000, seed=2), _mixture(200, seed=3)
    cfg = IndexConfig(kind="hnsw", hnsw_m=16, ef_construction=64, use_gpu=False)
    index = CatalogIndex.build(vectors, _ids(4000), np.zeros(4000, int), cfg)
    ef = index.tuning[0]["params"]["efSearch"]
    assert index.tuning[0]["calibration"]["reached"] and ef != cfg.ef_search
    assert _recall(index, vectors, queries) >= 0.95
    loaded = CatalogIndex.load(index.save(tmp_path / "idx"))
    assert loaded.shards[0].hnsw.efSearch == ef and loaded.shard_params() == index.shard_params()


def test_small_shards_stay_exact(clustered):
    vectors, _ = clustered
    cats = np.array([0] * 12_000 + [1] * 4_000)
    cfg = IndexConfig(exact_below=10_000, use_gpu=False)
    index = CatalogIndex.build(vectors, _ids(len(vectors)), cats, cfg)
    assert index.shard_kinds() == {CATEGORIES[0]: "IndexIVFFlat", CATEGORIES[1]: "IndexFlatIP"}
    small = index.tuning[1]
    assert small["calibration"] is None and small["reason"] == "4000 items < exact_below 10000"
    assert IndexConfig().kind_for(IndexConfig().exact_below - 1) == "flat"


def test_an_approximate_shard_not_worth_it_stays_exact(clustered):
    vectors, _ = clustered
    cfg = IndexConfig(exact_below=10_000, min_speedup=1000, use_gpu=False)
    index = CatalogIndex.build(vectors, _ids(len(vectors)), np.zeros(len(vectors), int), cfg)
    assert index.shard_kinds() == {CATEGORIES[0]: "IndexFlatIP"}
    assert index.tuning[0]["calibration"]["reached"]
    assert "below min_speedup 1000" in index.tuning[0]["reason"]


def test_an_unreachable_target_falls_back_to_exact_or_fails_loudly(caplog):
    # unclustered vectors in 64 dims: no nprobe up to nlist/2 finds all ten neighbours
    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(6000, 64))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    ids, cats = _ids(6000), np.zeros(6000, int)
    cfg = IndexConfig(kind="ivf", target_recall=0.999, use_gpu=False)
    index = CatalogIndex.build(vectors, ids, cats, cfg)
    assert index.shard_kinds() == {CATEGORIES[0]: "IndexFlatIP"}
    c = index.tuning[0]["calibration"]
    assert not c["reached"] and c["recall"] < 0.999
    assert "below the target 0.999" in index.tuning[0]["reason"] and "exact" in caplog.text
    query = vectors[:3]
    assert _recall(index, vectors, query) == 1.0
    strict = IndexConfig(kind="ivf", target_recall=0.999, on_unreachable="error", use_gpu=False)
    with pytest.raises(IndexCalibrationError, match=r"ivf shard of 6000 items .* target 0\.999"):
        CatalogIndex.build(vectors, ids, cats, strict)


def test_calibration_off_keeps_the_configured_parameters():
    vectors = _mixture(3000, seed=5)
    cfg = IndexConfig(kind="ivf", nprobe=5, target_recall=None, use_gpu=False)
    index = CatalogIndex.build(vectors, _ids(3000), np.zeros(3000, int), cfg)
    assert index.shards[0].nprobe == 5 and index.tuning[0]["calibration"] is None
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="target_recall"):
            IndexConfig(target_recall=bad)
    with pytest.raises(ValueError, match="on_unreachable"):
        IndexConfig(on_unreachable="ignore")


def test_a_format_2_folder_still_loads_with_its_files_parameters(tmp_path):
    """An index saved before calibration (manifest format 2: no shard parameters) loads as it
    searched then: IVF nprobe from the shard file, HNSW efSearch from the saved config."""
    import hashlib

    vectors = _mixture(3000, seed=6)
    cats = np.arange(3000) % 2
    cfg = IndexConfig(kind="ivf", nprobe=7, target_recall=None, use_gpu=False)
    folder = CatalogIndex.build(vectors, _ids(3000), cats, cfg).save(tmp_path / "old")
    manifest = json.loads((folder / "manifest.json").read_text())
    meta = json.loads((folder / "meta.json").read_text())
    del manifest["shards"]
    meta["format"] = manifest["format"] = 2
    for key in ("target_recall", "calibration_k", "calibration_queries", "min_speedup"):
        del meta["config"][key]  # a format 2 config predates these fields
    data = json.dumps(meta).encode()
    (folder / "meta.json").write_bytes(data)
    manifest["files"]["meta.json"] = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    loaded = CatalogIndex.load(folder)
    assert loaded.shard_params() == {c: {"nlist": 38, "nprobe": 7} for c in CATEGORIES[:2]}
    assert "format 2" in loaded.tuning[0]["reason"]
    manifest["format"] = 1
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexIntegrityError, match="rebuild it"):
        CatalogIndex.load(folder)
