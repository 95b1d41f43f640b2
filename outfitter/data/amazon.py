"""Amazon co-purchase data (McAuley et al. 2015) for the Sun et al. baseline.

One record per line: `asin`, `title`, `description`, `categories` (nested lists, store root
first), `related` (`also_bought`, `bought_together`, `also_viewed`); images are `images/<asin>.jpg`
(`imUrl` is ignored). The 2014 dump writes Python literals (single quotes), not JSON: such lines
are parsed with `ast.literal_eval` (never `eval`); `.gz` files are read as is.

Items map to the 11 Polyvore categories by the words of their category names (head noun first,
leaf category first); items that map to none are skipped and counted. Compatible pairs are the
cross-category `bought_together` / `also_bought` links between kept items, with a weight:

    weight = 1.0 for bought_together, 0.5 for also_bought, +0.25 when the link is reciprocal
    (listed by both items), capped at 1.0

(co-purchase strength: bought together in one basket says more than bought by the same people).
Negatives pair the anchor with a random item of the positive's category that it is not linked to.
"""

from __future__ import annotations

import ast
import gzip
import json
import random
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from outfitter.data.errors import DatasetError
from outfitter.data.polyvore import id_problem
from outfitter.data.types import Catalog, Item, ItemPair

MAX_LINE_CHARS = 1 << 20  # one product record; the 2014/2018 dumps stay far below
LINK_WEIGHTS = {"bought_together": 1.0, "also_bought": 0.5}
RECIPROCAL_BONUS = 0.25
_STEMS = {
    "tops": "top tee shirt blouse sweater hoodie sweatshirt tank tunic polo cami camisole cardigan "
    "pullover henley",
    "bottoms": "pant jean trouser short skirt legging capri jogger chino",
    "all-body": "dress jumpsuit romper overall gown",
    "outerwear": "coat jacket blazer parka vest poncho windbreaker outerwear",
    "shoes": "shoe boot sneaker sandal pump heel loafer flat slipper oxford mule clog wedge",
    "bags": "bag handbag tote clutch backpack purse wallet satchel crossbody",
    "hats": "hat cap beanie beret fedora",
    "jewellery": "jewelry jewellery necklace earring bracelet ring pendant anklet brooch",
    "scarves": "scarf scarves wrap shawl",
    "sunglasses": "sunglass sunglasses eyewear",
    "accessories": "belt watch glove accessory accessories keychain tie",
}
KEYWORDS: dict[str, str] = {
    form: cat
    for cat, stems in _STEMS.items()
    for stem in stems.split()
    for form in (stem, stem + "s", stem + "es")
}


@dataclass
class AmazonData:
    catalog: Catalog
    pairs: list[ItemPair]  # positives, then negatives
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> asins


def semantic_category(categories) -> tuple[str, str] | None:
    """(semantic category, leaf name) of the first category path that maps, leaf first."""
    for path in categories if isinstance(categories, list) else []:
        names = [str(n) for n in path] if isinstance(path, list) else [str(path)]
        for name in reversed(names[1:]):  # names[0] is the store ("Clothing, Shoes & Jewelry")
            for word in reversed(re.findall(r"[a-z]+", name.lower())):  # head noun first
                if word in KEYWORDS:
                    return KEYWORDS[word], name
    return None


def find_metadata(root: Path) -> Path:
    if root.is_file():
        return root
    found = sorted(
        p
        for pattern in ("meta*.json", "meta*.json.gz", "*.jsonl", "*.jsonl.gz")
        for p in root.glob(pattern)
    )
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise DatasetError(
            f"{root}: found {what} metadata files (meta*.json[.gz], *.jsonl[.gz]); expected one"
        )
    return found[0]


def read_records(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) of a JSON-lines or Python-literal-lines file, gzip or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            # streamed, and one line at most MAX_LINE_CHARS: a one-line gzip is never read whole
            for lineno, line in enumerate(iter(lambda: f.readline(MAX_LINE_CHARS + 1), ""), 1):
                if len(line) > MAX_LINE_CHARS:
                    raise DatasetError(
                        f"{path}:{lineno}: line longer than {MAX_LINE_CHARS:,} characters; "
                        "one record per line expected"
                    )
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except (ValueError, RecursionError):  # huge ints and deep nesting included
                    try:
                        record = ast.literal_eval(line)  # the 2014 dump: Python dict literals
                    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                        raise DatasetError(
                            f"{path}:{lineno}: neither JSON nor a Python literal: {line[:80]!r}"
                        ) from None
                if not isinstance(record, dict) or "asin" not in record:
                    raise DatasetError(f"{path}:{lineno}: expected an object with an `asin`")
                _check_types(record, f"{path}:{lineno}")
                yield lineno, record
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as e:
        raise DatasetError(
            f"{path}: cannot read ({type(e).__name__}: {e}); truncated or corrupt?"
        ) from None


def _check_types(record: dict, where: str) -> None:
    """The fields the reader relies on have the dump's types (a wrong one names file and line)."""
    asin = record["asin"]
    if not isinstance(asin, str) or id_problem(asin):
        why = id_problem(asin) if isinstance(asin, str) else "not a string"
        raise DatasetError(f"{where}: `asin` {asin!r:.60} is not a usable item id ({why})")
    related = record.get("related")
    if related is not None and not isinstance(related, dict):
        raise DatasetError(f"{where}: `related` must be an object, got {type(related).__name__}")
    for kind in LINK_WEIGHTS:
        links = (related or {}).get(kind)
        if links is not None and not (
            isinstance(links, list) and all(isinstance(x, str) for x in links)
        ):
            raise DatasetError(
                f"{where}: `related.{kind}` must be a list of asins, got {links!r:.60}"
            )
    for key in ("title", "description"):
        value = record.get(key)
        if value is not None and not isinstance(value, (str, list, int, float)):
            raise DatasetError(f"{where}: `{key}` must be text, got {type(value).__name__}")


def _item(record: dict) -> tuple[Item | None, str]:
    mapped = semantic_category(record.get("categories"))
    if mapped is None:
        return None, "no fashion category"
    category, leaf = mapped
    description = record.get("description") or ""
    if isinstance(description, list):
        description = " ".join(map(str, description))
    title = str(record.get("title") or "").strip() or leaf  # many 2014 records have no title
    item = Item(str(record["asin"]), title, str(description).strip(), category, "", leaf)
    return item, ""


def _positives(records: dict[str, dict], items: dict[str, Item]) -> list[ItemPair]:
    weights: dict[tuple[str, str], float] = {}
    directed: set[tuple[str, str]] = set()
    for asin, record in records.items():
        related = record.get("related") or {}
        for kind, w in LINK_WEIGHTS.items():
            for other in related.get(kind) or ():
                if other not in items or items[other].category == items[asin].category:
                    continue  # unknown, or same category: not an outfit pair
                key = (asin, other) if asin < other else (other, asin)
                weights[key] = max(weights.get(key, 0.0), w)
                directed.add((asin, other))
    return [
        ItemPair(
            a,
            b,
            1,
            min(1.0, w + (RECIPROCAL_BONUS if (a, b) in directed and (b, a) in directed else 0)),
        )
        for (a, b), w in weights.items()
    ]


def read_amazon(root: str | Path, *, negatives_per_positive: int = 1, seed: int = 0) -> AmazonData:
    """Catalog, weighted positive pairs and sampled negatives of a McAuley metadata file."""
    root = Path(root)
    path = find_metadata(root)
    items: dict[str, Item] = {}
    records: dict[str, dict] = {}
    skipped: dict[str, list[str]] = {}
    for lineno, record in read_records(path):
        item, reason = _item(record)
        if item is None:
            skipped.setdefault(reason, []).append(str(record["asin"]))
            continue
        if item.item_id in items:
            raise DatasetError(f"{path}:{lineno}: asin {item.item_id} appears more than once")
        items[item.item_id] = item
        records[item.item_id] = record
    if not items:
        n_skipped = sum(map(len, skipped.values()))
        raise DatasetError(f"{path}: no item maps to a fashion category ({n_skipped} skipped)")
    positives = _positives(records, items)
    by_cat: dict[str, list[str]] = {}
    for item in items.values():
        by_cat.setdefault(item.category, []).append(item.item_id)
    linked = {(p.a, p.b) for p in positives} | {(p.b, p.a) for p in positives}
    rng = random.Random(seed)
    negatives = []
    for p in positives:
        pool = by_cat[items[p.b].category]
        for _ in range(negatives_per_positive):
            for _try in range(10):
                c = rng.choice(pool)
                if c != p.b and (p.a, c) not in linked:
                    negatives.append(ItemPair(p.a, c, 0, 1.0))
                    break
    folder = path.parent if root.is_file() else root
    catalog = Catalog(root=folder, items=items, image_dir=folder / "images")
    return AmazonData(catalog, positives + negatives, skipped)


def load_amazon(root: str | Path, **kwargs) -> tuple[Catalog, list[ItemPair]]:
    """`(catalog, pairs)` of `read_amazon` (which also reports the skipped items)."""
    data = read_amazon(root, **kwargs)
    return data.catalog, data.pairs
