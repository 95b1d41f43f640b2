"""Id-level PyTorch datasets: samples are item ids, batches index into a per-batch id list.

A collate function returns `ids` (the U unique item ids of the batch, first-seen order) and
LongTensors of positions into it, so the caller encodes each item once per batch, from cached
features or from pixels and tokens (`model.InputBuilder`). Padded positions hold 0 and are
False in `mask`. Per-epoch randomness (negatives, held-out items) is a pure function of
`(seed, epoch, index)`, so it is the same in every DataLoader worker and every run; call
`set_epoch(e)` before each epoch.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence

import torch
from torch.utils.data import Dataset

from outfitter.data.errors import DatasetError
from outfitter.data.types import Catalog, ItemPair, Outfit, Split


def _rng(seed: int, epoch: int, index: int) -> random.Random:
    return random.Random(f"{seed}/{epoch}/{index}")  # str seeds hash the same in every process


def _check_items(outfits: Iterable[Outfit], catalog: Catalog, what: str) -> None:
    unknown = sorted({i for o in outfits for i in o.item_ids if i not in catalog.items})
    if unknown:
        raise DatasetError(
            f"{what}: {len(unknown)} outfit items are not in the catalog, e.g. {unknown[:5]}; "
            "run `outfitter data validate`"
        )


def _by_category(outfits: Iterable[Outfit], catalog: Catalog) -> dict[int, list[str]]:
    pools: dict[int, dict[str, None]] = {}
    for o in outfits:
        for i in o.item_ids:
            pools.setdefault(catalog.items[i].category_index, {})[i] = None
    return {c: list(p) for c, p in pools.items()}


class _EpochDataset(Dataset):
    epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Resample the per-epoch parts (negatives, held-out items) for epoch `epoch`."""
        self.epoch = epoch


class CompatibilityDataset(_EpochDataset):
    """Outfits labelled 1 (compatible) or 0; sample = `{"item_ids": [...], "label": 0|1}`.

    Uses the split's compatibility questions when it has them; otherwise each outfit of >= 2
    items is a positive followed by `negatives_per_positive` negatives: the outfit with 1..n/2
    items swapped for random same-category items of other outfits, resampled every epoch.
    """

    def __init__(
        self, split: Split, catalog: Catalog, *, negatives_per_positive: int = 1, seed: int = 0
    ):
        if negatives_per_positive < 0:
            raise ValueError(f"negatives_per_positive={negatives_per_positive}; must be >= 0")
        self.catalog, self.seed, self.k = catalog, seed, negatives_per_positive
        self.questions = split.compatibility
        self.outfits = [o for o in split.outfits if len(o.item_ids) >= 2]
        if not self.questions:
            _check_items(self.outfits, catalog, f"{split.version}/{split.name}")
            self.pools = _by_category(self.outfits, catalog)
            if not self.outfits:
                raise DatasetError(f"{split.version}/{split.name}: no outfit with >= 2 items")

    def __len__(self) -> int:
        return len(self.questions) or len(self.outfits) * (1 + self.k)

    def __getitem__(self, index: int) -> dict:
        if self.questions:
            q = self.questions[index]
            return {"item_ids": list(q.item_ids), "label": q.label}
        outfit = self.outfits[index // (1 + self.k)]
        items = list(outfit.item_ids)
        if index % (1 + self.k) == 0:
            return {"item_ids": items, "label": 1}
        rng = _rng(self.seed, self.epoch, index)
        for j in rng.sample(range(len(items)), rng.randint(1, max(1, len(items) // 2))):
            pool = self.pools[self.catalog.items[items[j]].category_index]
            for _ in range(8):
                swap = rng.choice(pool)
                if swap not in outfit.item_ids:
                    items[j] = swap
                    break
        return {"item_ids": items, "label": 0}


class RetrievalDataset(_EpochDataset):
    """Complete-the-outfit: one item of an outfit held out as the target.

    sample = `{"item_ids": context ids, "target_id": id, "target_category": int}`; the held-out
    position is random per epoch when `train`, fixed otherwise.
    """

    def __init__(self, split: Split, catalog: Catalog, *, seed: int = 0, train: bool = True):
        self.outfits = [o for o in split.outfits if len(o.item_ids) >= 2]
        _check_items(self.outfits, catalog, f"{split.version}/{split.name}")
        self.catalog, self.seed, self.train = catalog, seed, train

    def __len__(self) -> int:
        return len(self.outfits)

    def __getitem__(self, index: int) -> dict:
        items = list(self.outfits[index].item_ids)
        j = _rng(self.seed, self.epoch if self.train else -1, index).randrange(len(items))
        target = items.pop(j)
        category = self.catalog.items[target].category_index
        return {"item_ids": items, "target_id": target, "target_category": category}


class PairDataset(_EpochDataset):
    """Sun et al. triplets: `{"anchor_id", "positive_id", "negative_id", "weight"}`.

    Positives are compatible pairs (both orientations); the negative is a random catalog item of
    the positive's category not linked to the anchor, resampled every epoch. `weight` is the
    pair's compatibility weight: co-purchase strength for Amazon (`amazon.py`), shared-outfit
    fraction for outfits (`from_split`).
    """

    def __init__(
        self,
        catalog: Catalog,
        pairs: Sequence[ItemPair],
        *,
        seed: int = 0,
        negatives_from_pairs: bool = False,
    ):
        """`negatives_from_pairs`: draw negatives among the pairs' items only (never products
        of other splits, and no shortcut of telling linked items from never-linked ones)."""
        positives = [p for p in pairs if p.label == 1]
        unknown = [i for p in positives for i in (p.a, p.b) if i not in catalog.items]
        if unknown:
            raise DatasetError(
                f"{len(unknown)} pair items are not in the catalog, e.g. {unknown[:5]}"
            )
        if not positives:
            raise DatasetError("no positive pairs: nothing to train the triplet loss on")
        self.pairs = [(p.a, p.b, p.weight) for p in positives] + [
            (p.b, p.a, p.weight) for p in positives
        ]
        self.linked = {(a, b) for a, b, _ in self.pairs}
        self.pools: dict[int, list[str]] = {}
        pool_ids = list(catalog.items)
        if negatives_from_pairs:
            pool_ids = sorted({i for a, b, _ in self.pairs for i in (a, b)})
        for item_id in pool_ids:
            self.pools.setdefault(catalog.items[item_id].category_index, []).append(item_id)
        self.catalog, self.seed = catalog, seed

    @classmethod
    def from_split(cls, split: Split, catalog: Catalog, *, seed: int = 0) -> PairDataset:
        """Cross-category pairs of the split's outfits, or the split's own weighted `pairs`.

        A pair dataset's split (Amazon co-purchase, `amazon_splits`) carries its pairs with their
        co-purchase weights; for outfits, weight(a, b) = (#outfits with both a and b) /
        min(#outfits with a, #outfits with b): 1.0 for items only ever worn together, lower for
        items that also appear apart.
        """
        if split.pairs:
            return cls(catalog, split.pairs, seed=seed, negatives_from_pairs=True)
        _check_items(split.outfits, catalog, f"{split.version}/{split.name}")
        seen = Counter(i for o in split.outfits for i in set(o.item_ids))
        together: Counter = Counter()
        for o in split.outfits:
            items = sorted(set(o.item_ids))
            for x, a in enumerate(items):
                for b in items[x + 1 :]:
                    if catalog.items[a].category != catalog.items[b].category:
                        together[(a, b)] += 1
        pairs = [ItemPair(a, b, 1, n / min(seen[a], seen[b])) for (a, b), n in together.items()]
        return cls(catalog, pairs, seed=seed)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        anchor, positive, weight = self.pairs[index]
        rng = _rng(self.seed, self.epoch, index)
        pool = self.pools[self.catalog.items[positive].category_index]
        negative = rng.choice(pool)
        for _ in range(8):
            if negative != positive and (anchor, negative) not in self.linked:
                break
            negative = rng.choice(pool)
        return {
            "anchor_id": anchor,
            "positive_id": positive,
            "negative_id": negative,
            "weight": weight,
        }


# ---------------------------------------------------------------- collate


class _Ids:
    """Unique ids of a batch in first-seen order, and positions into them."""

    def __init__(self) -> None:
        self.pos: dict[str, int] = {}

    def __call__(self, item_id: str) -> int:
        return self.pos.setdefault(item_id, len(self.pos))

    @property
    def ids(self) -> list[str]:
        return list(self.pos)


def _pad(ids: _Ids, lists: list[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(1, max(len(x) for x in lists))
    items = torch.zeros(len(lists), n, dtype=torch.long)  # (B, N)
    mask = torch.zeros(len(lists), n, dtype=torch.bool)  # (B, N)
    for b, x in enumerate(lists):
        items[b, : len(x)] = torch.tensor([ids(i) for i in x], dtype=torch.long)
        mask[b, : len(x)] = True
    return items, mask


def collate_compatibility(samples: list[dict]) -> dict:
    """-> ids (U), items (B, N), mask (B, N), label (B,) float."""
    ids = _Ids()
    items, mask = _pad(ids, [s["item_ids"] for s in samples])
    label = torch.tensor([float(s["label"]) for s in samples])
    return {"ids": ids.ids, "items": items, "mask": mask, "label": label}


def collate_retrieval(samples: list[dict]) -> dict:
    """-> ids (U, with targets), items/mask (B, N) context, target (B,), target_category (B,)."""
    ids = _Ids()
    items, mask = _pad(ids, [s["item_ids"] for s in samples])
    target = torch.tensor([ids(s["target_id"]) for s in samples], dtype=torch.long)
    category = torch.tensor([s["target_category"] for s in samples], dtype=torch.long)
    return {
        "ids": ids.ids,
        "items": items,
        "mask": mask,
        "target": target,
        "target_category": category,
    }


def collate_pairs(samples: list[dict]) -> dict:
    """-> ids, anchor/positive/negative (B,) positions, weight (B,) float."""
    ids = _Ids()
    out = {
        k: torch.tensor([ids(s[f"{k}_id"]) for s in samples])
        for k in ("anchor", "positive", "negative")
    }
    return {"ids": ids.ids, **out, "weight": torch.tensor([float(s["weight"]) for s in samples])}
