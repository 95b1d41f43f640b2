"""The latent world of the synthetic catalog: attributes, the compatibility rules, item texts.

Every item has a category, a style, a colour, a pattern and a material. The rules of a
compatible outfit, and which modality shows each attribute:

=============  ==========================================  ===================================
attribute      rule of a compatible outfit                 seen in
=============  ==========================================  ===================================
style          one style per outfit                        text only (style words, material,
                                                           occasion); never drawn in the image
colour         accents of one family (warm *or* cool),     image always; text for only
               neutrals go with both                       `COLOUR_IN_TEXT` of the items
pattern        at most one patterned item                  image always; text for only
                                                           `PATTERN_IN_TEXT` of patterned items
=============  ==========================================  ===================================

So a text-only model misses most colour and pattern clashes, an image-only model misses every
style clash, and only a model that reads both can learn all three rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from outfitter.data.types import CATEGORIES

STYLES = ("formal", "sporty", "boho", "street")
STYLE_ADJECTIVES = {
    "formal": ("tailored", "elegant", "classic", "refined", "office"),
    "sporty": ("athletic", "performance", "training", "active", "breathable"),
    "boho": ("bohemian", "flowy", "festival", "embroidered", "free-spirited"),
    "street": ("oversized", "urban", "graphic", "distressed", "streetwear"),
}
STYLE_MATERIALS = {
    "formal": ("silk", "wool", "satin", "cashmere"),
    "sporty": ("mesh", "nylon", "fleece", "spandex"),
    "boho": ("linen", "suede", "crochet", "gauze"),
    "street": ("denim", "canvas", "leather", "heavy jersey"),
}
GENERIC_MATERIALS = ("cotton", "polyester", "viscose")  # carry no style information
STYLE_OCCASIONS = {
    "formal": ("Made for the office.", "Ideal for evening events.", "A formal dinner staple."),
    "sporty": ("Made for the gym.", "Built for running.", "Ready for weekend sport."),
    "boho": ("Made for festivals.", "Perfect for beach days.", "For summer markets."),
    "street": ("Made for city nights.", "Ready for skate sessions.", "Built for concerts."),
}
NEUTRAL_PHRASES = ("Regular fit.", "True to size.", "Easy care.", "New season.", "")

# (name, rgb, family): family 0 = warm, 1 = cool, 2 = neutral (goes with both).
COLOURS: tuple[tuple[str, tuple[int, int, int], int], ...] = (
    ("red", (200, 30, 40), 0),
    ("orange", (235, 120, 30), 0),
    ("mustard", (215, 170, 40), 0),
    ("coral", (240, 110, 100), 0),
    ("burgundy", (120, 20, 45), 0),
    ("rust", (170, 70, 30), 0),
    ("navy", (25, 40, 100), 1),
    ("teal", (20, 130, 135), 1),
    ("royal blue", (50, 80, 210), 1),
    ("emerald", (20, 140, 80), 1),
    ("lavender", (160, 140, 215), 1),
    ("mint", (140, 215, 185), 1),
    ("black", (25, 25, 25), 2),
    ("ivory", (235, 228, 205), 2),
    ("grey", (128, 128, 128), 2),
    ("beige", (200, 180, 150), 2),
)
WARM, COOL, NEUTRAL = 0, 1, 2
COLOUR_FAMILY = np.array([c[2] for c in COLOURS])
COLOURS_BY_FAMILY = tuple(np.flatnonzero(f == COLOUR_FAMILY) for f in (WARM, COOL, NEUTRAL))

PATTERNS = ("solid", "striped", "polka-dot", "checked")  # index 0 = no pattern

# category -> (noun, fine category name) choices; nouns do not depend on style.
NOUNS: dict[str, tuple[tuple[str, str], ...]] = {
    "tops": (
        ("shirt", "Shirts"),
        ("blouse", "Blouses"),
        ("tee", "T-Shirts"),
        ("sweater", "Sweaters"),
    ),
    "bottoms": (
        ("trousers", "Pants"),
        ("jeans", "Jeans"),
        ("skirt", "Skirts"),
        ("shorts", "Shorts"),
    ),
    "all-body": (("dress", "Dresses"), ("jumpsuit", "Jumpsuits"), ("romper", "Rompers")),
    "outerwear": (("coat", "Coats"), ("jacket", "Jackets"), ("blazer", "Blazers")),
    "shoes": (
        ("boots", "Boots"),
        ("sneakers", "Sneakers"),
        ("heels", "Pumps"),
        ("sandals", "Sandals"),
    ),
    "bags": (("tote bag", "Tote Bags"), ("clutch", "Clutches"), ("backpack", "Backpacks")),
    "hats": (("hat", "Hats"), ("cap", "Caps"), ("beanie", "Beanies")),
    "jewellery": (("necklace", "Necklaces"), ("earrings", "Earrings"), ("bracelet", "Bracelets")),
    "scarves": (("scarf", "Scarves"), ("wrap", "Wraps")),
    "sunglasses": (("sunglasses", "Sunglasses"), ("aviators", "Aviator Sunglasses")),
    "accessories": (("belt", "Belts"), ("watch", "Watches"), ("gloves", "Gloves")),
}
# Fine category ids as in categories.csv: (semantic, noun position) -> id.
FINE_IDS: dict[tuple[str, int], int] = {}
for _cat in CATEGORIES:
    for _k in range(len(NOUNS[_cat])):
        FINE_IDS[(_cat, _k)] = 10 + len(FINE_IDS)

COLOUR_IN_TEXT = 0.35  # share of items whose colour is written in the title or description
PATTERN_IN_TEXT = 0.25  # share of patterned items whose pattern is written
STYLE_WORD_IN_TITLE = 0.8  # a style adjective in the title; else cues only in material/occasion
NO_STYLE_CUE = 0.05  # items whose text says nothing about the style (irreducible noise)


@dataclass
class ItemTable:
    """Latent attributes of all items, one row per item (parallel lists, cheap to append)."""

    category: list[int] = field(default_factory=list)
    style: list[int] = field(default_factory=list)
    colour: list[int] = field(default_factory=list)
    pattern: list[int] = field(default_factory=list)
    group: list[int] = field(default_factory=list)  # the disjoint split the item belongs to

    def __len__(self) -> int:
        return len(self.category)

    def add(self, category: int, style: int, colour: int, pattern: int, group: int) -> int:
        self.category.append(category)
        self.style.append(style)
        self.colour.append(colour)
        self.pattern.append(pattern)
        self.group.append(group)
        return len(self.category) - 1

    def colour_class(self, item: int) -> int:
        return int(COLOUR_FAMILY[self.colour[item]])


@dataclass(frozen=True)
class ItemText:
    title: str
    description: str
    noun: int  # position in NOUNS[category]
    material: str


def make_texts(table: ItemTable, rng: np.random.Generator) -> list[ItemText]:
    """Title + description of every item; what each reveals follows the table in the docstring."""
    n = len(table)
    u = rng.random((n, 8))  # one draw per decision, vectorised
    picks = rng.integers(0, 1 << 30, size=(n, 4))
    texts = []
    for i in range(n):
        cat = CATEGORIES[table.category[i]]
        style = STYLES[table.style[i]]
        noun_k = int(picks[i, 0] % len(NOUNS[cat]))
        noun = NOUNS[cat][noun_k][0]
        no_cue = u[i, 0] < NO_STYLE_CUE
        if no_cue or u[i, 1] < 0.3:
            material = GENERIC_MATERIALS[picks[i, 1] % len(GENERIC_MATERIALS)]
        else:
            material = STYLE_MATERIALS[style][picks[i, 1] % 4]
        words = []
        colour_name = COLOURS[table.colour[i]][0]
        show_colour = u[i, 2] < COLOUR_IN_TEXT
        if show_colour and u[i, 3] < 0.7:
            words.append(colour_name)
        pattern = table.pattern[i]
        if pattern and u[i, 4] < PATTERN_IN_TEXT:
            words.append(PATTERNS[pattern])
        if not no_cue and u[i, 5] < STYLE_WORD_IN_TITLE:
            adjectives = STYLE_ADJECTIVES[style]
            words.append(adjectives[picks[i, 2] % len(adjectives)])
        if u[i, 6] < 0.6:
            words.append(material)
        words.append(noun)
        sentences = []
        if show_colour and u[i, 3] >= 0.7:
            sentences.append(f"In {colour_name}.")
        if not no_cue and u[i, 7] < 0.7:
            sentences.append(STYLE_OCCASIONS[style][picks[i, 3] % 3])
        sentences.append(f"{material.capitalize()} blend.")
        sentences.append(NEUTRAL_PHRASES[picks[i, 3] % len(NEUTRAL_PHRASES)])
        description = " ".join(s for s in sentences if s)
        texts.append(ItemText(" ".join(words), description, noun_k, material))
    return texts


def fine_categories() -> list[tuple[int, str, str]]:
    """Rows of categories.csv: (id, fine name, semantic category)."""
    return [
        (FINE_IDS[(cat, k)], NOUNS[cat][k][1], cat)
        for cat in CATEGORIES
        for k in range(len(NOUNS[cat]))
    ]
