"""faiss index kinds for the catalog: flat vs IVF vs HNSW at 10k / 100k / 1M item vectors.

Each index is built the way the platform builds a shard (`platform.index.CatalogIndex.build` with
`IndexConfig(kind=...)` and its defaults: IVF nlist = 4 sqrt(n) up to 1024; HNSW M 32,
efConstruction 200; the search parameter, IVF nprobe or HNSW efSearch, calibrated at build time
until recall@10 against exact search reaches `--target-recall` 0.95 on held-out queries), over
one category so the whole catalog is one shard. Measured: build time (train + add + calibration,
plus the platform's input checks), index size (`faiss.serialize_index`), queries/s of a batch of
queries and one query at a time on the shard (faiss), queries/s of the platform's
`CatalogIndex.search` (with its per-query merge into `Hit`s), and recall@10 against the exact
(flat) results. Rates are also given as a ratio to flat at the same size.

Vectors are clustered (real item embeddings are: categories, colours, styles), L2-normalised, of
the item dimension of `--configs` (hybrid-tiny: 64; add hybrid-vit-b32 for 512). Queries come
from the same cluster centres with their own cluster weights (so some fall where items are
sparse), and are not in the index. The calibration queries (`--calibration-queries`) are drawn
with the measured ones but are not among them: recall@10 is measured on queries the calibration
never saw.

Builds use every core (`--build-threads`, an offline job); searches use one thread
(`--search-threads 1`), as in a Ray Serve replica (OMP_NUM_THREADS=1), and on a shared machine
more threads mostly wait on each other. HNSW is built up to 100k vectors (`--hnsw-max`): with
efConstruction 200 it takes ~20 min at 1M on 2 CPUs.

    .venv/bin/python bench/index.py                                   # ~5 min on 2 CPUs
    .venv/bin/python bench/index.py --configs hybrid-tiny,hybrid-vit-b32 --hnsw-max 1000000
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import common
import numpy as np

KINDS = ("flat", "ivf", "hnsw")


def clustered_vectors(n: int, dim: int, rng: np.random.Generator, centers: np.ndarray):
    """`n` unit vectors around `centers` (a Gaussian mixture with uneven cluster sizes)."""
    weights = rng.dirichlet(np.full(len(centers), 0.5))  # some big clusters, many small ones
    which = rng.choice(len(centers), size=n, p=weights)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 200_000):  # chunks: bounded temporary memory at 1M x 512
        stop = min(n, start + 200_000)
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32)
        out[start:stop] = centers[which[start:stop]] + 0.5 * noise / np.sqrt(dim)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def make_data(n: int, dim: int, n_queries: int, seed: int, n_calibration: int = 0):
    """(vectors, queries, calibration queries): the queries of one draw, split in two."""
    rng = np.random.default_rng([seed, n, dim])
    n_centers = max(16, min(4096, n // 200))
    centers = rng.standard_normal((n_centers, dim), dtype=np.float32) / np.sqrt(dim)
    vectors = clustered_vectors(n, dim, rng, centers)
    queries = clustered_vectors(n_queries + n_calibration, dim, rng, centers)
    return vectors, queries[:n_queries], queries[n_queries:]


def queries_per_s(search, queries: np.ndarray, single: int) -> tuple[float, float, np.ndarray]:
    """(batch queries/s, one-at-a-time queries/s, batch result ids)."""
    search(queries[:8])  # warm-up
    ids, batch_s = common.timed(search, queries)
    start = time.perf_counter()
    for q in queries[:single]:
        search(q[None])
    one_s = time.perf_counter() - start
    return len(queries) / batch_s, single / one_s, ids


def recall_at(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean share of the exact top-k that the index returned in its top-k."""
    hits = [len(set(f[:k]) & set(e[:k])) for f, e in zip(found, exact, strict=True)]
    return float(np.mean(hits)) / k


def measure(kind: str, vectors, queries, calibration, args, exact) -> tuple[dict, np.ndarray]:
    """Build one index kind over `vectors` (calibrated on `calibration`) and measure it; returns
    (row, its top-k ids)."""
    import faiss

    from outfitter.platform.index import CatalogIndex, IndexConfig
    from outfitter.platform.index_tuning import search_params

    n, k = len(vectors), args.k
    config = IndexConfig(
        kind=kind,
        use_gpu=args.gpu,
        target_recall=args.target_recall,
        calibration_k=k,
        calibration_queries=len(calibration),
        on_unreachable="error",  # a kind that misses the target is a finding, not a flat row
    )
    ids = [str(i) for i in range(n)]
    cats = np.zeros(n, np.int64)
    faiss.omp_set_num_threads(args.build_threads or os.cpu_count())
    index, build_s = common.timed(
        CatalogIndex.build, vectors, ids, cats, config, calibration_queries=calibration
    )
    faiss.omp_set_num_threads(args.search_threads or os.cpu_count())
    shard, tuning = index.shards[0], index.tuning[0]
    cpu_shard = faiss.index_gpu_to_cpu(shard) if "Gpu" in type(shard).__name__ else shard
    size = len(faiss.serialize_index(cpu_shard))

    def search(q):  # as CatalogIndex searches the shard, with its calibrated parameters
        return shard.search(q, k, params=search_params(shard, tuning["params"], k))[1]

    qps, qps_one, found = queries_per_s(search, queries, args.single)
    n_platform = min(len(queries), args.platform_queries)
    _, platform_s = common.timed(index.search, queries[:n_platform], k)
    row = {
        "kind": kind,
        "n": n,
        "dim": vectors.shape[1],
        "faiss_class": type(shard).__name__,
        "params": tuning["params"],
        "calibration": tuning["calibration"],
        "build_s": build_s,
        "bytes": size,
        "qps_batch": qps,
        "qps_single": qps_one,
        "qps_platform": n_platform / platform_s,
        "recall_at_k": 1.0 if exact is None else recall_at(found, exact, k),
        "load_1m": common.load_1m(),
    }
    return row, found


def run_size(n: int, dim: int, args) -> list[dict]:
    vectors, queries, calibration = make_data(
        n, dim, args.queries, args.seed, args.calibration_queries
    )
    rows, exact = [], None
    for kind in KINDS:  # flat first: its results are the exact ones
        if kind == "hnsw" and n > args.hnsw_max:
            continue
        row, found = measure(kind, vectors, queries, calibration, args, exact)
        exact = found if kind == "flat" else exact
        rows.append(row)
        print(
            f"n={n:>9,} d={dim} {kind:5s} build {row['build_s']:7.1f}s "
            f"{row['bytes'] / 2**20:8.1f} MiB {row['qps_batch']:10.0f} q/s "
            f"recall@{args.k} {row['recall_at_k']:.3f}",
            flush=True,
        )
    flat = rows[0]
    for r in rows:
        r["qps_vs_flat"] = r["qps_batch"] / flat["qps_batch"]
        r["build_vs_flat"] = r["build_s"] / flat["build_s"]
    return rows


def table(results: dict) -> tuple[list[str], list[list[str]]]:
    """Columns and rows of the result table (also used by report.py)."""
    k = results["args"]["k"]
    cols = [
        "vectors",
        "dim",
        "kind",
        "params",
        "build s",
        "MiB",
        "q/s batch",
        "÷ flat",
        "q/s one",
        "q/s platform",
        f"recall@{k}",
        "calibration",
    ]
    rows = [
        [
            common.fmt(r["n"]),
            str(r["dim"]),
            r["kind"],
            " ".join(f"{key}={v}" for key, v in r["params"].items()) or "—",
            common.fmt(r["build_s"], 2),
            common.fmt(r["bytes"] / 2**20),
            common.fmt(r["qps_batch"], 0),
            f"{r['qps_vs_flat']:.1f}×",
            common.fmt(r["qps_single"], 0),
            common.fmt(r["qps_platform"], 0),
            f"{r['recall_at_k']:.3f}",
            _calibration(r.get("calibration")),
        ]
        for r in results["rows"]
    ]
    return cols, rows


def _calibration(c: dict | None) -> str:
    """The recall the calibration measured on its own queries, and how many."""
    if not c:
        return "—"
    return f"{c['recall']:.3f} on {c['queries']}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,100000,1000000", help="catalog sizes (vectors)")
    p.add_argument("--configs", default="hybrid-tiny", help="model configs: their item dim")
    p.add_argument("--hnsw-max", type=int, default=100_000, help="largest size HNSW is built at")
    p.add_argument("--target-recall", type=float, default=0.95, help="calibrated recall@k")
    p.add_argument("--calibration-queries", type=int, default=500, help="held-out queries")
    p.add_argument("--build-threads", type=int, default=0, help="faiss threads to build (0 = all)")
    p.add_argument("--search-threads", type=int, default=1, help="faiss threads to search")
    p.add_argument("--queries", type=int, default=1000, help="batch of queries per index")
    p.add_argument("--single", type=int, default=200, help="queries timed one at a time")
    p.add_argument("--platform-queries", type=int, default=200, help="CatalogIndex.search batch")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=common.RESULTS / "index.json")
    args = p.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.configs = [c for c in args.configs.split(",") if c]
    return args


def main(argv=None) -> None:
    import faiss

    from outfitter.model import load_config

    args = parse_args(argv)
    # faiss-gpu is an optional extra: without it a CUDA machine still benchmarks the CPU index.
    device = common.resolve_device(args.device)
    args.gpu = device == "cuda" and hasattr(faiss, "StandardGpuResources")
    if device == "cuda" and not args.gpu:
        print("faiss has no GPU support here (pip install faiss-gpu): indexes stay on the CPU")
    results = common.new_results("index", "cuda" if args.gpu else "cpu", vars(args))
    results["faiss"] = {
        "version": faiss.__version__,
        "omp_threads": faiss.omp_get_max_threads(),
        "gpu": args.gpu,
    }
    dims = sorted({load_config(c).item.dim for c in args.configs})
    results["rows"] = [r for dim in dims for n in args.sizes for r in run_size(n, dim, args)]
    out = common.write_results(results, args.out)
    common.print_table(f"faiss index kinds, {common.describe(results)}", *table(results))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
