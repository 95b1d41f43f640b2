"""Quality benchmark: the hybrid model vs its single-modality ablations vs the Sun et al. baseline.

For every seed and split version: pre-train the tiny CLIP towers on that version's train items
(`clip_pretrain`, the demo's path), embed the catalog once with them (frozen towers, shared by
the three hybrid configs), train every model with `train_local.fit` (no Ray: the same task,
builder and step as Ray Train), and evaluate on valid and test. Each finished run is written to
`--out` at once; re-running the same command skips the runs already there (nothing is lost when
a long run is cut off). The summary gives mean ± std over seeds.

    .venv/bin/python bench/quality.py                  # default catalog, seeds 0,1,2 (long)
    .venv/bin/python bench/quality.py --models hybrid-tiny,image-only,text-only \
        --out bench/results/tmp/quality-hybrid.json    # one part on each core, then:
    .venv/bin/python bench/quality.py --merge A.json B.json --out bench/results/quality.json
    nice -n 10 .venv/bin/python bench/quality.py --amazon   # Sun et al. ablation, Amazon pairs

`--features linear` is a diagnostic: the hybrid configs read hand-made features instead of the
towers' (bag of words of `Item.text` and 16 px pixels, each randomly projected to 64-d), which
keep each modality's information linearly: it tells "the model cannot learn the rules" from
"the towers do not encode the attributes".
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import common
import quality_amazon
import torch

MODELS = ("hybrid-tiny", "image-only", "text-only", "sun2020-tiny")
METRICS = ("compatibility_auc", "fitb_accuracy", "fitb_accuracy_compat", "recall_at_10")
# description-conditioned retrieval (model.evaluate): the model, then the keyword baseline
RETRIEVAL = tuple(
    f"{who}_{q}_{what}"
    for q in ("title", "short", "title_cat", "short_cat")
    for who in ("retrieval", "keyword")
    for what in ("recall_at_10", "in_category")
)


# ---------------------------------------------------------------- features


def _towers(args, version: str, seed: int, catalog, workdir: Path) -> tuple[str | None, dict]:
    """Pre-trained towers of (version, seed): trained once, reused by a re-run."""
    from outfitter.model.clip_pretrain import catalog_split_ids, pretrain
    from outfitter.model.config import load_config

    if args.towers:
        return args.towers, {}
    if args.features == "linear" or args.pretrain_epochs <= 0:
        return None, {}
    path = workdir / f"towers-{version}-s{seed}.safetensors"
    report_path = path.with_suffix(".json")
    if path.is_file() and report_path.is_file():
        return str(path), json.loads(report_path.read_text())
    train_ids, held = catalog_split_ids(args.data, version, catalog)
    report = pretrain(catalog, load_config("hybrid-tiny").clip, path, args.pretrain_epochs,
                      train_ids=train_ids, heldout_ids=held, seed=seed,
                      text_view_weight=args.text_view_weight)  # fmt: skip
    report_path.write_text(json.dumps(report))
    print(f"[{version} s{seed}] towers pre-trained: recall@1 i->t "
          f"{report['image_to_text_r1']:.3f}, {report['seconds']:.0f} s", flush=True)  # fmt: skip
    return str(path), report


def linear_features(catalog, dim: int = 64, seed: int = 0):
    """Diagnostic features: random projections of text bag-of-words and 16 px pixels."""
    import numpy as np

    from outfitter.data.features import FeatureTable
    from outfitter.data.images import load_image
    from outfitter.model.sun2020 import WordVocab

    ids, rng = catalog.item_ids, np.random.default_rng(seed)
    vocab = WordVocab.build(catalog.items[i].text for i in ids)
    bow = np.zeros((len(ids), len(vocab)), np.float32)  # (M, V)
    for row, i in enumerate(ids):
        for word in vocab.encode(catalog.items[i].text, 64):
            bow[row, word] += 1
    pixels = np.stack(
        [np.asarray(load_image(catalog.image_path(i), 16), np.float32).ravel() / 255 for i in ids]
    )  # (M, 768)
    pixels -= pixels.mean(0)

    def project(x):
        y = x @ rng.normal(size=(x.shape[1], dim)).astype(np.float32)
        return y / np.linalg.norm(y, axis=1, keepdims=True)

    return FeatureTable(ids, project(pixels), project(bow), meta={"diagnostic": "linear"})


# ---------------------------------------------------------------- runs


def run_key(run: dict) -> tuple:
    return run["version"], run["model"], run["seed"]


def run_group(args, version: str, seed: int, catalog, workdir: Path, todo: list[str]):
    """Train and evaluate the models `todo` on (version, seed); yields one run dict each."""
    from outfitter.data import load_split
    from outfitter.model.config import load_config
    from outfitter.model.evaluate import evaluate
    from outfitter.model.towers import compute_features, create_towers
    from outfitter.model.train_local import fit

    towers_path, pretrain_report, towers, features = None, {}, None, None
    if any(not name.startswith("sun2020") for name in todo):  # the baseline needs no towers
        towers_path, pretrain_report = _towers(args, version, seed, catalog, workdir)
        clip_cfg = load_config("hybrid-tiny", {"clip.pretrained": towers_path}).clip
        towers = create_towers(clip_cfg)
        if args.features == "linear":
            features = linear_features(catalog, seed=seed)
        else:
            features = compute_features(towers, catalog)
    splits = {s: load_split(args.data, version, s, catalog) for s in ("valid", "test")}
    for name in todo:
        overrides = {"clip.pretrained": towers_path, **json.loads(args.overrides)}
        cfg = load_config(name, {k: v for k, v in overrides.items() if _applies(name, k)})
        epochs = args.sun_epochs if cfg.kind == "sun2020" else args.epochs
        # fine-tuned towers get their own copy: the frozen ones are shared by the other models
        shared = towers if cfg.input_kind == "features" else None
        log = _epoch_printer(name) if args.verbose else None
        result = fit(cfg, args.data, epochs, version=version, seed=seed, catalog=catalog,
                     log=log, features=features, towers=shared)  # fmt: skip
        run = {
            "version": version,
            "model": name,
            "seed": seed,
            "epochs": epochs,
            "epoch_seconds": statistics.fmean(h["seconds"] for h in result.history),
            "final_losses": {k: v for k, v in result.history[-1].items() if k.endswith("loss")},
            "clip_pretrain": pretrain_report if cfg.kind == "hybrid" else None,
            "load_1m": common.load_1m(),
        }
        for split_name, split in splits.items():
            run[split_name] = evaluate(result.model, result.builder, split, catalog)
        test = run["test"]
        print(f"[{version} s{seed}] {name}: " + ", ".join(f"{m} {test[m]:.3f}" for m in METRICS)
              + f", {run['epoch_seconds']:.1f} s/epoch", flush=True)  # fmt: skip
        yield run


def _epoch_printer(name: str):
    return lambda epoch, row: print(f"  {name} {json.dumps(row)}", flush=True)


def _applies(name: str, key: str) -> bool:
    """Hybrid-only overrides (clip.*) are skipped for the sun2020 baseline."""
    return not (name.startswith("sun2020") and key.startswith(("clip.", "item.", "transformer.")))


# ---------------------------------------------------------------- summary


def summarise(runs: list[dict]) -> dict:
    """{version: {model: {metric: {mean, std, n}, epoch_seconds}}} over seeds, test split."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["version"], run["model"]), []).append(run)
    out: dict = {}
    for (version, model), group in groups.items():
        row = {}
        for metric in METRICS + RETRIEVAL:
            values = [r["test"][metric] for r in group if metric in r["test"]]
            if not values:  # runs of an older benchmark without this metric
                continue
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            row[metric] = {"mean": statistics.fmean(values), "std": std, "n": len(values)}
        row["epoch_seconds"] = statistics.fmean(r["epoch_seconds"] for r in group)
        row["seeds"] = sorted(r["seed"] for r in group)
        out.setdefault(version, {})[model] = row
    return out


def table(results: dict) -> tuple[list[str], list[list[str]]]:
    cols = ["version", "model", "AUC", "FITB (query)", "FITB (compat)", "recall@10", "s/epoch",
            "seeds"]  # fmt: skip
    rows = []
    order = {m: i for i, m in enumerate(MODELS)}
    for version, per_model in results["summary"].items():
        for model in sorted(per_model, key=lambda m: order.get(m, len(order))):
            row = per_model[model]
            cells = [f"{row[m]['mean']:.3f} ± {row[m]['std']:.3f}" for m in METRICS]
            rows.append([version, model, *cells, common.fmt(row["epoch_seconds"]),
                         str(len(row["seeds"]))])  # fmt: skip
    return cols, rows


def retrieval_table(results: dict) -> tuple[list[str], list[list[str]]]:
    """Retrieval from descriptions (no category / category given), model vs keyword search."""
    cols = ["version", "model", "description", "category", "model recall@10",
            "keyword recall@10", "model in category", "keyword in category"]  # fmt: skip
    rows = []
    for version, per_model in results["summary"].items():
        for model, row in per_model.items():
            if "retrieval_title_recall_at_10" not in row:
                continue
            for q in ("title", "short", "title_cat", "short_cat"):
                stats = [
                    row[f"{who}_{q}_{what}"]
                    for what in ("recall_at_10", "in_category")
                    for who in ("retrieval", "keyword")
                ]
                cells = [f"{m['mean']:.3f} ± {m['std']:.3f}" for m in stats]
                rows.append([version, model, "full title" if q.startswith("title") else
                             "noun + one word", "given" if q.endswith("_cat") else "none",
                             *cells])  # fmt: skip
    return cols, rows


def _save(results: dict, out: Path) -> None:
    results["summary"] = summarise(results["runs"])
    common.write_results(results, out)


def merge(files: list[Path], out: Path) -> dict:
    """One result file from several (runs de-duplicated by version, model and seed)."""
    parts = [json.loads(Path(f).read_text()) for f in files]
    results = parts[0]
    runs = {run_key(r): r for part in parts for r in part["runs"]}
    results["runs"] = list(runs.values())
    results["merged_from"] = [str(f) for f in files]
    results["load_avg"] = {"start": [max(p["load_avg"]["start"][0] for p in parts)]}
    results["date"] = min(p["date"] for p in parts)
    _save(results, out)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="dataset folder (default: a fresh synthetic catalog, the demo's)",
    )
    parser.add_argument("--outfits", type=int, default=2000, help="synthetic catalog size")
    parser.add_argument("--out", type=Path, default=common.RESULTS / "quality.json")
    parser.add_argument("--versions", default="nondisjoint,disjoint")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=100, help="hybrid epochs")
    parser.add_argument("--sun-epochs", type=int, default=10, help="sun2020 epochs")
    parser.add_argument("--pretrain-epochs", type=int, default=10, help="0 = random towers")
    parser.add_argument(
        "--text-view-weight",
        type=float,
        default=1.0,
        help="clip_pretrain's text/text contrast weight (0 = plain CLIP loss)",
    )
    parser.add_argument("--towers", default=None, help="use this towers file, no pre-training")
    parser.add_argument("--overrides", default="{}", help='JSON, e.g. {"optim.lr": 0.002}')
    parser.add_argument("--features", choices=("towers", "linear"), default="towers",
                        help="linear: diagnostic hand-made features (docstring)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--verbose", action="store_true", help="print every epoch")
    parser.add_argument("--merge", type=Path, nargs="+", help="merge these result files to --out")
    quality_amazon.add_arguments(parser)
    args = parser.parse_args()
    if args.amazon:  # the Sun et al. ablation on Amazon co-purchase pairs (quality_amazon.py)
        quality_amazon.main(args)
        return
    if args.merge:
        results = merge(args.merge, args.out)
        print(common.markdown_table(*table(results)))
        return
    torch.set_num_threads(args.threads)
    workdir = common.RESULTS / "tmp" / "quality"
    workdir.mkdir(parents=True, exist_ok=True)
    args.synthetic = args.data is None
    if args.synthetic:  # one folder per size, kept for re-runs (synth is deterministic)
        catalog_dir = workdir / f"catalog-{args.outfits}"
        if not (catalog_dir / "catalog" / "polyvore_item_metadata.json").is_file():
            common.synth_catalog(None, args.outfits, 64, catalog_dir)
        args.data = catalog_dir / "catalog"
    from outfitter.data import load_catalog

    catalog = load_catalog(args.data)
    results = new_or_resumed(args)
    done = {run_key(r) for r in results["runs"]}
    start = time.perf_counter()
    for seed in (int(s) for s in args.seeds.split(",")):
        for version in args.versions.split(","):
            todo = [m for m in args.models.split(",") if (version, m, seed) not in done]
            for run in run_group(args, version, seed, catalog, workdir, todo) if todo else ():
                results["runs"].append(run)
                _save(results, args.out)  # after every run: a cut-off costs one run at most
    print(f"{time.perf_counter() - start:.0f} s; wrote {args.out}")
    print(common.markdown_table(*table(results)))


def new_or_resumed(args) -> dict:
    """The result file of an earlier run of the same settings (its runs are kept), or a new one."""
    settings = {
        k: v
        for k, v in vars(args).items()
        if k not in ("out", "models", "seeds", "versions", "verbose", "merge")
    }
    if args.out.is_file():
        results = json.loads(args.out.read_text())
        if results.get("settings") == json.loads(json.dumps(settings, default=str)):
            print(f"resuming {args.out}: {len(results['runs'])} runs done", flush=True)
            results["load_avg"]["start"] = common.load_average()
            return results
        print(f"{args.out} holds runs of other settings: starting anew", flush=True)
    results = common.new_results("quality", "cpu", vars(args))
    results["settings"] = json.loads(json.dumps(settings, default=str))
    results["data_note"] = (
        f"synthetic catalog ({args.outfits} outfits, seed 0, 64 px)"
        if args.synthetic
        else str(args.data)
    )
    results["runs"] = []
    return results


if __name__ == "__main__":
    main()
