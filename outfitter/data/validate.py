"""Dataset validation: every problem of a Polyvore-layout folder, counted, with first examples.

`validate_dataset` runs the loader's own parsers (`polyvore.py`) with a collecting `report`, so
"valid" means exactly "loads". It checks that every referenced image exists (one directory scan,
cheap even for 250k files) and decodes a sample of them (`full=True` decodes all). Errors make
the dataset unusable (`check_dataset` raises, `outfitter data validate` exits non-zero, training
refuses it); warnings are printed but do not block.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from outfitter.data import polyvore
from outfitter.data.errors import DatasetError
from outfitter.data.images import confined, verify_image
from outfitter.data.types import Catalog

# kind -> (severity, what it means); every kind a parser or check reports is listed here.
PROBLEMS: dict[str, tuple[str, str]] = {
    "missing_file": ("error", "a required file is missing"),
    "unreadable_file": ("error", "a file is truncated, corrupt or not UTF-8"),
    "malformed_entry": ("error", "a JSON entry does not have the published structure"),
    "malformed_line": ("error", "a task-file line does not parse"),
    "unknown_category": ("error", "an item's semantic_category is not one of the 11"),
    "duplicate_id": ("error", "an item id, set id or outfit index appears twice"),
    "empty_outfit": ("error", "an outfit has no items"),
    "unknown_item": ("error", "an outfit refers to an item missing from the metadata"),
    "unknown_reference": ("error", "a task refers to an outfit item not in the split"),
    "fitb_answer": ("error", "a FITB question has no (or several) answers from its own outfit"),
    "unsafe_id": ("error", "an item id cannot name a file in images/ (/, .., NUL, control chars)"),
    "unsafe_file": ("error", "a file is over the size cap, or a symlink out of its folder"),
    "missing_image": ("error", "an item has no image file"),
    "corrupt_image": ("error", "an image file does not decode"),
    "missing_version": ("warning", "a version folder (nondisjoint/disjoint) is absent"),
    "disjoint_overlap": ("warning", "disjoint/ train and test share items"),
}
EXAMPLES = 5
DEFAULT_DECODE_SAMPLE = 2000


@dataclass
class ProblemSummary:
    count: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass
class ValidationReport:
    """Counts of what was read, and every problem found."""

    root: Path
    counts: dict[str, int] = field(default_factory=dict)
    problems: dict[str, ProblemSummary] = field(default_factory=dict)
    # the Polyvore items, when their metadata parsed without a problem (as the loader parses it)
    items: dict | None = field(default=None, repr=False)

    def catalog(self) -> Catalog | None:
        """The catalog this check parsed, when its metadata had no problem (the loader would
        parse the very same items: a training run need not read the metadata twice); else None.
        """
        if not self.items:
            return None
        return Catalog(root=self.root, items=self.items, image_dir=self.root / polyvore.IMAGE_DIR)

    def add(self, kind: str, where: str, message: str) -> None:
        if kind not in PROBLEMS:
            raise KeyError(f"unknown problem kind {kind!r}")
        p = self.problems.setdefault(kind, ProblemSummary())
        p.count += 1
        if len(p.examples) < EXAMPLES:
            p.examples.append(f"{where}: {message}")

    def _of(self, severity: str) -> dict[str, ProblemSummary]:
        return {k: p for k, p in self.problems.items() if PROBLEMS[k][0] == severity}

    @property
    def errors(self) -> dict[str, ProblemSummary]:
        return self._of("error")

    @property
    def warnings(self) -> dict[str, ProblemSummary]:
        return self._of("warning")

    @property
    def ok(self) -> bool:
        """True when the dataset is usable (no errors; warnings allowed)."""
        return not self.errors

    def format(self) -> str:
        lines = [f"dataset {self.root}: " + ("usable" if self.ok else "UNUSABLE")]
        groups: dict[
            str, list[str]
        ] = {}  # "nondisjoint/train outfits" -> group "nondisjoint/train"
        for key, value in self.counts.items():
            head, _, tail = key.partition(" ")
            groups.setdefault(head, []).append(f"{value:,} {tail}".strip())
        lines.extend(f"  {head}: {', '.join(parts)}" for head, parts in groups.items())
        for kind, p in sorted(self.problems.items(), key=lambda kv: PROBLEMS[kv[0]][0]):
            severity, meaning = PROBLEMS[kind]
            lines.append(f"{severity}: {kind} x{p.count:,} ({meaning})")
            lines.extend(f"    {e}" for e in p.examples)
            if p.count > len(p.examples):
                lines.append(f"    ... and {p.count - len(p.examples):,} more")
        return "\n".join(lines)


UNREADABLE = object()  # what `_read` returns for a file it could not parse (JSON `null` is None)


def _read(path: Path, report: ValidationReport, root: Path, **kw):
    """read_json with problems recorded instead of raised; UNREADABLE when unreadable."""
    if not path.is_file():
        report.add("missing_file", str(path), "file not found")
        return UNREADABLE
    problem = polyvore.file_problem(path, root)
    if problem:
        report.add("unsafe_file", str(path), problem)
        return UNREADABLE
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f, **kw)
    except json.JSONDecodeError as e:
        report.add(
            "unreadable_file", f"{path}:{e.lineno}:{e.colno}", f"invalid JSON ({e.msg}); truncated?"
        )
    except UnicodeDecodeError as e:
        report.add("unreadable_file", str(path), f"not UTF-8 text ({e.reason} at byte {e.start})")
    except (ValueError, RecursionError) as e:  # an over-long integer, absurdly deep nesting
        report.add("unreadable_file", str(path), f"unreadable JSON ({type(e).__name__})")
    return UNREADABLE


def _check_items(root: Path, report: ValidationReport) -> dict:
    path = root / polyvore.METADATA_FILE
    duplicates: list[str] = []

    def top_level_pairs(pairs):  # json keeps the last of repeated keys silently: catch them
        d = dict(pairs)
        if len(d) != len(pairs) and pairs and isinstance(pairs[0][1], dict):
            seen: set[str] = set()
            duplicates.extend(k for k, _ in pairs if k in seen or seen.add(k))
        return d

    raw = _read(path, report, root, object_pairs_hook=top_level_pairs)
    for item_id in duplicates:
        report.add("duplicate_id", str(path), f"item id {item_id} appears more than once")
    if raw is UNREADABLE:
        return {}
    problems = len(duplicates)
    try:
        fine = polyvore.read_fine_categories(root)
    except DatasetError as e:
        report.add("malformed_line", polyvore.CATEGORIES_FILE, str(e))
        fine, problems = {}, problems + 1

    def note(kind: str, where: str, message: str) -> None:
        nonlocal problems
        problems += 1
        report.add(kind, where, message)

    items = polyvore.parse_items(raw, str(path), fine, note)
    report.counts["items"] = len(items)
    report.items = items if not problems else None  # what `polyvore.load_catalog` returns
    return items


def _check_version(
    root: Path, version: str, items: dict, report: ValidationReport
) -> dict[str, set]:
    """Outfits and task files of one version; returns the item ids of each split."""
    folder = root / version
    split_items: dict[str, set] = {}
    for split in polyvore.SPLITS:
        path = folder / f"{split}.json"
        raw = _read(path, report, root)
        outfits = (
            polyvore.parse_outfits(raw, str(path), report.add) if raw is not UNREADABLE else []
        )
        report.counts[f"{version}/{split} outfits"] = len(outfits)
        for o in outfits:
            for item_id in o.item_ids:
                if item_id not in items:
                    report.add(
                        "unknown_item",
                        f"{path} set_id {o.set_id}",
                        f"item {item_id} not in metadata",
                    )
        split_items[split] = {i for o in outfits for i in o.item_ids}
        refs = polyvore.outfit_refs(outfits)
        compat = folder / f"compatibility_{split}.txt"
        if compat.is_file() and (problem := polyvore.file_problem(compat, root)):
            report.add("unsafe_file", str(compat), problem)
        elif compat.is_file():
            n = len(polyvore.parse_compatibility(compat, refs, report.add))
            report.counts[f"{version}/{split} compatibility"] = n
        fitb_path = folder / f"fill_in_blank_{split}.json"
        if fitb_path.is_file() and (raw_fitb := _read(fitb_path, report, root)) is not UNREADABLE:
            n = len(polyvore.parse_fitb(raw_fitb, str(fitb_path), refs, report.add))
            report.counts[f"{version}/{split} fitb"] = n
    return split_items


def _check_images(
    root: Path,
    item_ids: list[str],
    report: ValidationReport,
    full: bool,
    sample: int,
    progress: Callable[[str, int], Callable[[int], None]] | None,
) -> None:
    image_dir = root / polyvore.IMAGE_DIR
    try:
        entries = list(os.scandir(image_dir))
    except OSError as e:
        report.add("missing_file", str(image_dir), f"image folder unreadable ({e.strerror})")
        return
    present = {e.name for e in entries}
    for entry in entries:  # every symlink, not only the decoded sample: the route serves bytes
        if entry.is_symlink():
            try:
                confined(Path(entry.path))
            except DatasetError as e:
                report.add("unsafe_file", entry.path, str(e).split(": ", 1)[-1])
    missing = [i for i in item_ids if f"{i}.jpg" not in present]
    for i in missing:
        report.add("missing_image", str(image_dir / f"{i}.jpg"), f"no image for item {i}")
    have = [i for i in item_ids if f"{i}.jpg" in present]
    to_decode = have if full or len(have) <= sample else random.Random(0).sample(have, sample)
    report.counts["images present"] = len(have)
    report.counts["images decoded"] = len(to_decode)
    advance = progress("decoding images", len(to_decode)) if progress else None
    for k, item_id in enumerate(to_decode):
        try:
            verify_image(image_dir / f"{item_id}.jpg")
        except DatasetError as e:
            report.add(
                "corrupt_image", str(image_dir / f"{item_id}.jpg"), str(e).split(": ", 1)[-1]
            )
        if advance and (k % 256 == 255 or k == len(to_decode) - 1):
            advance(k % 256 + 1)


def validate_dataset(
    root: str | Path,
    *,
    full: bool = False,
    sample: int = DEFAULT_DECODE_SAMPLE,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
    versions: Sequence[str] | None = None,
) -> ValidationReport:
    """Check a Polyvore-layout folder.

    Args:
        full: decode every image (slow on 250k images); by default all are checked for
            existence and a random `sample` of them is decoded.
        progress: `progress(description, total)` returns an `advance(n)` callback (the CLI's
            rich progress bar); None for silence.
        versions: the Polyvore versions to check (a training run: the one it trains on);
            None: both. The metadata and the images are checked either way.
    """
    root = Path(root)
    report = ValidationReport(root)
    if not root.is_dir():
        report.add("missing_file", str(root), "dataset folder not found")
        return report
    if not (root / polyvore.METADATA_FILE).exists() and _amazon_file(root):
        return _validate_amazon(root, report, full, sample, progress)
    checked = tuple(versions or polyvore.VERSIONS)
    unknown = sorted(set(checked) - set(polyvore.VERSIONS))
    if unknown:
        raise ValueError(f"versions must be among {polyvore.VERSIONS}, got {unknown}")
    items = _check_items(root, report)
    split_items: dict[str, dict[str, set]] = {}
    for version in checked:
        if not (root / version).is_dir():
            report.add(
                "missing_version", str(root / version), "folder absent; that version cannot be used"
            )
            continue
        split_items[version] = _check_version(root, version, items, report)
    if not split_items:
        if len(checked) > 1:
            report.add("missing_file", str(root), f"neither {' nor '.join(checked)}/ exists")
        else:
            report.add("missing_file", str(root), f"{checked[0]}/ does not exist")
    if "disjoint" in split_items:
        shared = split_items["disjoint"]["train"] & split_items["disjoint"]["test"]
        if shared:
            report.add(
                "disjoint_overlap",
                str(root / "disjoint"),
                f"{len(shared)} items in both train and test",
            )
    if items:
        _check_images(root, list(items), report, full, sample, progress)
    return report


def _amazon_file(root: Path) -> bool:
    from outfitter.data.amazon import find_metadata

    try:
        return bool(find_metadata(root))
    except DatasetError:
        return False


def _validate_amazon(
    root: Path, report: ValidationReport, full, sample, progress
) -> ValidationReport:
    """An Amazon co-purchase folder: the metadata parses, items map, images are there."""
    from outfitter.data.amazon import read_amazon

    try:
        data = read_amazon(root)
    except DatasetError as e:
        where, _, message = str(e).partition(": ")
        report.add("unreadable_file", where, message)
        return report
    report.counts["items"] = len(data.catalog.items)
    report.counts["pairs"] = sum(p.label for p in data.pairs)
    report.counts["skipped (no fashion category)"] = sum(map(len, data.skipped.values()))
    _check_images(root, list(data.catalog.items), report, full, sample, progress)
    return report


def check_dataset(root: str | Path, **kwargs) -> ValidationReport:
    """Validate and raise `DatasetError` (the formatted report) when the dataset is unusable."""
    report = validate_dataset(root, **kwargs)
    if not report.ok:
        raise DatasetError(report.format())
    return report
