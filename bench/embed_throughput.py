"""Catalog embedding throughput (items/s): Ray Data vs a plain batched loop over the same towers.

Side by side in one run, on one synthetic catalog, with the frozen towers of `--model`:

- `plain`: `towers.compute_features(towers, catalog, batch_size)` in this process, one torch
  thread (one CPU, like one embedding actor) or the GPU: the reference;
- `ray-data`: `platform.embed.embed_catalog(..., force=True)` (Ray Data `map_batches` on an actor
  pool of `TowerEmbedder`s, same batch size) with the platform's default pool size and with
  `--actors` more; timed from the call to the saved feature table, best of `--repeats` (the very
  first call also starts Ray's worker processes: `first call s`). Every call starts a fresh actor
  pool; its fixed cost (`start-up s`: one batch through a fresh pool, less that batch's plain
  time) is measured too, and the rate without it (`items/s after start-up`).

A per-stage split of the plain loop (JPEG decode + preprocess, image tower, tokenise, text tower)
on a subset says where the time goes. The Ray features are checked against the plain ones.

    .venv/bin/python bench/embed_throughput.py               # ~2 min on 2 CPUs
    .venv/bin/python bench/embed_throughput.py --device cuda --outfits 4000
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
import warnings
from pathlib import Path

import common
import numpy as np


def plain(catalog, clip_cfg, *, batch_size: int, device: str, threads: int, repeats: int):
    """(features, seconds of each pass) of the plain loop; towers built before the clock starts."""
    import torch

    from outfitter.model.towers import compute_features, create_towers

    torch.set_num_threads(threads)
    towers = create_towers(clip_cfg, device=device)
    compute_features(towers, catalog, catalog.item_ids[:batch_size], batch_size)  # warm-up
    times = []
    for _ in range(repeats):
        features, seconds = common.timed(compute_features, towers, catalog, batch_size=batch_size)
        times.append(seconds)  # compute_features returns numpy: the GPU has finished
    return features, times


def stages(catalog, clip_cfg, *, n: int, batch_size: int, device: str) -> dict:
    """Seconds per stage of the plain loop over the first `n` items (one thread on CPU)."""
    import torch

    from outfitter.model.towers import create_towers

    towers = create_towers(clip_cfg, device=device)
    towers.model.eval()
    ids = catalog.item_ids[:n]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    spent = {"decode+preprocess": 0.0, "image tower": 0.0, "tokenise": 0.0, "text tower": 0.0}
    with torch.no_grad():
        for i in range(0, len(ids), batch_size):
            chunk = ids[i : i + batch_size]
            t0 = time.perf_counter()
            pixels = towers.load_pixels([catalog.image_path(j) for j in chunk])
            t1 = time.perf_counter()
            towers.encode_pixels(pixels).cpu()
            sync()
            t2 = time.perf_counter()
            tokens = towers.tokenize([catalog.items[j].text for j in chunk])
            t3 = time.perf_counter()
            towers.encode_tokens(tokens).cpu()
            sync()
            t4 = time.perf_counter()
            for key, dt in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                spent[key] += dt
    total = sum(spent.values())
    return {
        "items": len(ids),
        "seconds": spent,
        "share": {k: v / total for k, v in spent.items()},
        "items_per_s": len(ids) / total,
    }


def ray_data(
    catalog,
    clip_cfg,
    *,
    batch_size: int,
    actors: int | None,
    repeats: int,
    cache_dir: Path,
    use_gpu: bool,
) -> tuple[object, list[float]]:
    """(features, seconds of each call) of `embed_catalog` with `force=True`."""
    from outfitter.platform.embed import embed_catalog

    seconds, table = [], None
    for _ in range(repeats):
        (table, _, reused), dt = common.timed(
            embed_catalog,
            catalog,
            clip_cfg,
            cache_dir=cache_dir,
            batch_size=batch_size,
            actors=actors,
            use_gpu=use_gpu,
            force=True,
        )
        assert not reused, "force=True must recompute"
        seconds.append(dt)
    return table, seconds


def default_pool(device: str) -> int:
    """The pool size embed_catalog picks by itself: one actor per GPU, else CPUs - 1."""
    import ray

    resources = ray.cluster_resources()
    if device == "cuda":
        return int(resources.get("GPU", 1))
    return max(1, int(resources.get("CPU", 1)) - 1)


def plain_row(n: int, times: list[float], device: str, load: float | None) -> dict:
    """The reference row: the best of the plain loop's passes."""
    best = min(times)
    print(f"plain: {n / best:.1f} items/s (best of {len(times)})", flush=True)
    return {
        "target": "plain",
        "parallel": "1 thread" if device == "cpu" else "1 GPU",
        "seconds": best,
        "all_s": times,
        "items_per_s": n / best,
        "load_1m": load,
    }


def ray_rows(
    catalog, clip_cfg, args, device: str, reference, plain_rate: float, workdir: Path
) -> list[dict]:
    """One row per actor pool size, the features checked against the plain loop's."""
    from outfitter.data.types import Catalog

    n, rows, batch = len(catalog.item_ids), [], args.batch_size
    one_batch = Catalog(
        catalog.root, {i: catalog.items[i] for i in catalog.item_ids[:batch]}, catalog.image_dir
    )
    for actors in args.actors:
        load = common.load_1m()
        embed = functools.partial(
            ray_data,
            clip_cfg=clip_cfg,
            batch_size=batch,
            actors=actors,
            cache_dir=workdir / "cache",
            use_gpu=device == "cuda",
        )
        table, times = embed(catalog, repeats=args.repeats)
        diff = max(
            float(np.abs(table.image - reference.image).max()),
            float(np.abs(table.text - reference.text).max()),
        )
        # The fixed cost of a call: one batch through a fresh pool, less the batch's plain time.
        with warnings.catch_warnings():  # "only received 1 input(s)": one batch, on purpose
            warnings.simplefilter("ignore", UserWarning)
            _, small = embed(one_batch, repeats=2)
        fixed = max(0.0, min(small) - len(one_batch.items) / plain_rate)
        work = min(times) - fixed  # None below: a call that is nearly all start-up says nothing
        after_start = n / work if work > 0.2 * min(times) else None
        pool = actors or default_pool(device)
        label = f"{pool} actor" + "s" * (pool > 1) + ("" if actors else " (default)")
        rows.append(
            {
                "target": "ray-data",
                "parallel": label,
                "actors": actors,
                "seconds": min(times),
                "first_s": times[0],
                "all_s": times,
                "items_per_s": n / min(times),
                "fixed_s": fixed,
                "items_per_s_after_start": after_start,
                "max_abs_diff": diff,
                "load_1m": load,
            }
        )
        print(f"ray-data ({label}): {n / min(times):.1f} items/s", flush=True)
    return rows


def run(args, data: Path, device: str, workdir: Path) -> dict:
    import ray

    from outfitter.data import load_catalog
    from outfitter.model import load_config
    from outfitter.platform.local_ray import ensure_ray

    catalog = load_catalog(data)
    clip_cfg = load_config(args.model).clip
    n, load = len(catalog.item_ids), common.load_1m()
    run_plain = functools.partial(
        plain,
        catalog,
        clip_cfg,
        batch_size=args.batch_size,
        device=device,
        threads=1,
        repeats=args.repeats,
    )
    reference, before = run_plain()
    ensure_ray(num_cpus=args.cpus)
    common.quiet_ray_data()
    try:
        rate = n / min(before)
        by_ray = ray_rows(catalog, clip_cfg, args, device, reference, rate, workdir)
    finally:
        ray.shutdown()
    _, after = run_plain()  # before and after: the machine's load drifts meanwhile
    rows = [plain_row(n, before + after, device, load), *by_ray]
    for r in rows:
        r["ratio_to_plain"] = r["items_per_s"] / rows[0]["items_per_s"]
    n_stage = min(args.stage_items, len(catalog.item_ids))
    split = stages(catalog, clip_cfg, n=n_stage, batch_size=args.batch_size, device=device)
    return {"items": len(catalog.item_ids), "rows": rows, "stages": split}


def table(results: dict) -> tuple[list[str], list[list[str]]]:
    """Columns and rows of the result table (also used by report.py)."""
    cols = [
        "target",
        "runs on",
        "items/s",
        "÷ plain",
        "seconds",
        "first call s",
        "start-up s",
        "items/s after start-up",
        "load",
    ]
    rows = [
        [
            r["target"],
            r["parallel"],
            common.fmt(r["items_per_s"]),
            f"{r['ratio_to_plain']:.2f}×",
            common.fmt(r["seconds"]),
            common.fmt(r.get("first_s")),
            common.fmt(r.get("fixed_s")),
            common.fmt(r.get("items_per_s_after_start")),
            common.fmt(r.get("load_1m")),
        ]
        for r in results["rows"]
    ]
    return cols, rows


def stage_line(results: dict) -> str:
    """One line: the plain loop's time split per stage."""
    s = results["stages"]
    parts = ", ".join(f"{k} {100 * v:.0f}%" for k, v in s["share"].items())
    return f"plain loop per stage ({s['items']} items, {s['items_per_s']:.0f} items/s): {parts}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="catalog folder (default: a fresh synthetic one)")
    p.add_argument("--outfits", type=int, default=1000, help="synthetic catalog size (~4 items)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--model", default="hybrid-tiny", help="model config whose towers embed")
    p.add_argument("--batch-size", type=int, default=128, help="items per batch (both paths)")
    p.add_argument("--actors", default="auto,2", help="Ray Data pool sizes; auto = the default")
    p.add_argument("--repeats", type=int, default=2, help="Ray Data calls per pool size")
    p.add_argument("--stage-items", type=int, default=1024)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs given to ray.init")
    p.add_argument("--out", type=Path, default=common.RESULTS / "embed_throughput.json")
    args = p.parse_args(argv)
    args.actors = [None if a == "auto" else int(a) for a in args.actors.split(",") if a]
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    device = common.resolve_device(args.device)
    if device == "cuda":  # one GPU per actor
        import torch

        gpus = torch.cuda.device_count()
        args.actors = [a for a in args.actors if a is None or a <= gpus] or [None]
    results = common.new_results("embed_throughput", device, vars(args))
    with tempfile.TemporaryDirectory(prefix="outfitter-bench-embed-") as tmp:
        workdir = Path(tmp)  # catalog and feature cache: removed at the end
        data = common.synth_catalog(args.data, args.outfits, args.image_size, workdir)
        results.update(run(args, data, device, workdir))
    results["data"] = str(args.data or f"synthetic, {args.outfits} outfits")
    out = common.write_results(results, args.out)
    common.print_table(f"embedding throughput, {common.describe(results)}", *table(results))
    print(stage_line(results))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
