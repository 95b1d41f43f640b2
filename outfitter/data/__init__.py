"""Catalog data: Polyvore Outfits (native format), Amazon co-purchase (both read by
`load_catalog`/`load_split`, the format detected from the folder), the synthetic catalog,
validation, feature tables and the id-level PyTorch datasets.

Plain Python + numpy + PyTorch: this package never imports Ray or MLflow. The synthetic catalog
(`outfitter.data.synth`) and the datasets (`outfitter.data.datasets`) are imported from their
modules, so `import outfitter.data` stays light.
"""

from outfitter.data.errors import DatasetError
from outfitter.data.formats import FORMATS, detect_format, load_catalog, load_split
from outfitter.data.polyvore import load_outfit_titles
from outfitter.data.types import (
    CATEGORIES,
    CATEGORY_INDEX,
    Catalog,
    CompatibilityQuestion,
    FITBQuestion,
    Item,
    ItemPair,
    Outfit,
    Split,
)
from outfitter.data.validate import ValidationReport, check_dataset, validate_dataset

__all__ = [
    "CATEGORIES",
    "CATEGORY_INDEX",
    "Catalog",
    "CompatibilityQuestion",
    "DatasetError",
    "FITBQuestion",
    "FORMATS",
    "Item",
    "ItemPair",
    "Outfit",
    "Split",
    "ValidationReport",
    "check_dataset",
    "detect_format",
    "load_catalog",
    "load_outfit_titles",
    "load_split",
    "validate_dataset",
]
