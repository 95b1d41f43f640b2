"""Plain records shared by the whole package: catalog items, outfits, and the two evaluation tasks.

Every loader (Polyvore Outfits, the synthetic catalog, Amazon co-purchase) produces these, so the
model and the platform never see a file format. Outfit references of the published task files
(`<set_id>_<index>`) are already resolved to item ids here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# The 11 semantic categories of Polyvore Outfits, in a fixed order: a category's position is its
# integer id everywhere (embeddings, faiss filters, batches).
CATEGORIES: tuple[str, ...] = (
    "accessories",
    "all-body",
    "bags",
    "bottoms",
    "hats",
    "jewellery",
    "outerwear",
    "scarves",
    "shoes",
    "sunglasses",
    "tops",
)
CATEGORY_INDEX: dict[str, int] = {name: i for i, name in enumerate(CATEGORIES)}


def item_text(title: str, description: str = "") -> str:
    """The text of an item as every model reads it (title + description): a catalog item's
    (`Item.text`) and a new item's in a request (`InputBuilder.encode_new_item`) alike."""
    return f"{title}. {description}".strip() if description else title


@dataclass(frozen=True, slots=True)  # slots: 200k of them per process (~60 MB less)
class Item:
    """One catalog item."""

    item_id: str
    title: str  # never empty: Polyvore's empty titles fall back to the url_name
    description: str  # may be empty
    category: str  # semantic category, one of CATEGORIES
    category_id: str = ""  # the fine-grained Polyvore category id (categories.csv)
    fine_category: str = ""  # its name, e.g. "Ankle Boots", when categories.csv has it

    @property
    def text(self) -> str:
        """Title and description, the text the CLIP text tower reads for the item (`item_text`)."""
        return item_text(self.title, self.description)

    @property
    def category_index(self) -> int:
        return CATEGORY_INDEX[self.category]


@dataclass(frozen=True)
class Outfit:
    """An outfit of one split: item ids in the order of their `index` (which can have gaps)."""

    set_id: str
    item_ids: tuple[str, ...]
    indices: tuple[int, ...]


@dataclass(frozen=True)
class ItemPair:
    """Two catalog items: label 1 = compatible (e.g. co-purchased), 0 = a sampled negative."""

    a: str
    b: str
    label: int
    weight: float  # compatibility weight of a positive (Amazon: co-purchase strength); 1.0 else


@dataclass(frozen=True)
class CompatibilityQuestion:
    """One line of `compatibility_{split}.txt`: label 1 = a real outfit, 0 = items mixed."""

    label: int
    item_ids: tuple[str, ...]


@dataclass(frozen=True)
class FITBQuestion:
    """One fill-in-the-blank question: which of `answers` completes `question`?"""

    question: tuple[str, ...]  # the outfit's item ids, blank removed
    answers: tuple[str, ...]  # candidate item ids (4 in Polyvore)
    correct: int  # position of the right answer in `answers` (the one from the question's outfit)
    blank_position: int  # as published (1-based position of the blank in the outfit)


@dataclass
class Split:
    """One split (`train`/`valid`/`test`) of one version (`nondisjoint`/`disjoint`)."""

    version: str
    name: str
    outfits: list[Outfit]
    # Empty when the release has no task file for this split (Polyvore has none for `train`):
    # training then builds its samples from `outfits`.
    compatibility: list[CompatibilityQuestion] = field(default_factory=list)
    fitb: list[FITBQuestion] = field(default_factory=list)
    # Weighted positive pairs of a pair dataset (Amazon co-purchase, `data.amazon_splits`): the
    # triplet loss reads their weights; empty for outfit datasets (weights come from outfits).
    pairs: list[ItemPair] = field(default_factory=list)

    @property
    def item_ids(self) -> list[str]:
        """The items of the split's outfits, sorted (of a train split: the items a model trains
        on, its sun2020 vocabulary's source and its retrieval negatives' pool)."""
        return sorted({i for o in self.outfits for i in o.item_ids})


@dataclass
class Catalog:
    """All items of a dataset folder, with where their images are."""

    root: Path
    items: dict[str, Item]
    image_dir: Path

    def image_path(self, item_id: str) -> Path:
        return self.image_dir / f"{item_id}.jpg"

    @property
    def item_ids(self) -> list[str]:
        """Item ids in a stable (sorted) order: row order of feature tables and indexes."""
        return sorted(self.items)
