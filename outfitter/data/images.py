"""Safe image decoding: every failure becomes a `DatasetError` naming the file.

PIL's decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`) is kept, and its
`DecompressionBombWarning` (images between the limit and twice the limit) is treated as an error
too: a catalog image is a product photo, never a 90-megapixel file.

An image that is a symlink is followed only to a file in its own folder: a catalog cannot make
the loaders (or the image route, which sends the file's bytes) read a file elsewhere.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from outfitter.data.errors import DatasetError

_DECODE_ERRORS = (
    OSError,  # truncated / corrupt data ("image file is truncated", "broken data stream")
    UnidentifiedImageError,  # not an image at all
    SyntaxError,  # PIL raises it for some malformed headers
    ValueError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


def confined(path: Path) -> Path:
    """`path`, checked: a symlink must resolve to a file inside the folder it sits in."""
    if path.is_symlink():
        target, folder = path.resolve(), path.parent.resolve()
        if not target.is_relative_to(folder):
            raise DatasetError(
                f"{path}: a symlink to {target}, outside {folder}; refusing to follow it"
            )
    return path


def image_file(image_dir: str | Path, item_id: str) -> Path:
    """The image file of `item_id` under `image_dir` (`<id>.jpg`), checked to stay there.

    Raises:
        DatasetError: the id cannot name a file there, or the file is a symlink out.
    """
    from outfitter.data.polyvore import id_problem

    problem = id_problem(item_id)
    if problem:
        raise DatasetError(f"{image_dir}: {problem}")
    return confined(Path(image_dir) / f"{item_id}.jpg")


def _open_checked(path: Path) -> Image.Image:
    if not path.is_file():
        raise DatasetError(f"{path}: image file not found")
    confined(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
            image.load()
        except _DECODE_ERRORS as e:
            raise DatasetError(
                f"{path}: cannot decode image ({type(e).__name__}: {e}); "
                "replace the file or remove the item"
            ) from None
    return image


def load_image(path: str | Path, size: int | None = None) -> Image.Image:
    """Decode an image as RGB, optionally resized to `size` x `size` (a thumbnail to look at;
    what a model reads is sized by `outfitter.model.preprocess`).

    Raises:
        DatasetError: the file is missing, truncated, not an image, or a decompression bomb.
    """
    image = _open_checked(Path(path))
    if image.mode != "RGB":
        image = image.convert("RGB")
    if size is not None:
        if size <= 0:
            raise ValueError(f"image size must be positive, got {size}")
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BILINEAR)
    return image


def verify_image(path: str | Path) -> None:
    """Fully decode an image and discard it (validation); raises `DatasetError` when it fails."""
    _open_checked(Path(path)).close()
