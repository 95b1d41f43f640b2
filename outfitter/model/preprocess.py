"""What a model sees of an item's image, defined once per model kind.

Training features (the frozen towers' cached features, `InputBuilder.item_inputs`), `evaluate`,
the faiss index and a new item in a Serve request all go through these functions, so a catalog
item and the same item uploaded in a request reach the model as the same tensors
(`tests/test_parity.py`). The item's text has one definition too: `outfitter.data.types.item_text`.

- Hybrid models: the CLIP towers' own open_clip transform (`Towers.pixels`). A server may shrink a
  large upload beforehand with `shrink_shortest`, which is that transform's first step (open_clip's
  default `resize_mode="shortest"`: torchvision `Resize(side, BICUBIC)`), so the transform then
  resizes nothing and the tower sees the pixels it would have seen anyway.
- The Sun et al. baseline: `squash_pixels` (the whole image squashed to `size` x `size`, bilinear,
  as it was trained) and `normalise` (ImageNet mean and std).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
SQUASH_RESAMPLE = Image.Resampling.BILINEAR  # the Sun 2020 model's resize, training and serving


def rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def squash_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """uint8 pixels (3, size, size) of an image squashed to `size` x `size` (Sun 2020)."""
    image = rgb(image)
    if image.size != (size, size):
        image = image.resize((size, size), SQUASH_RESAMPLE)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (..., 3, H, W) -> float, ImageNet-normalised (the Sun 2020 CNN's input)."""
    return (pixels.float() / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def shrink_shortest(image: Image.Image, side: int) -> Image.Image:
    """`image` with its shorter side resized to `side` (bicubic), when it is longer: the first
    step of the CLIP towers' transform, done by the same torchvision call, so doing it early
    (a server keeps the small image, not the upload) changes no pixel the tower sees."""
    if min(image.size) <= side:
        return image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import resize

    return resize(image, side, interpolation=InterpolationMode.BICUBIC)
