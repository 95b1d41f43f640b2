"""Validation: one broken copy of the real-quirks fixture per kind of problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from outfitter.cli import app
from outfitter.data import DatasetError, check_dataset, load_catalog, validate_dataset


@pytest.fixture
def mini(tmp_path, polyvore_mini) -> Path:
    root = tmp_path / "mini"
    shutil.copytree(polyvore_mini, root)
    for path in root.rglob("*"):  # the fixture files are read-only
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_fixture_is_usable(polyvore_mini):
    report = check_dataset(polyvore_mini)
    assert report.ok and report.counts["items"] == 72
    assert report.counts["nondisjoint/test fitb"] == 6
    assert "disjoint_overlap" in report.warnings  # the fixture's disjoint split shares items
    # the items it parsed are the loader's: a training run reads the metadata once
    assert report.catalog().items == load_catalog(polyvore_mini).items


def _problems(root: Path, **kw) -> dict:
    report = validate_dataset(root, **kw)
    assert not report.ok
    with pytest.raises(DatasetError) as e:
        check_dataset(root, **kw)
    assert "UNUSABLE" in str(e.value)
    return report.errors


def test_missing_image(mini):
    first = sorted((mini / "images").iterdir())[0]
    first.unlink()
    errors = _problems(mini)
    assert errors["missing_image"].count == 1 and first.name in errors["missing_image"].examples[0]


def test_corrupt_and_non_image(mini):
    images = sorted((mini / "images").iterdir())
    images[0].write_bytes(images[0].read_bytes()[:300])  # truncated JPEG
    images[1].write_text("<html>not an image</html>")
    errors = _problems(mini)
    assert errors["corrupt_image"].count == 2
    assert all("cannot decode image" in e for e in errors["corrupt_image"].examples)


def test_truncated_json(mini):
    path = mini / "nondisjoint" / "train.json"
    path.write_text(path.read_text()[:500])
    errors = _problems(mini)
    (example,) = errors["unreadable_file"].examples
    assert example.startswith(f"{path}:1:") and "truncated" in example


def test_unknown_item(mini):
    _edit_json(
        mini / "nondisjoint" / "valid.json",
        lambda d: d[0]["items"].append({"item_id": "999", "index": 9}),
    )
    assert "item 999 not in metadata" in _problems(mini)["unknown_item"].examples[0]


def test_unknown_reference_and_malformed_line(mini):
    path = mini / "nondisjoint" / "compatibility_test.txt"
    path.write_text(path.read_text() + "1 367319878_1 123_4\nyes 367319878_1\n")
    errors = _problems(mini)
    n = len(path.read_text().splitlines())
    assert errors["unknown_reference"].examples[0].startswith(f"{path}:{n - 1}: 123_4")
    assert errors["malformed_line"].examples[0].startswith(f"{path}:{n}:")


def test_empty_outfit_and_duplicate_set_id(mini):
    def edit(d):
        d[0]["items"] = []
        d.append(dict(d[1]))

    _edit_json(mini / "disjoint" / "test.json", edit)
    errors = _problems(mini)
    assert errors["empty_outfit"].count == 1 and errors["duplicate_id"].count == 1


def test_duplicate_item_id(mini):
    path = mini / "polyvore_item_metadata.json"
    text = path.read_text()
    first = text[1 : text.index("}, ") + 1]  # the first `"id": {...}` entry, repeated
    path.write_text("{" + first + ", " + text[1:])
    assert "appears more than once" in _problems(mini)["duplicate_id"].examples[0]


def test_unknown_category_and_bad_fitb(mini):
    def no_right_answer(d):  # no answer from the question's own outfit (set 111575186)
        d[0]["answers"] = ["669521254_1", "514359638_1", "709862274_1", "669521254_3"]

    _edit_json(
        mini / "polyvore_item_metadata.json",
        lambda d: d["100000466"].update(semantic_category="gloves"),
    )
    _edit_json(mini / "nondisjoint" / "fill_in_blank_valid.json", no_right_answer)
    errors = _problems(mini)
    assert "'gloves'" in errors["unknown_category"].examples[0]
    assert validate_dataset(mini).catalog() is None  # the loader refuses this metadata
    assert errors["fitb_answer"].count == 1


def test_missing_split_file(mini):
    (mini / "disjoint" / "valid.json").unlink()
    assert "valid.json" in _problems(mini)["missing_file"].examples[0]


def test_decode_sample_and_full(synth_dir):
    report = validate_dataset(synth_dir, sample=10)
    assert report.ok and report.counts["images decoded"] == 10
    assert report.counts["images present"] == report.counts["items"]
    calls = []
    full = validate_dataset(
        synth_dir, full=True, progress=lambda d, t: calls.append(t) or (lambda n: None)
    )
    assert full.counts["images decoded"] == full.counts["items"] == calls[0]


def test_cli_exit_codes(mini, polyvore_mini):
    runner = CliRunner()
    ok = runner.invoke(app, ["data", "validate", str(polyvore_mini)])
    assert ok.exit_code == 0 and "usable" in ok.output
    (mini / "nondisjoint" / "test.json").write_text("[{")
    bad = runner.invoke(app, ["data", "validate", str(mini), "--full"])
    assert bad.exit_code == 1 and "UNUSABLE" in bad.output and "unreadable_file" in bad.output


def test_a_check_of_one_version_reads_only_that_version(mini):
    """A training run checks the version it trains on: a broken file of the other version does
    not stop it, a broken file of its own does, and an absent version is an error, not a
    warning."""
    (mini / "disjoint" / "train.json").write_text("{not json")
    assert not validate_dataset(mini, sample=0).ok
    report = check_dataset(mini, sample=0, versions=["nondisjoint"])
    assert "nondisjoint/train outfits" in report.counts
    assert not any(key.startswith("disjoint/") for key in report.counts)
    assert "disjoint_overlap" not in report.warnings  # a check of the disjoint version only
    with pytest.raises(DatasetError):
        check_dataset(mini, sample=0, versions=["disjoint"])
    shutil.rmtree(mini / "disjoint")
    errors = _problems(mini, sample=0, versions=["disjoint"])
    assert "disjoint/ does not exist" in errors["missing_file"].examples[0]
    with pytest.raises(ValueError, match="versions must be among"):
        validate_dataset(mini, versions=["nondisjoint", "v2"])
