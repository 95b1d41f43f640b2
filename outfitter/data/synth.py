"""The synthetic catalog: a benchmark in the Polyvore Outfits layout (or the Amazon format).

`synthesize(out, n_outfits, seed)` writes everything the real release has (item metadata,
outfit titles, categories.csv, images, `nondisjoint/` and `disjoint/` with their splits and task
files), so the demo, the tests and the benchmarks go through the same loader as the real data.
What makes it a benchmark (rules that need both modalities, hard negatives, label noise) is in
`synth_world` and `synth_outfits`; the images are drawn by `synth_render`. Same seed, same bytes.
"""

from __future__ import annotations

import csv
import json
import shutil
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from outfitter.data import polyvore
from outfitter.data.errors import DatasetError
from outfitter.data.synth_amazon import AMAZON_FILE
from outfitter.data.synth_outfits import SplitTasks, SynthOutfit, make_outfits, split_members
from outfitter.data.synth_render import write_images
from outfitter.data.synth_world import (
    FINE_IDS,
    NOUNS,
    ItemTable,
    ItemText,
    fine_categories,
    make_texts,
)
from outfitter.data.types import CATEGORIES

DEFAULT_OUTFITS = 2000  # the demo size: ~9k items, a few seconds to generate
FORMATS = ("polyvore", "amazon")
EMPTY_TITLE = 0.05  # Polyvore quirk: items whose title is empty (the url_name has the words)
OUTFIT_NAMES = ("Weekend look", "My style", "New in", "Daily outfit", "Favourites", "Untitled")


@dataclass
class World:
    """Everything sampled before any file is written."""

    table: ItemTable
    outfits: list[SynthOutfit]
    item_ids: list[str]
    texts: list[ItemText]


def sample_world(n_outfits: int, seed: int) -> World:
    if n_outfits < 10:
        raise ValueError(f"n_outfits={n_outfits}; the synthetic catalog needs at least 10 outfits")
    rng = np.random.default_rng(seed)
    table, outfits = make_outfits(n_outfits, rng)
    item_ids = [
        str(i) for i in rng.choice(900_000_000, size=len(table), replace=False) + 100_000_000
    ]
    for o, set_id in zip(
        outfits, rng.choice(900_000_000, size=len(outfits), replace=False), strict=True
    ):
        o.set_id = str(set_id + 100_000_000)
    return World(table, outfits, item_ids, make_texts(table, rng))


def _progress(enabled: bool):
    if not enabled:
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )


def _prepare(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DatasetError(
                f"{out} is not empty; choose a new folder or pass overwrite (--overwrite)"
            )
        for name in (polyvore.IMAGE_DIR, *polyvore.VERSIONS):
            shutil.rmtree(out / name, ignore_errors=True)
        files = (polyvore.METADATA_FILE, polyvore.OUTFIT_TITLES_FILE, polyvore.CATEGORIES_FILE)
        for name in (*files, AMAZON_FILE):
            (out / name).unlink(missing_ok=True)
    (out / polyvore.IMAGE_DIR).mkdir(parents=True, exist_ok=True)


def _dump(path: Path, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)


def write_polyvore_metadata(out: Path, world: World, rng: np.random.Generator) -> None:
    t = world.table
    fine = {(cat, k): name for cat in CATEGORIES for k, (_, name) in enumerate(NOUNS[cat])}
    empty = rng.random(len(t)) < EMPTY_TITLE
    meta = {}
    for i, item_id in enumerate(world.item_ids):
        cat = CATEGORIES[t.category[i]]
        text = world.texts[i]
        meta[item_id] = {
            "url_name": text.title.replace(" ", "-"),
            "description": text.description,
            "catgeories": ["Women's Fashion", fine[(cat, text.noun)]],  # sic, as published
            "title": "" if empty[i] else text.title,
            "related": [fine[(cat, text.noun)]],
            "category_id": str(FINE_IDS[(cat, text.noun)]),
            "semantic_category": cat,
        }
    _dump(out / polyvore.METADATA_FILE, meta)
    names = rng.integers(len(OUTFIT_NAMES), size=len(world.outfits))
    titles = {
        o.set_id: {"url_name": f"set-{o.set_id}", "title": f"{OUTFIT_NAMES[n]} {k}"}
        for k, (o, n) in enumerate(zip(world.outfits, names, strict=True))
    }
    _dump(out / polyvore.OUTFIT_TITLES_FILE, titles)
    with open(out / polyvore.CATEGORIES_FILE, "w", encoding="utf-8", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(fine_categories())


def write_polyvore_splits(out: Path, world: World, seed: int) -> dict[str, int]:
    """Outfits and task files of both versions; returns counts for the summary."""
    counts = {}
    members = split_members(world.outfits, np.random.default_rng([seed, 1]))
    for v, version in enumerate(polyvore.VERSIONS):
        folder = out / version
        folder.mkdir(exist_ok=True)
        for s, split in enumerate(polyvore.SPLITS):
            ks = members[version][split]
            rows = [
                {
                    "items": [
                        {"item_id": world.item_ids[i], "index": idx}
                        for i, idx in zip(
                            world.outfits[k].items, world.outfits[k].indices, strict=True
                        )
                    ],
                    "set_id": world.outfits[k].set_id,
                }
                for k in ks
            ]
            _dump(folder / f"{split}.json", rows)
            counts[f"{version}/{split}"] = len(ks)
            if split == "train" and version == "disjoint":
                continue  # like the release: no train task files under disjoint/
            lines, fitb = SplitTasks(
                world.table, world.outfits, ks, seed=seed * 10 + v * 3 + s
            ).build()
            (folder / f"compatibility_{split}.txt").write_text(
                "\n".join(lines) + "\n", encoding="utf-8"
            )
            _dump(folder / f"fill_in_blank_{split}.json", fitb)
    return counts


def synthesize(
    out: str | Path,
    n_outfits: int = DEFAULT_OUTFITS,
    seed: int = 0,
    image_size: int = 64,
    fmt: str = "polyvore",
    *,
    progress: bool = False,
    overwrite: bool = False,
    workers: int | None = None,
) -> Path:
    """Write a synthetic catalog of `n_outfits` outfits (all splits) to `out`.

    Args:
        fmt: "polyvore" (the Polyvore Outfits layout) or "amazon" (McAuley co-purchase metadata).
        progress: show rich progress bars (the CLI does).
        overwrite: replace a previous catalog in `out` instead of refusing a non-empty folder.
        workers: image-writing processes (default: the CPU count); the bytes do not depend on it.

    Returns:
        `out`, the dataset folder.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if not 16 <= image_size <= 512:
        raise ValueError(f"image_size={image_size}; choose 16..512 pixels")
    out = Path(out)
    _prepare(out, overwrite)
    with _progress(progress) as bar:
        step = bar.add_task("sampling outfits and writing metadata", total=1) if bar else None
        world = sample_world(n_outfits, seed)
        rng = np.random.default_rng([seed, 2])
        if fmt == "polyvore":
            write_polyvore_metadata(out, world, rng)
            write_polyvore_splits(out, world, seed)
            names = world.item_ids
        else:
            from outfitter.data.synth_amazon import write_amazon

            names = write_amazon(out, world, rng)
        if bar:
            bar.advance(step)
            step = bar.add_task("rendering images", total=len(names))
        t = world.table
        write_images(
            [out / polyvore.IMAGE_DIR / f"{name}.jpg" for name in names],
            np.asarray(t.category),
            np.asarray(t.colour),
            np.asarray(t.pattern),
            image_size,
            seed,
            advance=(lambda n: bar.advance(step, n)) if bar else None,
            workers=workers,
        )
    return out
