"""Outfits of the synthetic catalog, their splits, and the two tasks built to be hard.

Positive outfits obey the rules of `synth_world` (one style, one colour family plus neutrals,
at most one patterned item), except a `NOISE` share that breaks one rule: label noise, so no model
scores perfectly. Negatives of the compatibility task are mostly *hard*: the outfit with one item
swapped for a same-category item that breaks exactly one rule (colour, style or pattern), plus
Polyvore-style random mixes. FITB questions offer three wrong answers of the right answer's
category that each clash with the rest of the outfit. Items are reused between outfits only
inside one disjoint group, so the `disjoint` version shares no item between its splits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from outfitter.data.synth_world import COLOURS_BY_FAMILY, COOL, NEUTRAL, STYLES, WARM, ItemTable
from outfitter.data.types import CATEGORY_INDEX

NOISE = 0.07  # positives that break one rule
REUSE = 0.2  # chance a slot reuses an existing matching item (items shared between outfits)
PATTERNED_OUTFIT = 0.55  # outfits with one patterned item
ACCENT = 0.55  # chance a slot takes the outfit's colour family rather than a neutral
NONDISJOINT_SPLITS = (0.78, 0.07, 0.15)  # Polyvore: 53,306 / 5,000 / 10,000 outfits
DISJOINT_GROUPS = (0.6, 0.1, 0.3)
NEGATIVE_KINDS = ("colour", "style", "pattern", "random")
NEGATIVE_MIX = (0.3, 0.3, 0.2, 0.2)
EXTRAS = {  # optional categories and how often an outfit has one
    "bags": 0.6,
    "jewellery": 0.5,
    "outerwear": 0.35,
    "accessories": 0.3,
    "sunglasses": 0.2,
    "hats": 0.2,
    "scarves": 0.15,
}
MAX_ITEMS = 8


@dataclass
class SynthOutfit:
    items: list[int]  # row in the ItemTable, in outfit order
    indices: list[int]  # Polyvore `index` of each item (1-based, with gaps)
    style: int
    family: int  # WARM or COOL
    group: int  # disjoint group: 0 train, 1 valid, 2 test
    set_id: str = ""


def _categories(rng: np.random.Generator) -> list[int]:
    names = ["tops", "bottoms", "shoes"] if rng.random() < 0.75 else ["all-body", "shoes"]
    names += [c for c, p in EXTRAS.items() if rng.random() < p]
    if len(names) < 3:
        names.append("bags")
    names = names[:MAX_ITEMS]
    return [CATEGORY_INDEX[c] for c in rng.permutation(names)]


def _slot_wishes(rng: np.random.Generator, n: int, style: int, family: int) -> list[list[int]]:
    """[style, colour class, patterned] per slot, rules obeyed, then maybe one rule broken."""
    accents = rng.random(n) < ACCENT
    if accents.sum() < 2:
        accents[rng.choice(n, 2, replace=False)] = True
    wishes = [[style, family if a else NEUTRAL, 0] for a in accents]
    if rng.random() < PATTERNED_OUTFIT:
        wishes[rng.integers(n)][2] = 1
    if rng.random() < NOISE:
        j = int(rng.integers(n))
        kind = rng.integers(3)
        if kind == 0:
            wishes[j][0] = (style + 1 + int(rng.integers(len(STYLES) - 1))) % len(STYLES)
        elif kind == 1:
            wishes[j][1] = COOL if family == WARM else WARM
        else:
            for k in rng.choice(n, 2, replace=False):
                wishes[k][2] = 1
    return wishes


def make_outfits(n_outfits: int, rng: np.random.Generator) -> tuple[ItemTable, list[SynthOutfit]]:
    """Sample `n_outfits` outfits and the items they need."""
    table = ItemTable()
    pools: dict[tuple, list[int]] = {}
    outfits = []
    for k in range(n_outfits):
        # the first outfits visit every group, so each disjoint split has >= 2 outfits
        group = k % 3 if k < 6 else int(rng.choice(3, p=DISJOINT_GROUPS))
        style, family = int(rng.integers(len(STYLES))), int(rng.integers(2))
        cats = _categories(rng)
        items = []
        for cat, (s, cc, patterned) in zip(
            cats, _slot_wishes(rng, len(cats), style, family), strict=True
        ):
            key = (group, cat, s, cc, patterned)
            pool = pools.setdefault(key, [])
            if pool and rng.random() < REUSE:
                items.append(pool[int(rng.integers(len(pool)))])
                continue
            colours = COLOURS_BY_FAMILY[cc]
            colour = int(colours[rng.integers(len(colours))])
            item = table.add(cat, s, colour, int(rng.integers(1, 4)) if patterned else 0, group)
            pool.append(item)
            items.append(item)
        steps = 1 + (rng.random(len(items)) < 0.25) * rng.integers(1, 3, len(items))
        indices = np.cumsum(steps).tolist()
        outfits.append(SynthOutfit(items, indices, style, family, group))
    return table, outfits


def split_members(
    outfits: list[SynthOutfit], rng: np.random.Generator
) -> dict[str, dict[str, list[int]]]:
    """Outfit positions of each (version, split)."""
    order = rng.permutation(len(outfits))
    n = len(outfits)
    n_valid = max(2, round(NONDISJOINT_SPLITS[1] * n))
    n_test = max(2, round(NONDISJOINT_SPLITS[2] * n))
    a, b = n - n_valid - n_test, n - n_test
    nondisjoint = {
        "train": sorted(order[:a]),
        "valid": sorted(order[a:b]),
        "test": sorted(order[b:]),
    }
    disjoint = {
        name: [k for k, o in enumerate(outfits) if o.group == g]
        for g, name in enumerate(("train", "valid", "test"))
    }
    return {"nondisjoint": nondisjoint, "disjoint": disjoint}


class SplitTasks:
    """Builds compatibility lines and FITB questions over the outfits of one split."""

    def __init__(self, table: ItemTable, outfits: list[SynthOutfit], members: list[int], seed: int):
        self.t, self.outfits, self.members = table, outfits, members
        self.rng = np.random.default_rng(seed)
        self.slots = [(o, j) for o in members for j in range(len(outfits[o].items))]
        self.buckets: dict[tuple, list[tuple[int, int]]] = {}
        self.by_cat: dict[int, list[tuple[int, int]]] = {}
        for o, j in self.slots:
            self.buckets.setdefault(self._key(outfits[o].items[j]), []).append((o, j))
            self.by_cat.setdefault(table.category[outfits[o].items[j]], []).append((o, j))

    def _key(self, item: int) -> tuple:
        t = self.t
        return (t.category[item], t.style[item], t.colour_class(item), t.pattern[item] > 0)

    def ref(self, slot: tuple[int, int]) -> str:
        o, j = slot
        return f"{self.outfits[o].set_id}_{self.outfits[o].indices[j]}"

    def _pick(self, keys: list[tuple], cat: int, avoid: set[int], outfit: int) -> tuple[int, int]:
        """A slot of another outfit whose item matches the first satisfiable key and is not in
        `avoid`; else any other outfit's item of `cat` (tiny splits), else any other item."""

        def ok(slot: tuple[int, int]) -> bool:
            return slot[0] != outfit and self.outfits[slot[0]].items[slot[1]] not in avoid

        for key in keys:
            pool = self.buckets.get(key, ())
            for _ in range(4 if pool else 0):
                slot = pool[int(self.rng.integers(len(pool)))]
                if ok(slot):
                    return slot
        for pool in (self.by_cat[cat], self.slots):
            for _ in range(8):
                slot = pool[int(self.rng.integers(len(pool)))]
                if ok(slot):
                    return slot
            candidates = [s for s in pool if ok(s)]
            if candidates:
                return candidates[int(self.rng.integers(len(candidates)))]
        raise ValueError("a split needs at least two outfits to build its tasks")

    def _clash_keys(self, kind: str, o: SynthOutfit, item: int) -> list[tuple]:
        """Keys of same-category items that break rule `kind` next to the rest of outfit `o`
        (for "pattern", the caller makes sure the rest already has a patterned item)."""
        t = self.t
        cat, cc, pat = t.category[item], t.colour_class(item), t.pattern[item] > 0
        if kind == "colour":
            opposite = COOL if o.family == WARM else WARM
            return [(cat, o.style, opposite, pat), (cat, o.style, opposite, not pat)]
        if kind == "style":
            others = [
                (o.style + k) % len(STYLES) for k in self.rng.permutation(range(1, len(STYLES)))
            ]
            return [(cat, s, c, pat) for c in (cc, o.family, NEUTRAL) for s in others]
        return [(cat, o.style, c, True) for c in (cc, o.family, NEUTRAL)]

    def compatibility_negative(self, k: int) -> list[str]:
        o = self.outfits[k]
        refs = [self.ref((k, j)) for j in range(len(o.items))]
        kind = NEGATIVE_KINDS[self.rng.choice(4, p=NEGATIVE_MIX)]
        if kind == "random":  # Polyvore's own negatives: items of random outfits of the split
            return [
                self.ref(self.slots[i]) for i in self.rng.integers(len(self.slots), size=len(refs))
            ]
        patterned = [j for j, i in enumerate(o.items) if self.t.pattern[i] > 0]
        solid = [j for j in range(len(o.items)) if j not in patterned]
        if kind == "pattern" and solid:
            # one more patterned item, or two where the outfit had none
            swaps = (
                [int(self.rng.choice(solid))]
                if patterned
                else [int(j) for j in self.rng.permutation(solid)[:2]]
            )
        else:
            kind = "colour" if kind == "pattern" else kind
            swaps = [int(self.rng.integers(len(o.items)))]
        avoid = set(o.items)
        for j in swaps:
            item = o.items[j]
            slot = self._pick(self._clash_keys(kind, o, item), self.t.category[item], avoid, k)
            avoid.add(self.outfits[slot[0]].items[slot[1]])
            refs[j] = self.ref(slot)
        return refs

    def fitb(self, k: int) -> dict:
        o = self.outfits[k]
        j = int(self.rng.integers(len(o.items)))
        item = o.items[j]
        rest_patterned = any(self.t.pattern[i] > 0 for n, i in enumerate(o.items) if n != j)
        kinds = ["colour", "style"] + (["pattern"] if rest_patterned else [])
        avoid = set(o.items)
        wrong = []
        for _ in range(3):
            kind = kinds[int(self.rng.integers(len(kinds)))]
            slot = self._pick(self._clash_keys(kind, o, item), self.t.category[item], avoid, k)
            avoid.add(self.outfits[slot[0]].items[slot[1]])
            wrong.append(self.ref(slot))
        answers = list(wrong)
        answers.insert(int(self.rng.integers(4)), self.ref((k, j)))
        return {
            "question": [self.ref((k, n)) for n in range(len(o.items)) if n != j],
            "answers": answers,
            "blank_position": o.indices[j],
        }

    def build(self) -> tuple[list[str], list[dict]]:
        """Compatibility lines (each positive then its negative) and FITB questions."""
        lines, questions = [], []
        for k in self.members:
            o = self.outfits[k]
            lines.append("1 " + " ".join(self.ref((k, j)) for j in range(len(o.items))))
            lines.append("0 " + " ".join(self.compatibility_negative(k)))
            questions.append(self.fitb(k))
        return lines, questions
