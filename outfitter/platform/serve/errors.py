"""Errors the serving layer turns into 4xx responses, and safe decoding of uploaded images."""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from contextlib import contextmanager

from PIL import Image, UnidentifiedImageError

from outfitter.model.preprocess import shrink_shortest
from outfitter.platform.serve.schemas import Limits


class ServingError(Exception):
    """A request that breaks a rule: answered with `status` naming the field and the rule."""

    def __init__(self, field: str, rule: str, status: int = 422):
        super().__init__(f"{field}: {rule}")
        self.field, self.rule, self.status = field, rule, status

    def __reduce__(self):  # crosses Ray process boundaries intact
        return (type(self), (self.field, self.rule, self.status))


class ModelUnavailable(Exception):
    """No model version is loaded (yet): answered with 503."""


def _raw_b64(data: str, field: str, limits: Limits) -> bytes:
    if data.startswith("data:") and "," in data:  # tolerate data URLs from browsers
        data = data.split(",", 1)[1]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ServingError(field, "is not valid base64") from None
    if len(raw) > limits.max_image_bytes:
        raise ServingError(
            field, f"image is {len(raw)} bytes; the limit is {limits.max_image_bytes}", status=413
        )
    return raw


@contextmanager
def _image_errors(field: str):
    """PIL's failures as ServingErrors naming `field`; bomb warnings are errors here."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except ServingError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ServingError(field, f"image rejected as a decompression bomb ({err})", 413) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as err:
        raise ServingError(field, f"is not a decodable image ({type(err).__name__})") from None


def _open(raw: bytes, field: str, limits: Limits) -> Image.Image:
    """The image's header only (no pixel decoded yet), its size checked against the limit."""
    with _image_errors(field):
        image = Image.open(io.BytesIO(raw))
        width, height = image.size
    if width * height > limits.max_image_pixels:
        raise ServingError(
            field,
            f"image is {width}x{height} pixels; the limit is {limits.max_image_pixels}",
            status=413,
        )
    return image


def _decode(image: Image.Image, field: str, side: int | None) -> Image.Image:
    """Decode to RGB; shrink so the shorter side is `side` (the image tower's first resize)."""
    with _image_errors(field):
        image.load()
        image = image.convert("RGB")
    if side:
        # The CLIP transform's own first step, done before the image is kept or sent anywhere:
        # the tower then sees the pixels it would anyway (`model.preprocess`).
        image = shrink_shortest(image, side)
    return image


def decode_image_b64(data: str, field: str, limits: Limits, side: int | None = None):
    """Decode one base64 image into an RGB PIL image, or raise ServingError naming `field`.

    PIL's decompression-bomb guard stays on (its warnings are errors here), and the pixel count is
    checked from the header before any pixel is decoded.
    """
    return _decode(_open(_raw_b64(data, field, limits), field, limits), field, side)


def decode_images(
    uploads: list[tuple[str, str]], limits: Limits, side: int | None = None
) -> list[Image.Image]:
    """Decode a request's images `(field, base64)`, within one budget of decoded pixels.

    Every header is read first: a request whose images hold more than `max_request_pixels`
    together is refused (413) before any of them is decoded, so a small body of large
    solid-colour PNGs cannot make a replica allocate gigabytes.
    """
    opened = [(f, _open(_raw_b64(data, f, limits), f, limits)) for f, data in uploads]
    total = sum(im.size[0] * im.size[1] for _, im in opened)
    if total > limits.max_request_pixels:
        rule = (
            f"the request's {len(opened)} images hold {total} pixels; the budget per request "
            f"is {limits.max_request_pixels} (max_request_pixels)"
        )
        raise ServingError("items", rule, status=413)
    return [_decode(im, field, side) for field, im in opened]
