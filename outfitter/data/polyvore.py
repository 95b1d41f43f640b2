"""Polyvore Outfits (Vasileva et al. 2018), read as published.

Layout of a dataset folder::

    polyvore_item_metadata.json      {item_id: {url_name, description, catgeories (sic), title,
                                                related, category_id, semantic_category}}
    polyvore_outfit_titles.json      {set_id: {url_name, title}}            (optional)
    categories.csv                   id,name,semantic (no header)           (optional)
    images/<item_id>.jpg
    nondisjoint/ disjoint/           {train,valid,test}.json, compatibility_{split}.txt,
                                     fill_in_blank_{split}.json (valid/test only in the release)

The parsers below take a `report` callback `(kind, where, message)`: the loader passes one that
raises `DatasetError` at the first problem, `validate.py` one that collects every problem. So the
loader and the validator can never disagree on what a well-formed file is. Plain `json` + dicts
and one pass per file keep the real sizes (251k items, 53k outfits) to a few seconds.

A catalog may come from anyone, so: an item id must be usable as a file name (`images/<id>.jpg`
stays inside `images/`: no `/`, `\\`, `..`, NUL or control characters), a file that resolves
outside the dataset folder (a symlink out) is refused, and a JSON or task file over
`MAX_FILE_BYTES` is refused before it is read.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from outfitter.data.errors import DatasetError
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

METADATA_FILE = "polyvore_item_metadata.json"
OUTFIT_TITLES_FILE = "polyvore_outfit_titles.json"
CATEGORIES_FILE = "categories.csv"
IMAGE_DIR = "images"
VERSIONS = ("nondisjoint", "disjoint")
SPLITS = ("train", "valid", "test")

# report(kind, where, message): see the module docstring; kinds are listed in validate.PROBLEMS.
Report = Callable[[str, str, str], None]

# The published metadata file is ~130 MB; `$OUTFITTER_MAX_FILE_BYTES` raises the cap.
MAX_FILE_BYTES = 1 << 30
MAX_ID_CHARS = 200  # `<id>.jpg` must fit a 255-byte file name
_UNSAFE_ID_CHARS = re.compile(r"[/\\\x00-\x1f\x7f]")


def id_problem(item_id: str) -> str | None:
    """Why `item_id` cannot name its image file `images/<id>.jpg` safely; None when it can."""
    if not item_id.strip():
        return "item id is empty"
    if len(item_id) > MAX_ID_CHARS:
        return f"item id has {len(item_id)} characters; at most {MAX_ID_CHARS}"
    if item_id in (".", "..") or item_id.startswith(".."):
        return f"item id {item_id[:40]!r} would name a path outside images/"
    bad = _UNSAFE_ID_CHARS.search(item_id)
    if bad:
        return f"item id {item_id[:40]!r} contains {bad.group()!r} (no /, \\, NUL or control chars)"
    return None


def file_problem(path: Path, root: Path | None = None) -> str | None:
    """Why a dataset file must not be read: over the size cap, or (with `root`) resolving
    outside the dataset folder through a symlink. None when it may be read."""
    cap = int(os.environ.get("OUTFITTER_MAX_FILE_BYTES", MAX_FILE_BYTES))
    if root is not None and not path.resolve().is_relative_to(Path(root).resolve()):
        return f"resolves to {path.resolve()}, outside the dataset folder {root}; refusing it"
    size = path.stat().st_size
    if size > cap:
        return (
            f"{size:,} bytes, over the {cap:,}-byte limit for a dataset file "
            "(raise OUTFITTER_MAX_FILE_BYTES if it is genuine)"
        )
    return None


def raise_first(kind: str, where: str, message: str) -> None:
    """The loader's `report`: the first problem aborts with an actionable error."""
    raise DatasetError(
        f"{where}: {message} [{kind}]; run `outfitter data validate` for a full report"
    )


def read_json(path: Path, root: Path | None = None) -> Any:
    """Parse a JSON file; a missing, truncated, non-UTF-8, oversized or (with `root`)
    out-of-folder file becomes a `DatasetError`."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    problem = file_problem(path, root)
    if problem:
        raise DatasetError(f"{path}: {problem}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(
            f"{path}:{e.lineno}:{e.colno}: invalid JSON ({e.msg}); the file is truncated or "
            "corrupt: download or generate it again"
        ) from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (ValueError, RecursionError) as e:  # an over-long integer, absurdly deep nesting
        raise DatasetError(f"{path}: unreadable JSON ({type(e).__name__}: {e})"[:500]) from None


def read_fine_categories(root: Path) -> dict[str, tuple[str, str]]:
    """`categories.csv` as {category_id: (name, semantic)}; empty when the file is absent."""
    path = Path(root) / CATEGORIES_FILE
    if not path.is_file():
        return {}
    problem = file_problem(path, Path(root))
    if problem:
        raise DatasetError(f"{path}: {problem}")
    fine: dict[str, tuple[str, str]] = {}
    try:
        with open(path, encoding="utf-8", newline="") as f:
            for lineno, row in enumerate(csv.reader(f), start=1):
                if not row or (lineno == 1 and row[0].strip().lower() == "id"):
                    continue  # blank line or an optional header
                if len(row) < 2:
                    raise DatasetError(
                        f"{path}:{lineno}: expected `id,name,semantic`, got {row!r}"[:500]
                    )
                fine[row[0].strip()] = (row[1].strip(), row[2].strip() if len(row) > 2 else "")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:  # e.g. a NUL byte, an unterminated quote at end of file
        raise DatasetError(f"{path}: not a CSV file ({e})") from None
    return fine


def _text(entry: dict, key: str) -> str:
    """A text field of a metadata entry: absent or null is "", any other non-string is refused."""
    value = entry.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"{key} must be a string, got {type(value).__name__}")
    return value


def readable_url_name(url_name: str) -> str:
    """`"mango-faux-leather-jacket"` -> `"mango faux leather jacket"` (Polyvore's empty titles)."""
    return " ".join(url_name.replace("-", " ").replace("_", " ").split())


def parse_items(
    raw: Any, where: str, fine: dict[str, tuple[str, str]], report: Report
) -> dict[str, Item]:
    """Items of the metadata dict; entries with an unknown semantic category are reported."""
    if not isinstance(raw, dict):
        report(
            "malformed_entry", where, f"expected a JSON object by item id, got {type(raw).__name__}"
        )
        return {}
    items: dict[str, Item] = {}
    for item_id, entry in raw.items():
        problem = id_problem(item_id)
        if problem:
            report("unsafe_id", f"{where} item {item_id[:40]!r}", problem)
            continue
        if not isinstance(entry, dict):
            report("malformed_entry", f"{where} item {item_id}", "entry is not a JSON object")
            continue
        category = entry.get("semantic_category")
        if not isinstance(category, str) or category not in CATEGORY_INDEX:
            report(
                "unknown_category",
                f"{where} item {item_id}",
                f"semantic_category {category!r} is not one of {', '.join(CATEGORIES)}"[:500],
            )
            continue
        try:
            title, url_name, description = (
                _text(entry, k) for k in ("title", "url_name", "description")
            )
        except TypeError as e:
            report("malformed_entry", f"{where} item {item_id}", str(e))
            continue
        category_id = str(entry.get("category_id") or "")
        fine_name = fine.get(category_id, ("", ""))[0]
        title = title.strip()
        if not title:  # often empty in the release: the url_name carries the same words
            title = readable_url_name(url_name) or fine_name or category
        items[item_id] = Item(
            item_id=item_id,
            title=title,
            description=description.strip(),
            category=category,
            category_id=category_id,
            fine_category=fine_name,
        )
    return items


def load_catalog(root: str | Path) -> Catalog:
    """All items of a Polyvore-layout folder (metadata, fine categories, image folder)."""
    root = Path(root)
    path = root / METADATA_FILE
    fine = read_fine_categories(root)
    items = parse_items(read_json(path, root), str(path), fine, raise_first)
    if not items:
        raise DatasetError(f"{path}: the catalog has no items")
    return Catalog(root=root, items=items, image_dir=root / IMAGE_DIR)


def parse_outfits(raw: Any, where: str, report: Report) -> list[Outfit]:
    """Outfits of `{split}.json`, items sorted by `index` (gaps allowed, duplicates not)."""
    if not isinstance(raw, list):
        report(
            "malformed_entry", where, f"expected a JSON list of outfits, got {type(raw).__name__}"
        )
        return []
    outfits: list[Outfit] = []
    seen: set[str] = set()
    for k, entry in enumerate(raw):
        at = f"{where} outfit #{k}"
        if not isinstance(entry, dict) or "set_id" not in entry or "items" not in entry:
            report("malformed_entry", at, 'expected {"set_id": ..., "items": [...]}')
            continue
        set_id = str(entry["set_id"])
        at = f"{at} (set_id {set_id})"
        if set_id in seen:
            report("duplicate_id", at, f"set_id {set_id} appears more than once")
            continue
        seen.add(set_id)
        pairs = []
        for it in entry["items"] if isinstance(entry["items"], list) else [None]:
            if (
                not isinstance(it, dict)
                or "item_id" not in it
                or not isinstance(it.get("index"), int)
            ):
                report(
                    "malformed_entry", at, f"item entry {it!r} needs item_id and an integer index"
                )
                break
            pairs.append((it["index"], str(it["item_id"])))
        else:
            if not pairs:
                report("empty_outfit", at, "outfit has no items")
                continue
            pairs.sort()
            indices = tuple(i for i, _ in pairs)
            if len(set(indices)) != len(indices):
                report("duplicate_id", at, f"repeated item index in {list(indices)}")
                continue
            outfits.append(Outfit(set_id, tuple(i for _, i in pairs), indices))
    return outfits


def outfit_refs(outfits: list[Outfit]) -> dict[str, str]:
    """`"<set_id>_<index>"` -> item id, the references of the task files."""
    return {
        f"{o.set_id}_{index}": item_id
        for o in outfits
        for index, item_id in zip(o.indices, o.item_ids, strict=True)
    }


def parse_compatibility(
    path: Path, refs: dict[str, str], report: Report
) -> list[CompatibilityQuestion]:
    """Lines `<0|1> <set_id>_<index> ...`; blank lines are skipped."""
    questions: list[CompatibilityQuestion] = []
    problem = file_problem(path)
    if problem:
        report("unsafe_file", str(path), problem)
        return []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        report("unreadable_file", str(path), f"not UTF-8 text ({e.reason} at byte {e.start})")
        return []
    for lineno, line in enumerate(lines, start=1):
        tokens = line.split()
        if not tokens:
            continue
        at = f"{path}:{lineno}"
        if tokens[0] not in ("0", "1") or len(tokens) < 2:
            report(
                "malformed_line", at, f"expected `<0|1> <set_id>_<index> ...`, got {line[:80]!r}"
            )
            continue
        try:
            item_ids = tuple(refs[t] for t in tokens[1:])
        except KeyError as e:
            report(
                "unknown_reference", at, f"{e.args[0]} is not an item of an outfit of this split"
            )
            continue
        questions.append(CompatibilityQuestion(int(tokens[0]), item_ids))
    return questions


def parse_fitb(raw: Any, where: str, refs: dict[str, str], report: Report) -> list[FITBQuestion]:
    """FITB questions; the right answer is the one from the question's own outfit (any position)."""
    if not isinstance(raw, list):
        report(
            "malformed_entry", where, f"expected a JSON list of questions, got {type(raw).__name__}"
        )
        return []
    questions: list[FITBQuestion] = []
    for k, q in enumerate(raw):
        at = f"{where} question #{k}"
        if (
            not isinstance(q, dict)
            or not isinstance(q.get("question"), list)
            or not isinstance(q.get("answers"), list)
            or not q["question"]
            or len(q["answers"]) < 2
        ):
            report("malformed_entry", at, "expected non-empty `question` and >= 2 `answers` lists")
            continue
        try:
            question = tuple(refs[r] for r in q["question"])
            answers = tuple(refs[r] for r in q["answers"])
        except (KeyError, TypeError) as e:
            report(
                "unknown_reference", at, f"{e.args[0]} is not an item of an outfit of this split"
            )
            continue
        set_id = str(q["question"][0]).rsplit("_", 1)[0]
        right = [i for i, r in enumerate(q["answers"]) if str(r).rsplit("_", 1)[0] == set_id]
        if len(right) != 1:
            report(
                "fitb_answer",
                at,
                f"{len(right)} answers are from the question's outfit {set_id}; expected exactly 1",
            )
            continue
        blank = q.get("blank_position", 0)
        if not isinstance(blank, int):
            report("malformed_entry", at, f"blank_position must be an integer, got {blank!r}"[:200])
            continue
        questions.append(FITBQuestion(question, answers, right[0], blank))
    return questions


def check_version(version: str, split: str) -> None:
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def load_split(root: str | Path, version: str, split: str, catalog: Catalog | None = None) -> Split:
    """One split of one version, task references resolved to item ids.

    Task lists are empty where the release has no task file (Polyvore has none for `train`).
    With a `catalog`, every outfit item must be one of its items.
    """
    check_version(version, split)
    folder = Path(root) / version
    path = folder / f"{split}.json"
    outfits = parse_outfits(read_json(path, root), str(path), raise_first)
    if catalog is not None:
        unknown = [(o.set_id, i) for o in outfits for i in o.item_ids if i not in catalog.items]
        if unknown:
            examples = ", ".join(f"{i} (set {s})" for s, i in unknown[:5])
            raise DatasetError(
                f"{path}: {len(unknown)} outfit items are not in {METADATA_FILE}, e.g. {examples}"
            )
    refs = outfit_refs(outfits)
    compat_path = folder / f"compatibility_{split}.txt"
    if compat_path.is_file() and (problem := file_problem(compat_path, Path(root))):
        raise DatasetError(f"{compat_path}: {problem}")
    compatibility = (
        parse_compatibility(compat_path, refs, raise_first) if compat_path.is_file() else []
    )
    fitb_path = folder / f"fill_in_blank_{split}.json"
    fitb = (
        parse_fitb(read_json(fitb_path, root), str(fitb_path), refs, raise_first)
        if fitb_path.is_file()
        else []
    )
    return Split(version, split, outfits, compatibility, fitb)


def load_outfit_titles(root: str | Path) -> dict[str, str]:
    """{set_id: title} from `polyvore_outfit_titles.json` (url_name when the title is empty)."""
    path = Path(root) / OUTFIT_TITLES_FILE
    if not path.is_file():
        return {}
    raw = read_json(path, Path(root))
    if not isinstance(raw, dict):
        raise DatasetError(f"{path}: expected a JSON object by set_id")
    titles = {}
    for set_id, entry in raw.items():
        if not isinstance(entry, dict):
            continue
        try:
            title, url_name = _text(entry, "title"), _text(entry, "url_name")
        except TypeError as e:
            raise DatasetError(f"{path}: set_id {set_id}: {e}") from None
        titles[str(set_id)] = (title or readable_url_name(url_name)).strip()
    return titles
