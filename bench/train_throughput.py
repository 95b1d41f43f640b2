"""Training throughput (outfits/s): Ray Train with 1 and 2 workers vs the bare training step.

Two modes of the hybrid-tiny model, on one synthetic catalog:

- `cached`: the configured hybrid-tiny (frozen towers): a step reads item features that Ray Data
  embedded once (`train.runs.shared_inputs`);
- `end-to-end`: the towers fine-tuned (`clip.freeze_image=false clip.freeze_text=false`): a step
  decodes JPEGs, tokenises titles and runs both CLIP towers forward and backward.

For each mode, side by side in one run:

- `bare` (N threads): a plain loop over the same datasets, `InputBuilder`, `OutfitTask`,
  `make_optimizer` and `train_step`, in this process, no Ray: the limit on N CPUs;
- `ray-train` (N workers): the platform's `build_trainer` + `train_loop_per_worker` (DDP between
  workers, one CPU each), rate = the loop's own `train_outfits_per_s`.

Rates are the best epoch after the first (warm-up): other jobs on a shared machine only slow an
epoch down (the means are in the JSON too); the bare loop runs before and after the Ray runs. An
"outfit" is what the loop counts: `batch_size` outfits per step per worker (each step also trains
on a retrieval batch of the same size). `÷ bare 1` compares with the bare loop on one thread (one
CPU, like one worker; or the GPU).

    .venv/bin/python bench/train_throughput.py                  # ~4-5 min on 2 CPUs
    .venv/bin/python bench/train_throughput.py --device cuda --workers 1
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import tempfile
import time
from pathlib import Path

import common

E2E_OVERRIDES = {"clip.freeze_image": False, "clip.freeze_text": False}
MODES = ("cached", "end-to-end")


def model_config(mode: str, model: str):
    from outfitter.model import load_config

    return load_config(model, overrides=E2E_OVERRIDES if mode == "end-to-end" else None)


# ---------------------------------------------------------------- the bare loop (no Ray)


def bare_setup(cfg, data: Path, features, *, batch_size: int, device: str, seed: int = 0):
    """What a worker builds (EpochRunner), without Ray: task, optimiser, builder, data loaders."""
    import torch
    from torch.utils.data import DataLoader

    from outfitter.data import load_catalog, load_split
    from outfitter.model.factory import build_model
    from outfitter.model.inputs import InputBuilder
    from outfitter.model.task import build_task, make_datasets, make_optimizer

    torch.manual_seed(seed)
    catalog = load_catalog(data)
    train = load_split(data, "nondisjoint", "train", catalog)
    model = build_model(cfg)
    task = build_task(model, cfg).to(device)
    builder = InputBuilder.for_model(model, catalog, features, seed=seed)
    builder.set_negative_pool(train.item_ids)
    cfg = cfg.replace({"optim.batch_size": batch_size})
    datasets = make_datasets(cfg, train, catalog, seed=seed)  # what EpochRunner._loaders uses
    loaders = {
        k: DataLoader(ds, batch_size=bs, shuffle=True, collate_fn=collate, drop_last=True)
        for k, (ds, collate, bs) in datasets.items()
    }
    return task, make_optimizer(cfg, model), builder, [d for d, *_ in datasets.values()], loaders


def bare_loop(
    cfg,
    data: Path,
    features,
    *,
    epochs: int,
    batch_size: int,
    max_steps: int,
    device: str,
    threads: int,
) -> dict:
    """The training step without Ray: same datasets, builder, task and optimiser as a worker."""
    import torch

    from outfitter.model.task import train_step

    torch.set_num_threads(threads)
    task, optimizer, builder, datasets, loaders = bare_setup(
        cfg, data, features, batch_size=batch_size, device=device
    )
    steps = min(len(loader) for loader in loaders.values())
    steps = min(steps, max_steps) if max_steps else steps
    autocast = contextlib.nullcontext()
    if device == "cuda":  # bf16 autocast, as the Ray loop does on GPU (TrainSettings.amp)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16)
    rates, input_fracs = [], []
    for epoch in range(epochs):
        for ds in datasets:
            ds.set_epoch(epoch)
        iterators = {k: iter(v) for k, v in loaders.items()}
        start, building = time.perf_counter(), 0.0
        for _ in range(steps):
            t0 = time.perf_counter()
            batch = builder({k: next(it) for k, it in iterators.items()}, train=True)
            building += time.perf_counter() - t0
            with autocast:
                train_step(task, optimizer, batch)  # returns floats: the step has finished
        seconds = time.perf_counter() - start
        rates.append(steps * batch_size / seconds)
        input_fracs.append(building / seconds)
    return {
        "outfits_per_s": common.steady_best(rates),
        "mean_outfits_per_s": common.steady_mean(rates),
        "epoch_rates": rates,
        "steps_per_epoch": steps,
        "input_frac": common.steady_mean(input_fracs),
    }


# ---------------------------------------------------------------- Ray Train


def ray_run(
    cfg,
    inputs: dict,
    storage: Path,
    *,
    workers: int,
    epochs: int,
    batch_size: int,
    max_steps: int,
    use_gpu: bool,
    name: str,
) -> dict:
    """One platform training run; per-epoch `train_outfits_per_s` as the loop reported them."""
    from outfitter.platform.train.runs import loop_config
    from outfitter.platform.train.settings import TrainSettings
    from outfitter.platform.train.trainer import build_trainer

    settings = TrainSettings(
        epochs=epochs,
        batch_size=batch_size,
        workers=workers,
        use_gpu=use_gpu,
        storage_path=str(storage),
        run_name=name,
        checkpoints_to_keep=epochs,  # every epoch's report stays in the result
        max_failures=0,
        patience=0,
        max_steps_per_epoch=max_steps,
    ).resolve(cfg)
    start = time.perf_counter()
    result = build_trainer(loop_config(cfg, settings, inputs, None), settings).fit()
    wall = time.perf_counter() - start
    reports = sorted((m for _, m in result.best_checkpoints), key=lambda m: m["epoch"])
    rates = [m["train_outfits_per_s"] for m in reports]
    train_s = sum(m["epoch_seconds"] for m in reports)  # the training passes only
    return {
        "outfits_per_s": common.steady_best(rates),
        "mean_outfits_per_s": common.steady_mean(rates),
        "epoch_rates": rates,
        "wall_s": wall,
        "train_s": train_s,
        "other_s": wall - train_s,  # worker-group start, validation and checkpoint each epoch
    }


# ---------------------------------------------------------------- driver


def run_mode(mode: str, args, data: Path, device: str, workdir: Path) -> list[dict]:
    from outfitter.platform.train.runs import shared_inputs, shared_values

    cfg = model_config(mode, args.model)
    e2e = mode == "end-to-end"
    epochs = args.e2e_epochs if e2e else args.epochs
    max_steps = args.e2e_max_steps if e2e else args.max_steps
    inputs, prep_s = common.timed(shared_inputs, cfg, data, cache_dir=workdir / "cache")
    print(f"[{mode}] inputs ready in {prep_s:.1f}s", flush=True)
    bare = functools.partial(
        bare_loop,
        cfg,
        data,
        shared_values(inputs)[1],
        epochs=epochs,
        batch_size=args.batch_size,
        max_steps=max_steps,
        device=device,
    )
    threads = args.bare_threads if device == "cpu" else [1]
    rows = [
        {
            "mode": mode,
            "target": "bare",
            "parallel": n,
            "load_1m": common.load_1m(),
            **bare(threads=n),
        }
        for n in threads
    ]
    for n in args.workers:
        load = common.load_1m()
        r = ray_run(
            cfg,
            inputs,
            workdir / "ray_results",
            workers=n,
            epochs=epochs,
            batch_size=args.batch_size,
            max_steps=max_steps,
            use_gpu=device == "cuda",
            name=f"bench-{mode}-{n}w",
        )
        rows.append({"mode": mode, "target": "ray-train", "parallel": n, "load_1m": load, **r})
        print(f"[{mode}] ray-train {n} worker(s): {r['outfits_per_s']:.1f} outfits/s", flush=True)
    for row in rows[: len(threads)]:  # the bare loop again: the machine's load drifts meanwhile
        again = bare(threads=row["parallel"])
        row["epoch_rates_after"] = again["epoch_rates"]
        row["outfits_per_s"] = max(row["outfits_per_s"], again["outfits_per_s"])
        row["input_frac"] = (row["input_frac"] + again["input_frac"]) / 2
        print(f"[{mode}] bare {row['parallel']} thread(s): {row['outfits_per_s']:.1f} outfits/s")
    reference = rows[0]["outfits_per_s"]  # bare, one thread (or the GPU)
    for r in rows:
        r["ratio_to_bare"] = r["outfits_per_s"] / reference
    return rows


def table(results: dict) -> tuple[list[str], list[list[str]]]:
    """Columns and rows of the result table (also used by report.py)."""
    gpu = results["machine"].get("device") == "cuda"
    cols = ["mode", "target", "runs on", "outfits/s", "÷ bare 1", "input build", "wall s", "load"]
    rows = []
    for r in results["rows"]:
        n = r["parallel"]
        if r["target"] == "bare":
            where = "1 GPU" if gpu else f"{n} thread" + "s" * (n > 1)
        else:
            where = f"{n} worker" + "s" * (n > 1) + (" (1 GPU each)" if gpu else "")
        rows.append(
            [
                r["mode"],
                r["target"],
                where,
                common.fmt(r["outfits_per_s"]),
                f"{r['ratio_to_bare']:.2f}×",
                f"{100 * r['input_frac']:.0f}%" if "input_frac" in r else "—",
                common.fmt(r.get("wall_s")),
                common.fmt(r.get("load_1m")),
            ]
        )
    return cols, rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="catalog folder (default: a fresh synthetic one)")
    p.add_argument("--outfits", type=int, default=1000, help="synthetic catalog size")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--model", default="hybrid-tiny")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--workers", default="1,2", help="Ray Train worker counts")
    p.add_argument("--bare-threads", default="1", help="torch threads of the bare loop runs")
    p.add_argument("--batch-size", type=int, default=64, help="outfits per step per worker")
    p.add_argument("--epochs", type=int, default=5, help="cached mode; the first is warm-up")
    p.add_argument("--max-steps", type=int, default=0, help="cached steps/epoch cap (0 = all)")
    p.add_argument("--e2e-epochs", type=int, default=2, help="end-to-end; the first is warm-up")
    p.add_argument("--e2e-max-steps", type=int, default=6, help="end-to-end steps/epoch cap")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs given to ray.init")
    p.add_argument("--out", type=Path, default=common.RESULTS / "train_throughput.json")
    args = p.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    args.workers = [int(w) for w in args.workers.split(",")]
    args.bare_threads = [int(t) for t in args.bare_threads.split(",")]
    unknown = set(args.modes) - set(MODES)
    if unknown:
        p.error(f"--modes {sorted(unknown)}: choose from {MODES}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    device = common.resolve_device(args.device)
    if device == "cuda":
        import torch

        gpus = torch.cuda.device_count()
        if max(args.workers) > gpus:
            print(f"{gpus} GPU(s): keeping worker counts <= {gpus}", flush=True)
            args.workers = [w for w in args.workers if w <= gpus] or [1]
    results = common.new_results("train_throughput", device, vars(args))

    import ray

    from outfitter.platform.local_ray import ensure_ray

    with tempfile.TemporaryDirectory(prefix="outfitter-bench-train-") as tmp:
        workdir = Path(tmp)  # catalog, feature cache, Ray Train storage: removed at the end
        data = common.synth_catalog(args.data, args.outfits, args.image_size, workdir)
        results["data"] = str(args.data or f"synthetic, {args.outfits} outfits")
        ensure_ray(num_cpus=args.cpus)
        common.quiet_ray_data()
        try:
            rows = [r for m in args.modes for r in run_mode(m, args, data, device, workdir)]
        finally:
            ray.shutdown()
    results["rows"] = rows
    out = common.write_results(results, args.out)
    common.print_table(f"training throughput, {common.describe(results)}", *table(results))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
