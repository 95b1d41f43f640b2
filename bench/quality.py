"""Quality study without Ray: hybrid vs its single-modality ablations vs the Sun et al. baseline.

For each split version: pre-train the tiny CLIP towers on that version's train items
(`clip_pretrain`, the demo's path), embed the catalog once (frozen towers, shared by the three
hybrid configs), train every model with `train_local.fit`, and evaluate on valid and test.
Writes a JSON result and prints a markdown table.

`--features linear` is a diagnostic: the hybrid configs read hand-made features instead of
the tiny towers' (bag of words of `Item.text` and 16 px pixels, each randomly projected to
64-d), features that keep each modality's information linearly. It separates "the model cannot
learn the rules" from "the towers do not encode the attributes".

    .venv/bin/outfitter data synth --out /tmp/synth-default
    .venv/bin/python bench/quality_local.py --data /tmp/synth-default \
        --out bench/results/quality_local.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

MODELS = ("hybrid-tiny", "image-only", "text-only", "sun2020-tiny")
METRICS = ("compatibility_auc", "fitb_accuracy", "fitb_accuracy_compat", "recall_at_10")


def _towers(args, version: str, catalog, workdir: Path):
    from outfitter.model.clip_pretrain import catalog_split_ids, pretrain
    from outfitter.model.config import load_config

    clip = load_config("hybrid-tiny").clip
    if args.towers:
        return args.towers, None
    if args.features == "linear":  # random towers make the category prompts only
        return None, None
    if args.pretrain_epochs <= 0:
        return None, None
    path = workdir / f"towers-{version}.safetensors"
    train_ids, held = catalog_split_ids(args.data, version, catalog)
    report = pretrain(catalog, clip, path, args.pretrain_epochs, train_ids=train_ids,
                      heldout_ids=held, seed=args.seed)  # fmt: skip
    print(f"[{version}] towers pre-trained: {json.dumps(report)}", flush=True)
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


def run_version(args, version: str, catalog, workdir: Path) -> dict:
    from outfitter.data import load_split
    from outfitter.model.config import load_config
    from outfitter.model.evaluate import evaluate
    from outfitter.model.towers import compute_features, create_towers
    from outfitter.model.train_local import fit

    towers_path, pretrain_report = _towers(args, version, catalog, workdir)
    clip_cfg = load_config("hybrid-tiny", {"clip.pretrained": towers_path}).clip
    start = time.perf_counter()
    towers = create_towers(clip_cfg)
    if args.features == "linear":
        features = linear_features(catalog, seed=args.seed)
    else:
        features = compute_features(towers, catalog)
    embed_s = time.perf_counter() - start
    splits = {s: load_split(args.data, version, s, catalog) for s in ("valid", "test")}
    out = {"towers": towers_path, "clip_pretrain": pretrain_report, "embed_seconds": embed_s}
    for name in args.models:
        overrides = {"clip.pretrained": towers_path, **json.loads(args.overrides)}
        cfg = load_config(name, {k: v for k, v in overrides.items() if _applies(name, k)})
        epochs = args.sun_epochs if cfg.kind == "sun2020" else args.epochs
        # fine-tuned towers get their own copy: the frozen ones are shared by the other models
        shared = towers if cfg.input_kind == "features" else None
        log = _epoch_printer(name) if args.verbose else None
        result = fit(cfg, args.data, epochs, version=version, seed=args.seed, catalog=catalog,
                     log=log, features=features, towers=shared)  # fmt: skip
        row = {
            "epochs": epochs,
            "epoch_seconds": sum(h["seconds"] for h in result.history)
            / max(len(result.history), 1),
            "final_losses": {k: v for k, v in result.history[-1].items() if k.endswith("loss")},
        }
        for split_name, split in splits.items():
            row[split_name] = evaluate(result.model, result.builder, split, catalog)
        out[name] = row
        test = row["test"]
        print(f"[{version}] {name}: " + ", ".join(f"{m} {test[m]:.3f}" for m in METRICS)
              + f", {row['epoch_seconds']:.1f} s/epoch", flush=True)  # fmt: skip
    return out


def _epoch_printer(name: str):
    return lambda epoch, row: print(f"  {name} {json.dumps(row)}", flush=True)


def _applies(name: str, key: str) -> bool:
    """Hybrid-only overrides (clip.*) are skipped for the sun2020 baseline."""
    return not (name.startswith("sun2020") and key.startswith(("clip.", "item.", "transformer.")))


def table(results: dict) -> str:
    lines = ["| version | model | AUC | FITB (query) | FITB (compat) | recall@10 | s/epoch |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for version, res in results["versions"].items():
        for name in results["models"]:
            t = res[name]["test"]
            lines.append(
                f"| {version} | {name} | {t['compatibility_auc']:.3f} | {t['fitb_accuracy']:.3f} "
                f"| {t['fitb_accuracy_compat']:.3f} | {t['recall_at_10']:.3f} "
                f"| {res[name]['epoch_seconds']:.1f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("bench/results/quality_local.json"))
    parser.add_argument("--versions", default="nondisjoint,disjoint")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--epochs", type=int, default=30, help="hybrid epochs")
    parser.add_argument("--sun-epochs", type=int, default=10, help="sun2020 epochs")
    parser.add_argument("--pretrain-epochs", type=int, default=10, help="0 = random towers")
    parser.add_argument("--towers", default=None, help="use this towers file, no pre-training")
    parser.add_argument("--overrides", default="{}", help='JSON, e.g. {"optim.lr": 0.002}')
    parser.add_argument("--features", choices=("towers", "linear"), default="towers",
                        help="linear: diagnostic hand-made features (docstring)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="print every epoch")
    args = parser.parse_args()
    args.models = args.models.split(",")
    torch.set_num_threads(args.threads)

    from outfitter.data import load_catalog

    catalog = load_catalog(args.data)
    workdir = args.out.parent / "quality_local_towers"
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = {"data": str(args.data), "models": args.models, "args": vars(args), "versions": {}}
    for version in args.versions.split(","):
        results["versions"][version] = run_version(args, version, catalog, workdir)
    results["seconds"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    print(table(results))


if __name__ == "__main__":
    main()
