"""Train/valid/test splits of Amazon co-purchase pairs, with fixed negatives and ranking candidates.

The protocol, a function of the metadata file alone (no seed, so every process and every re-run
reads the same splits):

- **Pairs, not products, are split** (`nondisjoint`, the common Amazon protocol of McAuley et al.
  2015 and Sun et al. 2020): each compatible pair goes to train/valid/test (80/10/10) by a hash
  of its two ASINs, so no pair is in two splits; a product may appear in several splits.
- **Products are split** (`disjoint`): each product goes to a split by a hash of its ASIN; a pair
  belongs to the split of its two products and pairs across splits are dropped, so no product of
  valid/test was seen in training.
- Each pair is read as (anchor, complement), the orientation fixed by the pair's hash.
- **Negatives, fixed per split** (valid/test): each positive (a, b) gets one negative (a, c), c a
  random item of b's category, not linked to a by any pair of the file (the paper's setting),
  drawn from the items of the split's pairs (so a model cannot win by telling co-purchased items
  from never-linked ones), seeded by the pair.
- **Ranking questions** (valid/test): the true complement among `RANK_CANDIDATES` items of its
  category (itself and items not linked to the anchor, from the split's items first, topped up
  from the catalog), at a position seeded by the pair.

A split is a `Split` of two-item outfits (anchor, complement), so every outfit model reads it:
`compatibility` holds the positives and their negatives, `fitb` the ranking questions (a blank
after the anchor), `pairs` the positives with their co-purchase weights (the triplet loss's
compatibility weights). Train negatives are resampled every epoch by the datasets.
"""

from __future__ import annotations

import hashlib
import os
import random
from functools import lru_cache
from pathlib import Path

from outfitter.data.amazon import AmazonData, find_metadata, read_amazon
from outfitter.data.types import (
    Catalog,
    CompatibilityQuestion,
    FITBQuestion,
    ItemPair,
    Outfit,
    Split,
)

VERSIONS = ("nondisjoint", "disjoint")
SPLITS = ("train", "valid", "test")
FRACTIONS = {"train": 0.8, "valid": 0.1, "test": 0.1}
RANK_CANDIDATES = 20  # the true complement and 19 same-category items not linked to the anchor


def _unit(key: str) -> float:
    """A stable number in [0, 1) from a string (the same in every process and Python)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _split_of(key: str) -> str:
    u, edge = _unit(key), 0.0
    for name in SPLITS:
        edge += FRACTIONS[name]
        if u < edge:
            return name
    return SPLITS[-1]


def _pair_split(pair: ItemPair, version: str) -> str | None:
    if version == "nondisjoint":
        return _split_of(f"pair/{pair.a}/{pair.b}")
    sa, sb = _split_of(f"item/{pair.a}"), _split_of(f"item/{pair.b}")
    return sa if sa == sb else None  # a pair across product splits belongs to none


def _oriented(pair: ItemPair) -> ItemPair:
    """(anchor, complement): which item is the anchor is fixed by the pair's hash."""
    if _unit(f"side/{pair.a}/{pair.b}") < 0.5:
        return pair
    return ItemPair(pair.b, pair.a, pair.label, pair.weight)


@lru_cache(maxsize=4)
def _read(path: str, mtime_ns: int, size: int) -> AmazonData:
    return read_amazon(path)


def read_cached(root: str | Path) -> AmazonData:
    """`read_amazon` of a folder, read once per process while the file is unchanged."""
    path = find_metadata(Path(root))
    stat = os.stat(path)
    data = _read(str(path), stat.st_mtime_ns, stat.st_size)
    if Path(root).is_dir() and data.catalog.root != Path(root):  # same file, other spelling
        data = AmazonData(
            Catalog(Path(root), data.catalog.items, Path(root) / "images"), data.pairs, data.skipped
        )
    return data


def check_version(version: str, split: str) -> None:
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def split_pairs(positives: list[ItemPair], version: str) -> dict[str, list[ItemPair]]:
    """Oriented positives of each split (module docstring), in file order."""
    out: dict[str, list[ItemPair]] = {name: [] for name in SPLITS}
    for pair in positives:
        name = _pair_split(pair, version)
        if name is not None:
            out[name].append(_oriented(pair))
    return out


def _pools(pairs: list[ItemPair], catalog: Catalog) -> dict[str, list[str]]:
    pools: dict[str, dict[str, None]] = {}
    for p in pairs:
        for i in (p.a, p.b):
            pools.setdefault(catalog.items[i].category, {})[i] = None
    return {c: sorted(p) for c, p in pools.items()}


def _draw(rng: random.Random, pool: list[str], k: int, banned: set[str]) -> list[str]:
    """Up to k distinct items of `pool` not in `banned`, in a seeded order."""
    allowed = [i for i in pool if i not in banned]
    return rng.sample(allowed, min(k, len(allowed)))


def _tasks(
    pairs: list[ItemPair], catalog: Catalog, linked: set[tuple[str, str]], n_candidates: int
) -> tuple[list[CompatibilityQuestion], list[FITBQuestion]]:
    split_pool = _pools(pairs, catalog)
    catalog_pool: dict[str, list[str]] = {}
    for item_id in catalog.item_ids:
        catalog_pool.setdefault(catalog.items[item_id].category, []).append(item_id)
    compatibility, ranking = [], []
    for p in pairs:
        rng = random.Random(f"negatives/{p.a}/{p.b}")
        category = catalog.items[p.b].category
        banned = {p.a, p.b} | {c for c in split_pool[category] if (p.a, c) in linked}
        negative = _draw(rng, split_pool[category], 1, banned)
        compatibility.append(CompatibilityQuestion(1, (p.a, p.b)))
        if negative:
            compatibility.append(CompatibilityQuestion(0, (p.a, negative[0])))
        others = _draw(rng, split_pool[category], n_candidates - 1, banned)
        if len(others) < n_candidates - 1:  # a small split: top up from the whole catalog
            more = [c for c in catalog_pool[category] if (p.a, c) not in linked]
            others += _draw(rng, more, n_candidates - 1 - len(others), banned | set(others))
        if others:
            answers = list(others)
            position = rng.randrange(len(answers) + 1)
            answers.insert(position, p.b)
            ranking.append(FITBQuestion((p.a,), tuple(answers), position, 2))
    return compatibility, ranking


def load_amazon_split(
    root: str | Path,
    version: str,
    split: str,
    catalog: Catalog | None = None,
    *,
    n_candidates: int = RANK_CANDIDATES,
) -> Split:
    """One split of an Amazon folder as two-item outfits (module docstring)."""
    check_version(version, split)
    data = read_cached(root)
    catalog = catalog or data.catalog
    positives = [p for p in data.pairs if p.label == 1]
    pairs = split_pairs(positives, version)[split]
    outfits = [Outfit(f"{p.a}-{p.b}", (p.a, p.b), (1, 2)) for p in pairs]
    compatibility: list[CompatibilityQuestion] = []
    ranking: list[FITBQuestion] = []
    if split != "train":  # train negatives are resampled every epoch by the datasets
        linked = {(p.a, p.b) for p in positives} | {(p.b, p.a) for p in positives}
        compatibility, ranking = _tasks(pairs, catalog, linked, n_candidates)
    return Split(version, split, outfits, compatibility, ranking, pairs)
