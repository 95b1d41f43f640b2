"""A small plain-PyTorch training loop (one process, no Ray) for tests, benchmarks and debugging.

The Ray Train loop (`outfitter.platform.train.loop`) reuses the same pieces: `make_datasets` (which
samples a model kind trains on), `InputBuilder`, `OutfitTask`, `make_optimizer`; so what the
benchmarks measure with this loop is what the platform trains.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from outfitter.model.config import ModelConfig
from outfitter.model.factory import build_model, build_vocab
from outfitter.model.inputs import InputBuilder
from outfitter.model.task import OutfitTask, make_datasets, make_optimizer, train_step


@dataclass
class FitResult:
    model: torch.nn.Module
    cfg: ModelConfig
    builder: InputBuilder
    history: list[dict] = field(default_factory=list)  # per epoch: mean losses + seconds


def fit(
    cfg: ModelConfig,
    data_dir: str | Path,
    epochs: int | None = None,
    *,
    version: str = "nondisjoint",
    seed: int = 0,
    features=None,
    towers=None,
    catalog=None,
    log=None,
) -> FitResult:
    """Train `cfg` on the train split of `data_dir` and return the model and its builder.

    Args:
        features / towers: reuse cached features or built towers (features are computed once
            with the frozen towers otherwise).
        log: optional callable(epoch, metrics dict) called after each epoch.
    """
    from outfitter.data import load_catalog, load_split

    torch.manual_seed(seed)
    catalog = catalog or load_catalog(Path(data_dir))
    train = load_split(Path(data_dir), version, "train", catalog)
    vocab = build_vocab(cfg, catalog, train.item_ids) if cfg.kind == "sun2020" else None
    model = build_model(cfg, vocab=vocab, towers=towers if cfg.input_kind == "raw" else None)
    builder = InputBuilder.for_model(model, catalog, features, towers, seed=seed)
    builder.set_negative_pool(train.item_ids)
    task, optimizer = OutfitTask(model, cfg), make_optimizer(cfg, model)
    datasets = make_datasets(cfg, train, catalog, seed=seed)
    if cfg.kind == "hybrid" and (cfg.clip.freeze_image or cfg.clip.freeze_text):
        _ = builder.features  # compute (once) before timing the epochs
    result = FitResult(model, cfg, builder)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(cfg.optim.epochs if epochs is None else epochs):
        start, sums, steps = time.perf_counter(), {}, 0
        loaders = {}
        for name, (dataset, collate, bs) in datasets.items():
            dataset.set_epoch(epoch)
            loaders[name] = DataLoader(
                dataset, batch_size=bs, shuffle=True, collate_fn=collate, generator=generator
            )
        first, *others = loaders
        iters = {n: itertools.cycle(loaders[n]) for n in others}
        for batch in loaders[first]:
            batches = {first: batch, **{n: next(it) for n, it in iters.items()}}
            losses = train_step(task, optimizer, builder(batches, train=True))
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            steps += 1
        row = {"epoch": epoch, **{k: v / max(steps, 1) for k, v in sums.items()}}
        row["seconds"] = time.perf_counter() - start
        result.history.append(row)
        if log is not None:
            log(epoch, row)
    model.eval()
    return result
