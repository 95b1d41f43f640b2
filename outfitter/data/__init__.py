"""Catalog data: Polyvore Outfits (native format), Amazon co-purchase, the synthetic catalog,
validation, feature tables and the id-level PyTorch datasets.

Plain Python + numpy + PyTorch: this package never imports Ray or MLflow. The synthetic catalog
(`outfitter.data.synth`) and the datasets (`outfitter.data.datasets`) are imported from their
modules, so `import outfitter.data` stays light.
"""

from outfitter.data.errors import DatasetError
from outfitter.data.polyvore import load_catalog, load_outfit_titles, load_split
from outfitter.data.types import (
    CATEGORIES,
    CATEGORY_INDEX,
    Catalog,
    CompatibilityQuestion,
    FITBQuestion,
    Item,
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
    "Item",
    "Outfit",
    "Split",
    "ValidationReport",
    "check_dataset",
    "load_catalog",
    "load_outfit_titles",
    "load_split",
    "validate_dataset",
]
