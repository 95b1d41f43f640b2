"""Safe image decoding: every bad file is a DatasetError naming it; the bomb limit is kept."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from outfitter.data import DatasetError
from outfitter.data.images import load_image, verify_image


def _jpeg(size=(40, 30), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 128).save(buf, format="JPEG" if mode != "RGBA" else "PNG")
    return buf.getvalue()


def test_load_rgb_and_resize(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(_jpeg(mode="L"))
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (40, 30)
    assert load_image(path, size=16).size == (16, 16)
    verify_image(path)


@pytest.mark.parametrize(
    "content",
    [lambda: _jpeg()[:200], lambda: b"\x89PNG not really", lambda: b"", lambda: b"hello world"],
    ids=["truncated", "bad-header", "empty", "text"],
)
def test_bad_files(tmp_path, content):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content())
    with pytest.raises(DatasetError, match=r"bad\.jpg: cannot decode image"):
        load_image(path)


def test_missing(tmp_path):
    with pytest.raises(DatasetError, match="image file not found"):
        load_image(tmp_path / "nope.jpg")


def test_decompression_bomb(tmp_path, monkeypatch):
    path = tmp_path / "big.jpg"
    path.write_bytes(_jpeg(size=(100, 100)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # 10,000 px: between the limit and 2x
    with pytest.raises(DatasetError, match="DecompressionBombWarning"):
        load_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # beyond 2x: PIL's own error
    with pytest.raises(DatasetError, match="DecompressionBombError"):
        load_image(path)
