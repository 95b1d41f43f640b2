"""Search parameters of an approximate shard, calibrated at build time for a target recall.

An IVF shard's `nprobe` (lists visited per query) or an HNSW shard's `efSearch` (beam width) is
raised until recall@k against exact search reaches `IndexConfig.target_recall` on held-out
queries, with two standard errors to spare so that it holds beyond the sample: the index promises
a recall rather than a parameter value. The candidate values and the setter are faiss's own
(`faiss.ParameterSpace`: nprobe 1, 2, 4 ... nlist/2; efSearch 4 ... 512); the first value that
reaches the target is then narrowed by bisection against the last one that did not (recall does
not decrease as either parameter grows). faiss's `ParameterSpace.explore` is not used: it times
every value on the machine at hand, which on a shared machine makes builds non-deterministic,
and it explores past the point the target is reached. Cost is counted instead in distance
computations per query (faiss's `indexIVF_stats` / `hnsw_stats`), which depends only on the data.

The queries are the caller's, where it has vectors like the ones the index will be searched with
(the recall of an IVF shard depends on where queries fall: ones from regions where items are
sparse need more lists than items do); otherwise item vectors of the shard itself, each held out
from its own answer: exact and approximate search both return k + 1 neighbours and the query's
own row is dropped from both, so an item never counts as finding itself. The result (kind,
parameters, the recall reached and the curve tried) is a plain dict, recorded per shard in the
index manifest and applied at load.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import faiss
import numpy as np

if TYPE_CHECKING:
    from outfitter.platform.index import IndexConfig

log = logging.getLogger(__name__)

# The search-time parameter of each approximate kind; the others are fixed when it is built.
SEARCH_PARAM = {"ivf": "nprobe", "hnsw": "efSearch"}
SEED = 0  # calibration queries are a fixed sample: the same vectors build the same index


class IndexCalibrationError(ValueError):
    """An approximate shard that cannot reach the target recall (`on_unreachable="error"`)."""


def describe_shard(shard: faiss.Index, ef_search: int | None = None) -> dict:
    """Kind and parameters of a built CPU shard, read from the faiss object (`ef_search`: the
    HNSW beam width to record, default the one stored in the shard)."""
    if isinstance(shard, faiss.IndexIVF):
        return {"kind": "ivf", "params": {"nlist": int(shard.nlist), "nprobe": int(shard.nprobe)}}
    if isinstance(shard, faiss.IndexHNSW):
        params = {
            "M": int(shard.hnsw.nb_neighbors(1)),
            "efConstruction": int(shard.hnsw.efConstruction),
            "efSearch": int(shard.hnsw.efSearch if ef_search is None else ef_search),
        }
        return {"kind": "hnsw", "params": params}
    return {"kind": "flat", "params": {}}


def apply_params(shard: faiss.Index, params: dict) -> None:
    """Set the search-time parameters in `params` on a CPU shard (before any move to a GPU:
    faiss copies nprobe with the index)."""
    space = faiss.ParameterSpace()
    for name in SEARCH_PARAM.values():
        if name in params:
            space.set_index_parameter(shard, name, int(params[name]))


def search_params(shard: faiss.Index, params: dict, k: int):
    """faiss per-call search parameters of a shard for top-`k` (HNSW: its efSearch, at least k),
    or None where the index carries its own (IVF nprobe, set by `apply_params`)."""
    if isinstance(shard, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(efSearch=max(int(params.get("efSearch", k)), k))
    return None


def _candidates(shard: faiss.Index, name: str) -> list[int]:
    space = faiss.ParameterSpace()
    space.initialize(shard)
    for i in range(space.parameter_ranges.size()):
        values = space.parameter_ranges.at(i)
        if values.name == name:
            return [int(v) for v in faiss.vector_to_array(values.values)]
    return []


def _without_self(found: np.ndarray, rows: np.ndarray, k: int) -> list[np.ndarray]:
    """Each query's top-k rows with its own row removed (found: (m, k + 1))."""
    return [f[(f != r) & (f >= 0)][:k] for f, r in zip(found, rows, strict=True)]


def _recall(found: list[np.ndarray], truth: list[np.ndarray]) -> tuple[float, float]:
    """Mean recall over the queries, and its lower bound: the mean less two standard errors."""
    hits = np.array([
        len(np.intersect1d(f, t)) / len(t) if len(t) else 1.0
        for f, t in zip(found, truth, strict=True)
    ])  # fmt: skip
    return float(hits.mean()), float(hits.mean() - 2 * hits.std() / np.sqrt(len(hits)))


class _Probe:
    """Recall and distance computations of one shard at given parameter values."""

    def __init__(self, shard, kind: str, vectors: np.ndarray, cfg: IndexConfig, queries=None):
        n = len(vectors)
        rng = np.random.default_rng(SEED)
        pool = vectors if queries is None else queries
        rows = np.sort(rng.choice(len(pool), min(cfg.calibration_queries, len(pool)), False))
        self.queries = np.ascontiguousarray(pool[rows], dtype=np.float32)
        self.rows = rows if queries is None else np.full(len(rows), -1)  # -1: no self to drop
        self.k = min(cfg.calibration_k, n - 1)
        exact = faiss.IndexFlatIP(vectors.shape[1])
        exact.add(vectors)
        self.truth = _without_self(exact.search(self.queries, self.k + 1)[1], self.rows, self.k)
        self.shard, self.kind, self.n = shard, kind, n
        # value -> (recall, its lower bound, distances per query)
        self.curve: dict[int, tuple[float, float, float]] = {}

    def __call__(self, value: int) -> float:
        """The lower bound of the recall at `value` of the shard's search parameter."""
        name = SEARCH_PARAM[self.kind]
        faiss.ParameterSpace().set_index_parameter(self.shard, name, value)
        stats = faiss.cvar.indexIVF_stats if self.kind == "ivf" else faiss.cvar.hnsw_stats
        stats.reset()
        params = search_params(self.shard, {name: value}, self.k + 1)
        found = self.shard.search(self.queries, self.k + 1, params=params)[1]
        recall, lower = _recall(_without_self(found, self.rows, self.k), self.truth)
        distances = stats.ndis / len(self.rows) + (self.shard.nlist if self.kind == "ivf" else 0)
        self.curve[value] = (recall, lower, float(distances))
        return lower


def calibrate(
    shard: faiss.Index,
    kind: str,
    vectors: np.ndarray,
    cfg: IndexConfig,
    queries: np.ndarray | None = None,
) -> dict:
    """Tune `shard` (built over `vectors`) to the smallest search parameter whose recall reaches
    `cfg.target_recall` on the held-out queries, with two standard errors to spare (so that it
    holds for queries not in the sample); returns the shard's description plus a `calibration`
    record, whose `reached` says whether any candidate value did (the shard is left at the
    largest one tried if not).

    Args:
        queries: (Q, D) query vectors like the ones the index will be searched with (a sample
            of `cfg.calibration_queries` of them is used); None: the shard's own items, each
            held out from its own answer.
    """
    probe = _Probe(shard, kind, vectors, cfg, queries)
    target = cfg.target_recall
    values = _candidates(shard, SEARCH_PARAM[kind]) or [1]
    below, chosen = 0, None
    for value in values:
        if probe(value) >= target:
            chosen = value
            break
        below = value
    if chosen is not None:
        while chosen - below > 1:  # bisect: below misses the target, chosen reaches it
            mid = (below + chosen) // 2
            below, chosen = (below, mid) if probe(mid) >= target else (mid, chosen)
    best = chosen if chosen is not None else values[-1]
    faiss.ParameterSpace().set_index_parameter(shard, SEARCH_PARAM[kind], best)
    recall, lower, distances = probe.curve[best]
    record = {
        "target_recall": target,
        "k": probe.k,
        "queries": len(probe.rows),
        "queries_from": "items" if queries is None else "given",
        "reached": chosen is not None,
        "recall": round(recall, 4),
        "recall_lower_bound": round(lower, 4),
        "distances_per_query": round(distances, 1),
        "speedup": round(probe.n / max(distances, 1.0), 2),  # exact computes n per query
        "curve": {str(v): round(r, 4) for v, (r, _, _) in sorted(probe.curve.items())},
    }
    return {**describe_shard(shard), "calibration": record}


def unreachable(kind: str, n: int, tuning: dict, on_unreachable: str) -> str:
    """The reason an approximate shard of `n` items falls back to exact search; raises
    IndexCalibrationError instead when `on_unreachable` is "error"."""
    c = tuning["calibration"]
    name = SEARCH_PARAM[kind]
    reason = (
        f"a {kind} shard of {n} items reaches recall@{c['k']} {c['recall']:.3f} at most "
        f"({name}={tuning['params'][name]}), below the target {c['target_recall']}"
    )
    if on_unreachable == "error":
        raise IndexCalibrationError(
            f"{reason}; lower IndexConfig.target_recall, use kind=flat, or "
            "on_unreachable='exact' to keep such shards exact"
        )
    log.warning("%s: keeping it exact (IndexFlatIP)", reason)
    return reason + ": exact"
