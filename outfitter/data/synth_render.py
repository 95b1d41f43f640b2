"""Rendering of the synthetic product images, vectorised over a batch of items.

An image is a category silhouette (one of a few jittered variants per category, so the shape
says the category and nothing about the style) on a white background, filled with the item's
colour, overlaid with its pattern (stripes, dots or checks in a lighter or darker shade), with
a soft shading gradient and pixel noise. Rendering is numpy only; JPEG encoding is the cost, so
big catalogs are written by a pool of processes (`write_images`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from outfitter.data.synth_world import COLOURS
from outfitter.data.types import CATEGORIES

N_VARIANTS = 4
CHUNK = 512  # items per rendering task (small enough to stay in cache)
_RGB = np.array([c[1] for c in COLOURS], dtype=np.float32)


def _shape(category: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Silhouette of a category on coordinates u (left-right), v (top-down) in [-1, 1]."""
    au = np.abs(u)
    if category == "tops":
        return ((au < 0.45) & (v > -0.6) & (v < 0.8)) | (
            (au < 0.9) & (v > -0.6) & (v < -0.15 + 0.3 * au)
        )
    if category == "outerwear":
        body = (au < 0.52) & (v > -0.75) & (v < 0.9) & (au > 0.03)
        return body | ((au < 0.95) & (v > -0.75) & (v < 0.45) & (v > -0.75 + 0.6 * (au - 0.5)))
    if category == "bottoms":
        return ((au < 0.45) & (v > -0.85) & (v < -0.5)) | (
            (au > 0.05) & (au < 0.45) & (v > -0.5) & (v < 0.9)
        )
    if category == "all-body":
        return (au < 0.2 + 0.4 * (v + 0.9) / 1.8) & (v > -0.9) & (v < 0.9)
    if category == "shoes":
        return ((u > -0.8) & (u < 0.8) & (v > 0.25) & (v < 0.65)) | (
            (u > -0.8) & (u < -0.25) & (v > -0.45) & (v < 0.3)
        )
    if category == "bags":
        r = np.sqrt(u**2 + (v + 0.2) ** 2)
        return ((au < 0.5 + 0.15 * (v + 0.2)) & (v > -0.2) & (v < 0.7)) | (
            (r > 0.3) & (r < 0.42) & (v < -0.2)
        )
    if category == "hats":
        return ((u**2 + (v - 0.1) ** 2 / 0.5 < 0.25) & (v < 0.1)) | (
            (au < 0.85) & (v > 0.05) & (v < 0.22)
        )
    if category == "jewellery":
        r = np.sqrt(u**2 + v**2)
        return ((r > 0.5) & (r < 0.64)) | (u**2 + (v - 0.62) ** 2 < 0.03)
    if category == "scarves":
        return (np.abs(u - 0.35 * v) < 0.25) & (np.abs(v) < 0.9)
    if category == "sunglasses":
        lens = ((u - 0.45) ** 2 + v**2 < 0.1) | ((u + 0.45) ** 2 + v**2 < 0.1)
        return lens | ((au < 0.2) & (np.abs(v + 0.12) < 0.05))
    if category == "accessories":
        belt = (np.abs(v) < 0.13) & (au < 0.92)
        return belt | ((np.abs(u - 0.55) < 0.18) & (np.abs(v) < 0.24))
    raise ValueError(f"no silhouette for category {category!r}")


@functools.lru_cache(maxsize=4)
def silhouettes(size: int, seed: int = 0) -> np.ndarray:
    """Masks (C, N_VARIANTS, H, W) float32: each category in a few scales and offsets."""
    rng = np.random.default_rng(seed)
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    v, u = np.meshgrid(grid, grid, indexing="ij")
    masks = np.zeros((len(CATEGORIES), N_VARIANTS, size, size), dtype=np.float32)
    for c, category in enumerate(CATEGORIES):
        for k in range(N_VARIANTS):
            scale = 1.0 + 0.12 * (rng.random() - 0.3)
            du, dv = 0.08 * (rng.random(2) - 0.5)
            masks[c, k] = _shape(category, (u - du) * scale, (v - dv) * scale)
    return masks


def render_batch(
    category: np.ndarray, colour: np.ndarray, pattern: np.ndarray, size: int, seed: int
) -> np.ndarray:
    """Images (B, H, W, 3) uint8 of B items given their category, colour and pattern ids.

    Patterns are separable (a row profile and a column profile per item), so drawing them costs
    O(B * (H + W)) before the one (B, H, W, 3) composition.
    """
    rng = np.random.default_rng(seed)
    b = len(category)
    pattern = np.asarray(pattern)
    masks = silhouettes(size)[category, rng.integers(0, N_VARIANTS, b)]  # (B, H, W)
    fill = _RGB[colour] * rng.uniform(0.88, 1.1, (b, 1)) + rng.normal(0, 6, (b, 3))
    fill = np.clip(fill, 0, 255).astype(np.float32)  # (B, 3)
    lighter = rng.random(b) < 0.5
    second = np.where(lighter[:, None], fill + 0.6 * (255 - fill), fill * 0.35)  # (B, 3)

    grid = np.arange(size, dtype=np.float32)
    period = (size / rng.uniform(4, 7, b)).astype(np.float32)[:, None]  # (B, 1)
    phase = rng.random((b, 2), dtype=np.float32)
    px = (grid / period + phase[:, :1]) % 1  # (B, W) position within a period, left-right
    py = (grid / period + phase[:, 1:]) % 1  # (B, H) top-down
    vertical = (rng.random(b) < 0.5)[:, None, None]
    overlay = np.zeros((b, size, size), dtype=bool)  # (B, H, W) True = pattern colour
    for kind in (1, 2, 3):
        k = np.flatnonzero(pattern == kind)
        x, y = px[k][:, None, :], py[k][:, :, None]  # (n, 1, W), (n, H, 1)
        if kind == 1:  # stripes
            overlay[k] = np.where(vertical[k], x < 0.4, y < 0.4)
        elif kind == 2:  # dots
            overlay[k] = (x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.06
        else:  # checks
            overlay[k] = (x < 0.5) ^ (y < 0.5)

    shade = (1.0 - 0.12 * grid / size)[None, :, None, None]  # (1, H, 1, 1) light from above
    cloth = np.where(overlay[..., None], second[:, None, None], fill[:, None, None])  # (B, H, W, 3)
    image = 250.0 + masks[..., None] * (cloth * shade - 250.0)
    noise = rng.normal(0, 5, (16, size, size, 3)).astype(np.float32)  # a bank of noise tiles
    image += noise[rng.integers(0, 16, b)]
    return np.clip(image, 0, 255, out=image).astype(np.uint8)


def _write_chunk(args: tuple) -> int:
    paths, category, colour, pattern, size, seed = args
    images = render_batch(category, colour, pattern, size, seed)
    for path, pixels in zip(paths, images, strict=True):
        Image.fromarray(pixels).save(path, format="JPEG", quality=90)
    return len(paths)


def write_images(
    paths: list[Path],
    category: np.ndarray,
    colour: np.ndarray,
    pattern: np.ndarray,
    size: int,
    seed: int,
    advance: Callable[[int], None] | None = None,
    workers: int | None = None,
) -> None:
    """Render and save one JPEG per path; chunks are seeded by position, so the bytes do not
    depend on the number of worker processes."""
    chunks = [
        (
            paths[s : s + CHUNK],
            category[s : s + CHUNK],
            colour[s : s + CHUNK],
            pattern[s : s + CHUNK],
            size,
            seed * 1_000_003 + s,
        )
        for s in range(0, len(paths), CHUNK)
    ]
    workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
    if workers <= 1 or len(chunks) <= 2:
        done = map(_write_chunk, chunks)
        for n in done:
            if advance:
                advance(n)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for n in pool.map(_write_chunk, chunks):
            if advance:
                advance(n)
