"""Bad dataset input, fuzzed (hypothesis): the Polyvore loader and validator either load cleanly
or raise `DatasetError` naming the file (and the line where there is one); nothing else escapes.

Each property mutates one file of a private copy of the real-quirks fixture, runs the loader
(`load_catalog`, `load_outfit_titles`, every `load_split`) and the validator, then restores the
file. The validator must never raise, and must call the dataset unusable whenever the loader
refuses it ("valid" means "loads"). Example counts are bounded so the module runs in seconds.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from outfitter.data import DatasetError, load_catalog, load_outfit_titles, load_split
from outfitter.data import polyvore as P
from outfitter.data.images import load_image, verify_image
from outfitter.data.validate import validate_dataset

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,  # the same cases on every run: a failure reproduces
)
JSON_FILES = [
    P.METADATA_FILE,
    P.OUTFIT_TITLES_FILE,
    "nondisjoint/train.json",
    "nondisjoint/valid.json",
    "nondisjoint/fill_in_blank_valid.json",
    "disjoint/test.json",
]
TEXT_FILES = ["nondisjoint/compatibility_valid.txt", P.CATEGORIES_FILE]

# Any JSON value: what a corrupt export or a hand-edited file may hold in place of the real one.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory, polyvore_mini) -> Path:
    """A writable copy of the fixture; each example edits one file and puts it back."""
    out = tmp_path_factory.mktemp("fuzz") / "mini"
    shutil.copytree(polyvore_mini, out)
    for path in out.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return out


@contextlib.contextmanager
def replaced(path: Path, content: bytes):
    original = path.read_bytes()
    path.write_bytes(content)
    try:
        yield path
    finally:
        path.write_bytes(original)


def load_everything(root: Path) -> None:
    """Every loader entry point over every file of the folder."""
    catalog = load_catalog(root)
    load_outfit_titles(root)
    for version in P.VERSIONS:
        for split in P.SPLITS:
            if (root / version / f"{split}.json").is_file():
                load_split(root, version, split, catalog)


def outcome(root: Path, changed: Path) -> DatasetError | None:
    """Load and validate; checks the shared contract and returns the loader's error, if any."""
    try:
        load_everything(root)
        error = None
    except DatasetError as err:  # any other exception type fails the test here
        error = err
    if error is not None:
        assert str(root) in str(error), f"error does not name a file: {error}"
    report = validate_dataset(root, sample=0)  # must not raise either
    if changed.name != P.OUTFIT_TITLES_FILE:  # optional file, not used for training or checked
        assert report.ok == (error is None), (
            f"loader and validator disagree: loader {error}; validator {report.format()}"
        )
    return error


# ---------------------------------------------------------------- corrupted JSON


@FUZZ
@given(name=st.sampled_from(JSON_FILES), cut=st.floats(0.0, 0.999))
def test_truncated_json_names_file_line_and_column(root, name, cut):
    path = root / name
    data = path.read_bytes()
    with replaced(path, data[: int(len(data) * cut)]):
        error = outcome(root, path)
    # invalid JSON at line:column, or a cut inside a multi-byte character (at byte N)
    where = re.escape(str(path))
    assert re.search(rf"{where}:\d+:\d+: invalid JSON|{where}: not UTF-8 .* at byte", str(error))


@FUZZ
@given(name=st.sampled_from(JSON_FILES + TEXT_FILES), junk=st.binary(min_size=1, max_size=300))
@example(name=P.METADATA_FILE, junk=b"\xff\xfe\x00garbage")
@example(name=P.CATEGORIES_FILE, junk=b"11,Tops,\xe9t\xe9\n")  # Latin-1, not UTF-8
@example(name=P.METADATA_FILE, junk=b"[" * 100_000)  # nesting deeper than the parser's stack
@example(name=P.METADATA_FILE, junk=b'{"1": ' + b"9" * 5000 + b"}")  # int over the digit limit
def test_binary_garbage_is_a_dataset_error(root, name, junk):
    path = root / name
    with replaced(path, junk):
        outcome(root, path)


@FUZZ
@given(name=st.sampled_from(JSON_FILES), value=json_values)
def test_any_json_document_in_place_of_a_file(root, name, value):
    path = root / name
    with replaced(path, json.dumps(value).encode()):
        outcome(root, path)


def _entries(data):
    """(container, key) pairs of the entries of a loaded Polyvore file, and of their items."""
    if isinstance(data, dict):
        return [(data, k) for k in data]
    out = [(data, i) for i in range(len(data))]
    for entry in data:
        if isinstance(entry.get("items"), list):
            out.extend((entry["items"], i) for i in range(len(entry["items"])))
    return out


@FUZZ
@given(
    name=st.sampled_from(JSON_FILES),
    pick=st.integers(0, 10_000),
    field=st.sampled_from(
        [
            "title",
            "description",
            "url_name",
            "semantic_category",
            "category_id",
            "set_id",
            "items",
            "item_id",
            "index",
            "question",
            "answers",
            "blank_position",
            "catgeories",
        ]
    ),  # fmt: skip
    action=st.sampled_from(["delete", "replace"]),
    value=json_values,
)
@example(P.METADATA_FILE, 0, "title", "replace", 5)
@example(P.METADATA_FILE, 0, "semantic_category", "replace", ["tops"])
@example(P.METADATA_FILE, 0, "url_name", "replace", {"a": 1})
@example("nondisjoint/fill_in_blank_valid.json", 0, "blank_position", "replace", "second")
@example(P.OUTFIT_TITLES_FILE, 0, "title", "replace", 7)
def test_wrong_types_and_missing_keys_in_entries(root, name, pick, field, action, value):
    path = root / name
    data = json.loads(path.read_text())
    container, key = _entries(data)[pick % len(_entries(data))]
    entry = container[key]
    if not isinstance(entry, dict):
        return
    if action == "delete":
        entry.pop(field, None)
    else:
        entry[field] = value
    with replaced(path, json.dumps(data).encode()):
        outcome(root, path)


@FUZZ
@given(
    name=st.sampled_from(TEXT_FILES),
    lines=st.lists(st.text(max_size=40), min_size=1, max_size=5),
)
def test_task_and_category_lines(root, name, lines):
    path = root / name
    extra = "\n".join(lines).encode("utf-8", "surrogatepass")
    with replaced(path, path.read_bytes() + b"\n" + extra):
        error = outcome(root, path)
    if error is not None and name.endswith(".txt"):
        assert re.search(rf"{re.escape(str(path))}:\d+:", str(error)), error


# ---------------------------------------------------------------- unicode and huge titles


@FUZZ
@given(
    title=st.text(min_size=1, max_size=30).filter(lambda t: t.strip()),
    repeat=st.sampled_from([1, 100, 40_000]),  # up to ~1 MB of title
)
def test_unicode_and_huge_titles_load_intact(root, title, repeat):
    path = root / P.METADATA_FILE
    data = json.loads(path.read_text())
    item_id = next(iter(data))
    data[item_id]["title"] = title * repeat
    raw = json.dumps(data).encode()  # \u escapes: lone surrogates survive the round trip
    with replaced(path, raw):
        assert outcome(root, path) is None
        assert load_catalog(root).items[item_id].title == (title * repeat).strip()


# ---------------------------------------------------------------- truncated and non-image files


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (120, 30, 200)).save(buf, "JPEG")
    return buf.getvalue()


@FUZZ
@given(
    kind=st.sampled_from(["truncated", "garbage", "garbage-after-header"]),
    cut=st.integers(0, 600),
    junk=st.binary(max_size=200),
)
def test_truncated_or_non_image_files(root, kind, cut, junk):
    good = _jpeg()
    content = {
        "truncated": good[: min(cut, len(good) - 1)],
        "garbage": junk,
        "garbage-after-header": good[:20] + junk,
    }[kind]
    image = sorted((root / P.IMAGE_DIR).iterdir())[0]
    with replaced(image, content):
        refused = []
        for fn in (load_image, verify_image):
            try:
                fn(image)
            except DatasetError as err:
                assert str(image) in str(err) and "cannot decode image" in str(err)
                refused.append(fn.__name__)
        report = validate_dataset(root, full=True)
    assert refused in ([], ["load_image", "verify_image"]), refused
    assert report.ok == (not refused), report.format()
    if refused:
        assert set(report.errors) == {"corrupt_image"}, report.format()
        assert image.name in report.errors["corrupt_image"].examples[0]
