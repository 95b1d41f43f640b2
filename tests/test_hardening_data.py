"""Untrusted catalogs: unsafe item ids, symlinks out of the dataset, oversized files, and a
one-line gzip are refused with clear errors, by the loaders and the validator alike."""

from __future__ import annotations

import gzip
import json
import shutil
import tracemalloc
from pathlib import Path

import pytest

from outfitter.data import DatasetError, load_catalog, load_split
from outfitter.data import polyvore as P
from outfitter.data.amazon import read_amazon
from outfitter.data.images import image_file, load_image, verify_image
from outfitter.data.validate import validate_dataset

UNSAFE_IDS = ["../../etc/passwd", "..", "a/b", "a\\b", "nul\x00id", "tab\tid", " ", "x" * 201]


@pytest.fixture()
def mini(tmp_path, polyvore_mini) -> Path:
    out = tmp_path / "mini"
    shutil.copytree(polyvore_mini, out)
    for path in out.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return out


def _rename_first_item(root: Path, new_id: str) -> None:
    path = root / P.METADATA_FILE
    data = json.loads(path.read_text())
    old = next(iter(data))
    data = {(new_id if k == old else k): v for k, v in data.items()}
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("item_id", UNSAFE_IDS)
def test_unsafe_item_ids_are_refused_on_load(mini, item_id):
    _rename_first_item(mini, item_id)
    with pytest.raises(DatasetError, match=r"unsafe_id"):
        load_catalog(mini)
    report = validate_dataset(mini, sample=0)
    assert "unsafe_id" in report.errors, report.format()


@pytest.mark.parametrize("item_id", UNSAFE_IDS)
def test_unsafe_asins_are_refused(tmp_path, item_id):
    record = {"asin": item_id, "title": "t", "categories": [["C", "Women", "Dresses"]]}
    (tmp_path / "meta.json").write_text(json.dumps(record) + "\n")
    with pytest.raises(DatasetError, match=r"meta\.json:1: `asin` .* is not a usable item id"):
        read_amazon(tmp_path)


@pytest.mark.parametrize("item_id", UNSAFE_IDS)
def test_image_file_never_leaves_the_image_folder(tmp_path, item_id):
    with pytest.raises(DatasetError):
        image_file(tmp_path, item_id)
    assert image_file(tmp_path, "123") == tmp_path / "123.jpg"


def test_a_symlinked_image_pointing_out_is_refused(mini, tmp_path):
    secret = tmp_path / "secret.jpg"
    shutil.copy(next((mini / P.IMAGE_DIR).iterdir()), secret)  # a real image, outside
    image = sorted((mini / P.IMAGE_DIR).iterdir())[0]
    image.unlink()
    image.symlink_to(secret)
    for fn in (load_image, verify_image):
        with pytest.raises(DatasetError, match="outside .*refusing to follow it"):
            fn(image)
    with pytest.raises(DatasetError, match="outside"):
        image_file(mini / P.IMAGE_DIR, image.stem)
    report = validate_dataset(mini, sample=0)  # found without decoding a sample
    assert "unsafe_file" in report.errors and image.name in report.format(), report.format()


def test_a_symlink_inside_the_image_folder_is_followed(mini):
    images = sorted((mini / P.IMAGE_DIR).iterdir())
    images[0].unlink()
    images[0].symlink_to(images[1].name)  # a deduplicated image: same folder
    assert load_image(images[0]).size == load_image(images[1]).size
    assert "unsafe_file" not in validate_dataset(mini, sample=0).problems


@pytest.mark.parametrize("name", [P.METADATA_FILE, "nondisjoint/valid.json"])
def test_a_dataset_file_symlinked_out_of_the_folder_is_refused(mini, tmp_path, name):
    outside = tmp_path / "elsewhere.json"
    shutil.move(mini / name, outside)
    (mini / name).symlink_to(outside)
    with pytest.raises(DatasetError, match="outside the dataset folder"):
        catalog = load_catalog(mini)
        load_split(mini, "nondisjoint", "valid", catalog)
    assert "unsafe_file" in validate_dataset(mini, sample=0).errors


@pytest.mark.parametrize("name", [P.METADATA_FILE, "nondisjoint/compatibility_valid.txt"])
def test_files_over_the_size_cap_are_refused_before_reading(mini, monkeypatch, name):
    cap = max(p.stat().st_size for p in mini.rglob("*") if p.is_file() and p.suffix != ".jpg")
    with open(mini / name, "a") as f:
        f.write("\n" * (cap + 1 - (mini / name).stat().st_size))  # whitespace: still valid
    size = (mini / name).stat().st_size
    monkeypatch.setenv("OUTFITTER_MAX_FILE_BYTES", str(cap))
    with pytest.raises(DatasetError, match=f"{size:,} bytes, over the {cap:,}-byte limit"):
        catalog = load_catalog(mini)
        load_split(mini, "nondisjoint", "valid", catalog)
    assert "unsafe_file" in validate_dataset(mini, sample=0).errors
    monkeypatch.setenv("OUTFITTER_MAX_FILE_BYTES", str(size))
    load_split(mini, "nondisjoint", "valid", load_catalog(mini))


def test_a_one_line_gzip_is_streamed_not_read_whole(tmp_path):
    """64 MiB of one line compresses to ~64 KiB; the reader stops at its line cap."""
    path = tmp_path / "meta.json.gz"
    with gzip.open(path, "wb") as f:
        f.write(b'{"asin": "B1", "title": "' + b"a" * (64 << 20))
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError, match=r"meta\.json\.gz:1: line longer than 1,048,576"):
            read_amazon(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"peak {peak / 2**20:.0f} MiB"
