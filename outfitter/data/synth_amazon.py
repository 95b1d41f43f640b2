"""The synthetic catalog in the Amazon co-purchase format (McAuley et al., SIGIR 2015).

One JSON object per line in `meta_Clothing_Shoes_and_Jewelry.json` (`asin`, `title`,
`description`, `categories` as nested lists, `related` with `bought_together`, `also_bought`,
`also_viewed`, an ignored `imUrl`) and `images/<asin>.jpg`. Co-purchases follow the same rules
as the Polyvore outfits: `bought_together` links the items of one outfit, `also_bought` items of
other categories from outfits of the same style and colour family (with a little noise), and
`also_viewed` same-category look-alikes. A few items sit in a non-fashion category, as in the
real dump, for the loader to skip.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from outfitter.data.synth_world import NOUNS
from outfitter.data.types import CATEGORIES

AMAZON_FILE = "meta_Clothing_Shoes_and_Jewelry.json"
ROOT_CATEGORY = "Clothing, Shoes & Jewelry"
DEPARTMENTS = {
    "tops": "Clothing",
    "bottoms": "Clothing",
    "all-body": "Clothing",
    "outerwear": "Clothing",
    "shoes": "Shoes",
    "bags": "Handbags & Wallets",
    "jewellery": "Jewelry",
    "hats": "Accessories",
    "scarves": "Accessories",
    "sunglasses": "Accessories",
    "accessories": "Accessories",
}
LINK_NOISE = 0.07  # also_bought links to a random item


def asin(item_id: str) -> str:
    """A 10-character ASIN-like id derived from the item id."""
    return f"B{int(item_id):09d}"[:10]


def _related(world, rng: np.random.Generator) -> list[dict]:
    t, outfits = world.table, world.outfits
    n = len(t)
    by_look: dict[tuple[int, int], list[int]] = {}
    item_outfits: dict[int, list[int]] = {}
    for k, o in enumerate(outfits):
        by_look.setdefault((o.style, o.family), []).append(k)
        for i in o.items:
            item_outfits.setdefault(i, []).append(k)
    by_cat_style: dict[tuple[int, int], list[int]] = {}
    for i in range(n):
        by_cat_style.setdefault((t.category[i], t.style[i]), []).append(i)
    related = []
    for i in range(n):
        k = item_outfits[i][0]
        o = outfits[k]
        together = [j for j in o.items if j != i][:3]
        looks = by_look[(o.style, o.family)]
        also = []
        for kk in rng.integers(len(looks), size=6):
            cands = [
                j
                for j in outfits[looks[kk]].items
                if t.category[j] != t.category[i] and j not in together
            ]
            if cands:
                also.append(cands[int(rng.integers(len(cands)))])
        if rng.random() < LINK_NOISE:
            also.append(int(rng.integers(n)))
        twins = by_cat_style[(t.category[i], t.style[i])]
        viewed = [twins[int(x)] for x in rng.integers(len(twins), size=4) if twins[int(x)] != i]
        ids = world.item_ids
        related.append(
            {
                "also_bought": [asin(ids[j]) for j in dict.fromkeys(also)],
                "bought_together": [asin(ids[j]) for j in together],
                "also_viewed": [asin(ids[j]) for j in dict.fromkeys(viewed)],
            }
        )
    return related


def write_amazon(out: Path, world, rng: np.random.Generator) -> list[str]:
    """Write the metadata file; returns the image names (ASINs) in item-table order."""
    t = world.table
    related = _related(world, rng)
    names = [asin(i) for i in world.item_ids]
    with open(out / AMAZON_FILE, "w", encoding="utf-8") as f:
        for i, name in enumerate(names):
            cat = CATEGORIES[t.category[i]]
            text = world.texts[i]
            row = {
                "asin": name,
                "title": text.title,
                "description": text.description,
                "price": round(float(10 + 90 * rng.random()), 2),
                "imUrl": f"http://ecx.images-amazon.com/images/I/{name}.jpg",
                "related": related[i],
                "categories": [
                    [ROOT_CATEGORY, "Women", DEPARTMENTS[cat], NOUNS[cat][text.noun][1]]
                ],
            }
            f.write(json.dumps(row) + "\n")
        for k in range(max(1, len(names) // 100)):  # non-fashion items the loader skips
            row = {
                "asin": f"C{k:09d}",
                "title": "Pirate costume party kit",
                "categories": [[ROOT_CATEGORY, "Novelty & More", "Costumes"]],
                "related": {},
            }
            f.write(json.dumps(row) + "\n")
    return names
