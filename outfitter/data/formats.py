"""Which format a dataset folder is in, and the loaders that read either one the same way.

`load_catalog` and `load_split` (re-exported by `outfitter.data`) read a Polyvore Outfits folder
(`polyvore_item_metadata.json`) or an Amazon co-purchase folder (one McAuley metadata file,
`amazon.find_metadata`) into the same records, so training, evaluation, indexing and serving run
unchanged on both. The format is detected from the folder's files; `fmt` forces it (the CLI's
`--format`), which is how a folder holding both kinds of file is read.
"""

from __future__ import annotations

from pathlib import Path

from outfitter.data import amazon, amazon_splits, polyvore
from outfitter.data.errors import DatasetError
from outfitter.data.types import Catalog, Split

FORMATS = ("polyvore", "amazon")


def _has_amazon(root: Path) -> bool:
    try:
        amazon.find_metadata(root)
    except DatasetError:
        return False
    return True


def detect_format(root: str | Path, fmt: str | None = None) -> str:
    """`polyvore` or `amazon` for a dataset folder; `fmt` (when not None/"auto") is checked only.

    Raises DatasetError (one line) for a folder of neither format or of both without `fmt`.
    """
    root = Path(root)
    if fmt not in (None, "auto"):
        if fmt not in FORMATS:
            raise ValueError(f"--format {fmt!r}: must be auto or one of {FORMATS}")
        return fmt
    if not root.exists():
        raise DatasetError(f"{root}: dataset folder not found")
    # A folder of neither format: name the files looked for (one line, no traceback in the CLI)
    polyvore_found = root.is_dir() and (root / polyvore.METADATA_FILE).is_file()
    amazon_found = _has_amazon(root)
    if polyvore_found and amazon_found:
        raise DatasetError(
            f"{root}: holds both {polyvore.METADATA_FILE} and an Amazon metadata file; "
            "pass --format polyvore or --format amazon"
        )
    if polyvore_found:
        return "polyvore"
    if amazon_found:
        return "amazon"
    raise DatasetError(
        f"{root / polyvore.METADATA_FILE}: file not found, nor an Amazon metadata file "
        "(meta*.json[.gz], *.jsonl[.gz]): neither a Polyvore Outfits nor an Amazon co-purchase "
        "folder"
    )


def load_catalog(root: str | Path, fmt: str | None = None) -> Catalog:
    """All items of a dataset folder of either format."""
    if detect_format(root, fmt) == "amazon":
        return amazon_splits.read_cached(root).catalog
    return polyvore.load_catalog(root)


def load_split(
    root: str | Path,
    version: str,
    split: str,
    catalog: Catalog | None = None,
    fmt: str | None = None,
) -> Split:
    """One split of one version: Polyvore outfits and tasks, or Amazon pairs as two-item outfits
    (`amazon_splits`: `nondisjoint` splits pairs, `disjoint` splits products)."""
    polyvore.check_version(version, split)  # the same versions and splits in both formats
    if detect_format(root, fmt) == "amazon":
        return amazon_splits.load_amazon_split(root, version, split, catalog)
    return polyvore.load_split(root, version, split, catalog)
