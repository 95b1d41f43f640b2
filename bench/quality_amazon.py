"""Amazon ablation of Sun et al. 2020 (`bench/quality.py --amazon`): the paper's claims on pairs.

On a synthetic catalog in the Amazon co-purchase format (`outfitter data synth --format amazon`,
the `nondisjoint` protocol of `data.amazon_splits`), sun2020-tiny is trained with `train_local.fit`
(the same task, builder and step as Ray Train) in four variants, each over several seeds:

- fused, compatibility-weighted triplet loss (the paper's model),
- fused, plain triplet loss (`loss.triplet_weighted=false`: every pair's margin the same),
- image-only and text-only (`item.modalities`: the other branch enters the fusion as zeros),
- and, beside them, hybrid-tiny scoring each pair as a two-item outfit (frozen tiny CLIP towers
  at random init, as no pre-trained weights are at hand, plus its learned word bag),

and evaluated on the test split with `model.evaluate_pairs`: pair AUC over positives and their
fixed negatives, hit@k and MRR of the true complement among up to 20 same-category candidates.
A `chance` row gives what a random scorer expects on the same questions. Runs are saved one by
one to `--out` and skipped by a re-run of the same command.

    nice -n 10 .venv/bin/python bench/quality.py --amazon           # 4 variants x 3 seeds
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import common

# row name -> (model config, overrides); the sun2020-tiny variants, then the hybrid model
VARIANTS: dict[str, tuple[str, dict]] = {
    "fused, weighted triplet": ("sun2020-tiny", {}),
    "fused, unweighted triplet": ("sun2020-tiny", {"loss.triplet_weighted": False}),
    "image-only, weighted": ("sun2020-tiny", {"item.modalities": ["image"]}),
    "text-only, weighted": ("sun2020-tiny", {"item.modalities": ["text"]}),
    "hybrid-tiny (random towers)": ("hybrid-tiny", {"transformer.layers": 1}),
}
METRICS = ("compatibility_auc", "hit_at_1", "hit_at_5", "mrr")
HEADERS = ("pair AUC", "hit@1", "hit@5", "MRR")
COMMAND = "nice -n 10 .venv/bin/python bench/quality.py --amazon"


def add_arguments(parser) -> None:
    """The Amazon mode's flags of bench/quality.py."""
    group = parser.add_argument_group("Amazon ablation (--amazon)")
    group.add_argument("--amazon", action="store_true", help="run the Sun et al. ablation")
    group.add_argument("--amazon-outfits", type=int, default=60, help="synthetic catalog size")
    group.add_argument("--amazon-epochs", type=int, default=8, help="epochs per run")
    group.add_argument("--amazon-out", type=Path, default=common.RESULTS / "quality_amazon.json")


def chance(split) -> dict:
    """What a random scorer expects on the split's questions."""
    sizes = [len(q.answers) for q in split.fitb]
    return {
        "compatibility_auc": 0.5,
        "hit_at_1": statistics.fmean(1 / n for n in sizes),
        "hit_at_5": statistics.fmean(min(5, n) / n for n in sizes),
        "mrr": statistics.fmean(sum(1 / r for r in range(1, n + 1)) / n for n in sizes),
    }


def one_run(data: Path, catalog, splits: dict, variant: str, seed: int, epochs: int) -> dict:
    from outfitter.model.config import load_config
    from outfitter.model.evaluate_pairs import evaluate_pairs
    from outfitter.model.train_local import fit

    name, overrides = VARIANTS[variant]
    cfg = load_config(name, overrides or None)
    t0 = time.perf_counter()
    result = fit(cfg, data, epochs, version="nondisjoint", seed=seed, catalog=catalog)
    run = {
        "variant": variant,
        "seed": seed,
        "epochs": epochs,
        "train_seconds": time.perf_counter() - t0,
        "final_loss": result.history[-1]["loss"],
        "load_1m": common.load_1m(),
    }
    for name, split in splits.items():
        run[name] = evaluate_pairs(result.model, result.builder, split, catalog)
    return run


def summarise(runs: list[dict]) -> dict:
    """{variant: {metric: {mean, std, n}}} over seeds, test split."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(run["variant"], []).append(run)
    out = {}
    for variant, group in groups.items():
        row: dict = {}
        for metric in METRICS:
            values = [r["test"][metric] for r in group]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            row[metric] = {"mean": statistics.fmean(values), "std": std, "n": len(values)}
        row["train_seconds"] = statistics.fmean(r["train_seconds"] for r in group)
        row["seeds"] = sorted(r["seed"] for r in group)
        out[variant] = row
    return out


def table(results: dict) -> tuple[list[str], list[list[str]]]:
    cols = ["model (sun2020-tiny unless named)", *HEADERS, "s/run", "seeds"]
    rows = []
    for variant in [v for v in VARIANTS if v in results["summary"]]:
        row = results["summary"][variant]
        cells = [f"{row[m]['mean']:.3f} ± {row[m]['std']:.3f}" for m in METRICS]
        rows.append([variant, *cells, common.fmt(row["train_seconds"]), str(len(row["seeds"]))])
    rows.append(["chance", *(f"{results['chance'][m]:.3f}" for m in METRICS), "", ""])
    return cols, rows


def main(args) -> None:
    """Run (or resume) the ablation and print its table."""
    import torch

    from outfitter.data import load_catalog, load_split
    from outfitter.data.synth import synthesize

    torch.set_num_threads(args.threads)
    data = common.RESULTS / "tmp" / "quality_amazon" / f"catalog-{args.amazon_outfits}"
    if not (data / "meta_Clothing_Shoes_and_Jewelry.json").is_file():
        synthesize(data, args.amazon_outfits, 0, 32, "amazon", overwrite=True)
    catalog = load_catalog(data)
    splits = {s: load_split(data, "nondisjoint", s, catalog) for s in ("valid", "test")}
    out: Path = args.amazon_out
    settings = {"outfits": args.amazon_outfits, "epochs": args.amazon_epochs}
    results = json.loads(out.read_text()) if out.is_file() else {}
    if results.get("settings") != settings:
        results = common.new_results("quality_amazon", "cpu", {**settings, "seeds": args.seeds})
        results.update(settings=settings, runs=[], command=COMMAND)
        results["data_note"] = (
            f"synthetic Amazon-format catalog ({args.amazon_outfits} outfits, seed 0, 32 px: "
            f"{len(catalog.items)} items, {len(splits['test'].outfits)} test pairs)"
        )
    results["chance"] = chance(splits["test"])
    done = {(r["variant"], r["seed"]) for r in results["runs"]}
    for seed in (int(s) for s in args.seeds.split(",")):
        for variant in VARIANTS:
            if (variant, seed) in done:
                continue
            run = one_run(data, catalog, splits, variant, seed, args.amazon_epochs)
            test = run["test"]
            print(f"[s{seed}] {variant}: " + ", ".join(f"{m} {test[m]:.3f}" for m in METRICS)
                  + f", {run['train_seconds']:.0f} s", flush=True)  # fmt: skip
            results["runs"].append(run)
            results["summary"] = summarise(results["runs"])
            common.write_results(results, out)  # after every run: a cut-off costs one run
    print(common.markdown_table(*table(results)))
