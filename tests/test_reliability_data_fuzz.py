"""Bad dataset input, fuzzed (hypothesis): the Polyvore loader and validator either load cleanly
or raise `DatasetError` naming the file (and the line where there is one); nothing else escapes.

Each property mutates one file of a private copy of the real-quirks fixture, runs the loader
(`load_catalog`, `load_outfit_titles`, every `load_split`) and the validator, then restores the
file. The validator must never raise, and must call the dataset unusable whenever the loader
refuses it ("valid" means "loads"). Example counts are bounded so the module runs in seconds.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
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
MIN_CASES = 50  # each property must really execute at least this many cases (counted)
CASES: dict[str, int] = {}  # test name -> cases executed in this session


def counted(test):
    """Count the cases a hypothesis test executes and fail it below MIN_CASES.

    `max_examples` is a ceiling: hypothesis stops early when it runs out of distinct inputs or
    rejects them, so a configured 60 can mean 3. The body is wrapped through hypothesis's
    reassignable `inner_test`; the outer check keeps the test's pytest signature (fixtures).
    """
    inner = test.hypothesis.inner_test

    @functools.wraps(inner)
    def counting(*args, **kwargs):
        CASES[test.__name__] = CASES.get(test.__name__, 0) + 1
        return inner(*args, **kwargs)

    test.hypothesis.inner_test = counting

    def check(*args, **kwargs):
        CASES[test.__name__] = 0
        test(*args, **kwargs)
        ran = CASES[test.__name__]
        print(f"\n{test.__name__}: {ran} cases executed")
        assert ran >= MIN_CASES, f"{test.__name__} executed {ran} cases; at least {MIN_CASES}"

    check.__name__, check.__doc__, check.__module__ = test.__name__, test.__doc__, test.__module__
    check.__signature__ = inspect.signature(test)
    return check


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


@counted
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


@counted
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


@counted
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


@counted
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


@counted
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


@counted
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


@counted
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


# ---------------------------------------------------------------- the case counter itself


def test_the_case_counter_fails_a_short_run():
    """Three distinct inputs exist, so hypothesis stops after three cases: counted, it fails."""

    @counted
    @FUZZ
    @given(x=st.sampled_from([1, 2, 3]))
    def test_tiny(x):
        assert x in (1, 2, 3)

    with pytest.raises(AssertionError, match="executed 3 cases; at least 50"):
        test_tiny()


# ---------------------------------------------------------------- the Amazon reader


@pytest.fixture(scope="module")
def amazon_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-amazon")


_TOPS = [["Clothing, Shoes & Jewelry", "Women", "Clothing", "Tops & Tees"]]
_SHOES = [["Clothing, Shoes & Jewelry", "Women", "Shoes", "Sandals"]]
amazon_ids = st.sampled_from(["B001", "B002", "B003", "../B004", "B0/05", "B\x0006", "..", ""])
amazon_records = st.fixed_dictionaries(
    {"asin": amazon_ids | json_values},
    optional={
        "categories": st.sampled_from([_TOPS, _SHOES]) | json_values,
        "title": st.text(max_size=20) | json_values,
        "description": st.text(max_size=20) | json_values,
        "related": st.fixed_dictionaries(
            {}, optional={"also_bought": st.lists(amazon_ids, max_size=3),
                          "bought_together": st.lists(amazon_ids, max_size=3) | json_values}
        ) | json_values,
    },
)  # fmt: skip
amazon_lines = st.lists(
    amazon_records.map(json.dumps)
    | amazon_records.map(repr)  # the 2014 dump's Python literals
    | st.text(max_size=40),
    min_size=1,
    max_size=6,
)


@counted
@FUZZ
@given(lines=amazon_lines, gz=st.booleans(), cut=st.sampled_from([None, 0.3, 0.9]))
def test_amazon_reader_loads_or_names_the_line(amazon_dir, lines, gz, cut):
    """Any McAuley-style file, plain or gzip, whole or cut: `read_amazon` loads it or raises a
    `DatasetError` naming the file; the validator never raises and agrees on a refusal."""
    import gzip

    from outfitter.data.amazon import read_amazon

    for old in amazon_dir.iterdir():
        old.unlink()
    raw = "\n".join(lines).encode("utf-8", "surrogatepass")
    if gz:
        raw = gzip.compress(raw)
    if cut is not None:
        raw = raw[: int(len(raw) * cut)]
    path = amazon_dir / ("meta_Clothing.json.gz" if gz else "meta_Clothing.json")
    path.write_bytes(raw)
    try:
        data = read_amazon(amazon_dir)
    except DatasetError as err:
        assert str(path) in str(err), err
        assert not validate_dataset(amazon_dir, sample=0).ok
        return
    for item_id in data.catalog.items:  # every id that loads names a file inside images/
        assert P.id_problem(item_id) is None, item_id
    validate_dataset(amazon_dir, sample=0)
