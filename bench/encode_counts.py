"""How often one `outfitter` command opens a checkpoint and encodes the catalog, and its wall time.

Runs an `outfitter` CLI command in this process with counters around the calls that cost time at
catalog scale: checkpoint loads (`model.checkpoint.load_checkpoint`), catalog encodings by a
model (`model.evaluate.encode_catalog`, and the index's own copy where a version still has one),
tower-feature computations (`platform.embed.embed_catalog`: calls, and those that ran Ray Data
rather than reuse the cache; `model.towers.compute_features`, in-process), and model downloads
from MLflow (`platform.registry._download`). Only this (driver) process is counted: the training
workers' per-epoch validation is the training itself.

    .venv/bin/python bench/encode_counts.py --out FILE -- train --model-config hybrid-tiny \\
        --data D --workers 2 --epochs 2 --workdir W
    .venv/bin/python bench/encode_counts.py --out FILE -- evaluate --model models:/outfitter/1 \\
        --data D --workdir W
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections import Counter
from pathlib import Path

import common

COUNTED = {
    "checkpoint_loads": ("outfitter.model.checkpoint", "load_checkpoint"),
    "catalog_encodings": ("outfitter.model.evaluate", "encode_catalog"),
    "index_catalog_encodings": ("outfitter.platform.index", "catalog_vectors"),
    "feature_calls": ("outfitter.platform.embed", "embed_catalog"),
    "in_process_features": ("outfitter.model.towers", "compute_features"),
    "mlflow_model_downloads": ("outfitter.platform.registry", "_download"),
}


def install_counters(counts: Counter) -> None:
    """Wrap each counted function in its module (callers import them at call time)."""
    import importlib

    for label, (module_name, attr) in COUNTED.items():
        module = importlib.import_module(module_name)
        fn = getattr(module, attr, None)
        if fn is None:  # this version of the code has no such function
            continue

        def counted(*args, _fn=fn, _label=label, **kwargs):
            counts[_label] += 1
            out = _fn(*args, **kwargs)
            if _label == "feature_calls" and not out[2]:
                counts["ray_data_embeddings"] += 1  # not reused from the cache
            return out

        setattr(module, attr, counted)


def main() -> None:
    argv = sys.argv[1:]
    if "--" not in argv:
        raise SystemExit("usage: encode_counts.py [--out FILE] -- <outfitter command and args>")
    cut = argv.index("--")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="JSON result file (default: print only)")
    args = parser.parse_args(argv[:cut])
    command = argv[cut + 1 :]

    import outfitter
    from outfitter.cli import app

    counts: Counter = Counter()
    install_counters(counts)
    results = common.new_results("encode_counts", "cpu", {"command": command})
    results["outfitter"] = str(Path(outfitter.__file__).parent)
    t0 = time.perf_counter()
    try:
        app(command, standalone_mode=False)
    finally:
        results["wall_s"] = round(time.perf_counter() - t0, 1)
        results["counts"] = {k: counts.get(k, 0) for k in [*COUNTED, "ray_data_embeddings"]}
        results["driver_peak_rss_gib"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2
        )
        print(json.dumps({k: results[k] for k in ("wall_s", "counts", "load_avg")}, indent=2))
        if args.out:
            print(f"wrote {common.write_results(results, args.out)}")


if __name__ == "__main__":
    main()
