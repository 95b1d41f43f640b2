"""Contrastive pre-training of CLIP towers on a catalog's image/text pairs (open_clip ClipLoss).

So the demo's tiny towers start from features that mean something for this catalog instead of
random ones. Trains on the items of the train split, reports image->text and text->image
recall@1 on held-out items (items of no train outfit), and saves an open_clip state dict as
safetensors, loadable with `clip.pretrained=<file>` (`open_clip.create_model_and_transforms`).

Image/text contrast alone teaches the text tower only what the image shows: words the picture
cannot confirm (style, material, occasion) carry no gradient and fade from the text features.
A large CLIP keeps them because its text side has seen the web; a tiny one trained on one
catalog does not. So the text tower also learns a text/text contrast between two word-dropped
views of each item's text (SimCSE-style, Gao et al. 2021): telling items apart by their text
needs every word, including the ones no image shows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from outfitter.model.config import ClipCfg
from outfitter.model.task import adamw
from outfitter.model.towers import Towers, create_towers


def _texts(catalog, ids: Sequence[str], text_field: str) -> list[str]:
    if text_field not in ("title", "text"):
        raise ValueError(f"text_field={text_field!r}: must be title or text")
    return [getattr(catalog.items[i], text_field) for i in ids]


def word_dropout(texts: Sequence[str], p: float, rng: np.random.Generator) -> list[str]:
    """Each text with every word dropped with probability `p` (at least one word kept)."""
    out = []
    for text in texts:
        words = text.split()
        kept = [w for w in words if rng.random() >= p]
        out.append(" ".join(kept) if kept or not words else words[rng.integers(len(words))])
    return out


def text_view_loss(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between two views (N, D) of the same N texts, L2-normalised."""
    logits = a @ b.T / temperature  # (N, N)
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


PRELOAD_BYTES = 1 << 30  # preprocessed train images held in memory up to this size
MAX_HELDOUT = 2000  # held-out items recall is measured on (a seeded sample above this)


def _pixels(towers: Towers, catalog, ids: Sequence[str]) -> torch.Tensor:
    """Preprocessed images (N, 3, H, W), kept in float16 to halve the memory."""
    paths = [catalog.image_path(i) for i in ids]
    chunks = [towers.load_pixels(paths[i : i + 256]).half() for i in range(0, len(paths), 256)]
    return torch.cat(chunks) if chunks else torch.zeros(0, 3, towers.image_size, towers.image_size)


class _TrainPixels:
    """The train items' images by row: decoded once and held in memory when they fit in
    `PRELOAD_BYTES` (the demo's catalog: every epoch reuses them), else decoded per batch (a
    Polyvore-size catalog: 150k items at 224 px would be 45 GB in float16)."""

    def __init__(self, towers: Towers, catalog, ids: Sequence[str]):
        self.towers, self.catalog, self.ids = towers, catalog, list(ids)
        side = towers.image_size
        self.held = None
        if len(self.ids) * 3 * side * side * 2 <= PRELOAD_BYTES:
            self.held = _pixels(towers, catalog, self.ids)

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        if self.held is not None:
            return self.held[rows]
        return _pixels(self.towers, self.catalog, [self.ids[r] for r in rows.tolist()])


@torch.no_grad()
def retrieval_recall(towers: Towers, pixels: torch.Tensor, tokens: torch.Tensor) -> dict:
    """Image->text and text->image recall@1 among N paired items (chance = 1/N)."""
    towers.model.eval()
    image = torch.cat(
        [towers.encode_pixels(pixels[i : i + 256].float()) for i in range(0, len(pixels), 256)]
    )
    text = torch.cat(
        [towers.encode_tokens(tokens[i : i + 256]) for i in range(0, len(tokens), 256)]
    )
    sims = image @ text.T  # (N, N)
    target = torch.arange(len(sims), device=sims.device)
    return {
        "image_to_text_r1": float((sims.argmax(1) == target).float().mean()),
        "text_to_image_r1": float((sims.argmax(0) == target).float().mean()),
        "chance_r1": 1.0 / max(len(sims), 1),
        "n_heldout": len(sims),
    }


def pretrain(
    catalog,
    cfg: ClipCfg,
    out_path: str | Path,
    epochs: int = 10,
    *,
    train_ids: Sequence[str] | None = None,
    heldout_ids: Sequence[str] | None = None,
    batch_size: int = 128,
    lr: float = 1e-3,
    text_field: str = "text",
    text_view_weight: float = 1.0,
    word_drop: float = 0.3,
    text_view_temperature: float = 0.05,
    seed: int = 0,
    max_steps: int = 0,
    progress: Callable[[int, int, dict], None] | None = None,
) -> dict:
    """Train the towers of `cfg` contrastively and save them to `out_path` (.safetensors).

    Args:
        train_ids / heldout_ids: items to train on / to measure recall on (default: a seeded
            90/10 split of the catalog; with no held-out items, 10% of `train_ids` held out).
        progress: callable(step, total_steps, info) for progress bars.

    Returns:
        Recall@1 both ways on the held-out items (before and after), loss and timing.
    """
    from open_clip.loss import ClipLoss
    from safetensors.torch import save_file

    if text_view_weight < 0 or not 0 <= word_drop < 1:
        raise ValueError(
            f"text_view_weight={text_view_weight}, word_drop={word_drop}: the weight must be >= 0 "
            "and the share of dropped words in [0, 1)"
        )
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    # None given, or every item trains (an Amazon nondisjoint split): recall is measured on a
    # seeded 10% of the pool held out
    if train_ids is None or not heldout_ids:
        pool = catalog.item_ids if train_ids is None else list(train_ids)
        ids = np.array(pool)[rng.permutation(len(pool))]
        n_held = max(1, len(ids) // 10)
        heldout_ids, train_ids = list(ids[:n_held]), list(ids[n_held:])
    if max_steps < 0:
        raise ValueError(f"max_steps={max_steps}: must be >= 0 (0 = full epochs)")
    if len(heldout_ids) > MAX_HELDOUT:  # recall among 2k items, not an (N, N) matrix of 50k
        sample = np.random.default_rng([seed, 1])  # its own stream: training stays the same
        keep = np.sort(sample.permutation(len(heldout_ids))[:MAX_HELDOUT])
        heldout_ids = [heldout_ids[i] for i in keep]
    towers = create_towers(cfg)
    pixels = _TrainPixels(towers, catalog, train_ids)  # rows -> (B, 3, H, W)
    texts = _texts(catalog, train_ids, text_field)
    tokens = towers.tokenize(texts)  # (N, L)
    held_pixels = _pixels(towers, catalog, heldout_ids)
    held_tokens = towers.tokenize(_texts(catalog, heldout_ids, text_field))
    before = retrieval_recall(towers, held_pixels, held_tokens)

    model, loss_fn = towers.model, ClipLoss()
    for p in model.parameters():
        p.requires_grad_(True)
    optimizer = adamw(model.parameters(), lr=lr, weight_decay=0.1)
    steps_per_epoch = math.ceil(len(train_ids) / batch_size)
    total = max(1, epochs * steps_per_epoch)
    total = min(total, max_steps) if max_steps else total
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=total, pct_start=0.1)
    start, step, loss = time.perf_counter(), 0, float("nan")
    for _ in range(epochs):
        model.train()
        for rows in torch.randperm(len(train_ids)).split(batch_size)[: total - step]:
            if len(rows) < 2:
                continue
            image = F.normalize(model.encode_image(pixels[rows].float()), dim=-1)
            text = F.normalize(model.encode_text(tokens[rows]), dim=-1)
            value = loss_fn(image, text, model.logit_scale.exp())
            if text_view_weight > 0:
                batch_texts = [texts[r] for r in rows.tolist()]
                views = [
                    towers.tokenize(word_dropout(batch_texts, word_drop, rng)) for _ in range(2)
                ]  # 2 x (B, L)
                a, b = (F.normalize(model.encode_text(v), dim=-1) for v in views)
                value = value + text_view_weight * text_view_loss(a, b, text_view_temperature)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            step, loss = step + 1, float(value.detach())
            if progress is not None:
                progress(step, total, {"loss": loss})
    after = retrieval_recall(towers, held_pixels, held_tokens)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(out_path))
    return {
        **after,
        "before": before,
        "final_loss": loss,
        "epochs": epochs,
        "steps": step,
        "n_train": len(train_ids),
        "seconds": time.perf_counter() - start,
        "path": str(out_path),
    }


def catalog_split_ids(data_dir: str | Path, version: str = "nondisjoint", catalog=None):
    """(train_ids, heldout_ids): items of the version's train outfits, and all other items."""
    from outfitter.data import load_catalog, load_split

    catalog = catalog or load_catalog(Path(data_dir))
    train = load_split(Path(data_dir), version, "train", catalog)
    train_ids = train.item_ids
    seen = set(train_ids)
    return train_ids, [i for i in catalog.item_ids if i not in seen]
