"""Retrieval from descriptions, through `/v1/retrieve`, beside a keyword search: issue 14's check.

On a fresh synthetic catalog (a seed that no other benchmark or test uses): pre-train the tiny
towers (`clip_pretrain`, the demo's path), train hybrid-tiny (`train_local.fit`, the same task
and builder as Ray Train), save the checkpoint and its faiss index, and load it the way a Serve
replica does (`serve.core.load_state`) behind the serving app (`create_app`, requests through
FastAPI's TestClient: the real routes, schemas and JSON). Then, for each test outfit, hide one
item (a seeded choice) and ask `/v1/retrieve` for it with the rest as the outfit and a
description typed as a user would:

- `title`: the hidden item's own title; `short`: its last word (the noun) and one other word;
- with no category (the user's usual request) and with the category given.

Reported per query set: recall@10 of the hidden item over the whole catalog, the share of the top
10 in its category, and the same for a TF-IDF keyword search over titles (`model.keyword`, the
outfit ignored) on the same queries; and the model's test AUC / FITB (`model.evaluate`).

    .venv/bin/python bench/retrieval.py                      # seed 7, 2000 outfits (~15 min)
    .venv/bin/python bench/retrieval.py --seed 11 --epochs 30 --out /tmp/r.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import common
import numpy as np
import torch

QUERY_SETS = ("title", "short", "title_cat", "short_cat")
COMMAND = ".venv/bin/python bench/retrieval.py"


def _train(args, data: Path, workdir: Path):
    from outfitter.data import load_catalog
    from outfitter.model.clip_pretrain import catalog_split_ids, pretrain
    from outfitter.model.config import load_config
    from outfitter.model.towers import compute_features, create_towers
    from outfitter.model.train_local import fit

    catalog = load_catalog(data)
    towers_path = workdir / "towers.safetensors"
    if not towers_path.is_file():
        train_ids, held = catalog_split_ids(data, "nondisjoint", catalog)
        pretrain(catalog, load_config("hybrid-tiny").clip, towers_path, args.pretrain_epochs,
                 train_ids=train_ids, heldout_ids=held, seed=args.seed)  # fmt: skip
    cfg = load_config("hybrid-tiny", {"clip.pretrained": str(towers_path),
                                      **json.loads(args.overrides)})  # fmt: skip
    towers = create_towers(cfg.clip)
    features = compute_features(towers, catalog)
    start = time.perf_counter()
    result = fit(cfg, data, args.epochs, seed=args.seed, catalog=catalog, features=features,
                 towers=towers)  # fmt: skip
    return catalog, result, time.perf_counter() - start


def _serve(result, data: Path, catalog, workdir: Path):
    from fastapi.testclient import TestClient

    from outfitter.model.checkpoint import save_checkpoint
    from outfitter.platform.index import build_index
    from outfitter.platform.serve.app import create_app
    from outfitter.platform.serve.core import LocalBackend, load_state
    from outfitter.platform.serve.service import CatalogService

    folder = workdir / "checkpoint"
    save_checkpoint(folder, result.model, result.cfg, {"bench": "retrieval"},
                    towers=result.builder.towers)  # fmt: skip
    build_index(result.model, result.builder).save(folder / "index")
    state = load_state(str(folder), data, device="cpu", catalog=catalog)
    app = create_app(CatalogService(catalog, LocalBackend(state)), static_dir=None)
    return TestClient(app, raise_server_exceptions=False)


def measure(client, catalog, held, k: int = 10, seed: int = 0) -> dict:
    """Per query set: the model through `/v1/retrieve` and the keyword search, same queries."""
    from outfitter.model.evaluate import short_description
    from outfitter.model.keyword import KeywordSearch

    ids = catalog.item_ids
    keyword = KeywordSearch([catalog.items[i].title for i in ids])
    rng = np.random.default_rng(seed)
    titles = [catalog.items[t].title for _, t in held]
    texts = {"title": titles, "short": [short_description(t, rng) for t in titles]}
    out = {}
    for name in QUERY_SETS:
        base, with_cat = name.split("_")[0], name.endswith("_cat")
        hits = {"model": [], "keyword": []}
        share = {"model": [], "keyword": []}
        inferred_right, seconds = [], 0.0
        kw_scores = keyword.scores(texts[base])  # (Q, M)
        for q, ((context, target), text) in enumerate(zip(held, texts[base], strict=True)):
            item = catalog.items[target]
            body = {"items": [{"item_id": i} for i in context], "target": {"description": text},
                    "k": k}  # fmt: skip
            if with_cat:
                body["target"]["category"] = item.category
            start = time.perf_counter()
            r = client.post("/v1/retrieve", json=body)
            seconds += time.perf_counter() - start
            if r.status_code != 200:
                raise SystemExit(f"/v1/retrieve answered {r.status_code}: {r.text[:300]}")
            answer = r.json()
            got = [h["item_id"] for h in answer["items"]]
            hits["model"].append(target in got)
            share["model"].append(
                np.mean([h["category"] == item.category for h in answer["items"]])
            )
            if not with_cat:
                inferred_right.append(answer["category"]["name"] == item.category)
            scores = kw_scores[q].copy()
            allowed = np.array([(not with_cat) or catalog.items[i].category == item.category
                                for i in ids])  # fmt: skip
            allowed[[ids.index(i) for i in context]] = False
            scores[~allowed] = -np.inf
            top = np.argsort(-scores, kind="stable")[:k]
            hits["keyword"].append(target in {ids[j] for j in top})
            share["keyword"].append(np.mean([catalog.items[ids[j]].category == item.category
                                             for j in top]))  # fmt: skip
        out[name] = {
            "queries": len(held),
            "model_recall_at_10": float(np.mean(hits["model"])),
            "model_in_category": float(np.mean(share["model"])),
            "keyword_recall_at_10": float(np.mean(hits["keyword"])),
            "keyword_in_category": float(np.mean(share["keyword"])),
            "category_inferred_right": float(np.mean(inferred_right)) if inferred_right else None,
            "ms_per_request": 1000 * seconds / len(held),
            "example": {"description": texts[base][0]},
        }
        print(f"{name}: " + json.dumps({k_: v for k_, v in out[name].items() if k_ != "example"}),
              flush=True)  # fmt: skip
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=7, help="catalog + training seed (unused elsewhere)")
    p.add_argument("--outfits", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=100, help="hybrid-tiny epochs (as bench/quality)")
    p.add_argument("--pretrain-epochs", type=int, default=10)
    p.add_argument("--overrides", default="{}", help="JSON model overrides")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--out", type=Path, default=common.RESULTS / "retrieval.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = common.new_results("retrieval", "cpu", vars(args))
    workdir = common.RESULTS / "tmp" / f"retrieval-s{args.seed}-{args.outfits}"
    data = workdir / "catalog"
    if not (data / "polyvore_item_metadata.json").is_file():
        common.synth_catalog(None, args.outfits, 64, workdir, seed=args.seed)

    from outfitter.data import load_split
    from outfitter.model.evaluate import evaluate, holdouts

    catalog, result, train_s = _train(args, data, workdir)
    test = load_split(data, "nondisjoint", "test", catalog)
    quality = evaluate(result.model, result.builder, test, catalog)
    client = _serve(result, data, catalog, workdir)
    results["train_seconds"] = round(train_s, 1)
    results["test"] = quality  # model.evaluate in-process: the API figures should agree
    results["through_api"] = measure(client, catalog, holdouts(test, args.seed))
    results["data_note"] = f"synthetic catalog ({args.outfits} outfits, seed {args.seed}, 64 px)"
    print(f"wrote {common.write_results(results, args.out)}")
    print(common.markdown_table(*table(results)))


def table(results: dict) -> tuple[list[str], list[list[str]]]:
    cols = ["description", "category", "model recall@10", "keyword recall@10", "model ÷ keyword",
            "model in category", "keyword in category", "category inferred right"]  # fmt: skip
    rows = []
    for name in QUERY_SETS:
        r = results["through_api"][name]
        ratio = r["model_recall_at_10"] / max(r["keyword_recall_at_10"], 1e-9)
        inferred = r["category_inferred_right"]
        rows.append([
            {"title": "full title", "short": "noun + one word"}[name.split("_")[0]],
            "given" if name.endswith("_cat") else "none (inferred)",
            f"{r['model_recall_at_10']:.3f}", f"{r['keyword_recall_at_10']:.3f}", f"{ratio:.2f}×",
            f"{r['model_in_category']:.3f}", f"{r['keyword_in_category']:.3f}",
            "—" if inferred is None else f"{inferred:.3f}",
        ])  # fmt: skip
    return cols, rows


if __name__ == "__main__":
    main()
