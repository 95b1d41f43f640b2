"""Errors the serving layer turns into 4xx responses, and safe decoding of uploaded images."""

from __future__ import annotations

import base64
import binascii
import io
import warnings

from PIL import Image, UnidentifiedImageError

from outfitter.platform.serving.schemas import Limits


class ServingError(Exception):
    """A request that breaks a rule: answered with `status` naming the field and the rule."""

    def __init__(self, field: str, rule: str, status: int = 422):
        super().__init__(f"{field}: {rule}")
        self.field, self.rule, self.status = field, rule, status

    def __reduce__(self):  # crosses Ray process boundaries intact
        return (type(self), (self.field, self.rule, self.status))


class ModelUnavailable(Exception):
    """No model version is loaded (yet): answered with 503."""


def decode_image_b64(data: str, field: str, limits: Limits) -> Image.Image:
    """Decode a base64 image into an RGB PIL image, or raise ServingError naming `field`.

    PIL's decompression-bomb guard stays on (its warnings are errors here), and the pixel count is
    checked from the header before any pixel is decoded.
    """
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
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            width, height = image.size
            if width * height > limits.max_image_pixels:
                raise ServingError(
                    field,
                    f"image is {width}x{height} pixels; the limit is {limits.max_image_pixels}",
                    status=413,
                )
            image.load()
            return image.convert("RGB")
    except ServingError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ServingError(field, f"image rejected as a decompression bomb ({err})", 413) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as err:
        raise ServingError(field, f"is not a decodable image ({type(err).__name__})") from None
