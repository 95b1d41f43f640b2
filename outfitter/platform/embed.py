"""Catalog embedding with Ray Data: frozen CLIP towers over every item, on an actor pool.

`embed_catalog` reads the catalog's (item id, image path, text) rows into a Ray Dataset and runs
`TowerEmbedder` actors with `map_batches`: GPU actors (`num_gpus=1` each) when the cluster has
GPUs, CPU actors (`num_cpus=1` each) otherwise, as many as the cluster has of them free
(`actor_pool_size`). The result is a `FeatureTable` keyed by item id, saved under a cache
key made of the catalog's content stamp and the towers' fingerprint, so re-running on an
unchanged catalog and tower reuses it instead of recomputing.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from outfitter.data.features import FeatureTable
from outfitter.data.types import Catalog
from outfitter.model.config import ClipCfg


def default_cache_dir() -> Path:
    """`$OUTFITTER_CACHE_DIR` (an empty value counts as unset), else `~/.cache/outfitter`: the
    one root of every cache (features, catalog vectors, downloaded models, the MLflow store
    template)."""
    return Path(os.environ.get("OUTFITTER_CACHE_DIR") or Path.home() / ".cache" / "outfitter")


def catalog_stamp(catalog: Catalog) -> str:
    """A cheap content stamp of a catalog: item ids, texts and image file sizes/mtimes."""
    digest = hashlib.sha256(str(Path(catalog.root).resolve()).encode())
    for item_id in catalog.item_ids:
        item = catalog.items[item_id]
        digest.update(f"{item_id}\t{item.text}\t{item.category}".encode())
        try:
            st = catalog.image_path(item_id).stat()
            digest.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        except OSError:
            digest.update(b"missing")
    return digest.hexdigest()[:16]


def tower_stamp(clip_cfg: ClipCfg) -> str:
    """Identifies the towers' weights: the config plus the weights file's content hash."""
    parts = {"arch": clip_cfg.arch, "pretrained": clip_cfg.pretrained, "dim": clip_cfg.embed_dim}
    if clip_cfg.pretrained and Path(clip_cfg.pretrained).is_file():
        with open(clip_cfg.pretrained, "rb") as f:  # by content: a copied or downloaded file
            parts["file"] = hashlib.file_digest(f, "sha256").hexdigest()  # still matches
        # the content names the weights; the path does not (a checkpoint's towers.safetensors
        # holding the weights a run embedded with reuses that run's features)
        parts["pretrained"] = "file"
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def feature_folder(stamp: str, clip_cfg: ClipCfg, cache_dir: Path | None = None) -> Path:
    """The feature cache entry of a catalog (its `catalog_stamp`) embedded by these towers."""
    return Path(cache_dir or default_cache_dir()) / "features" / f"{stamp}-{tower_stamp(clip_cfg)}"


def cached_features(folder: Path) -> FeatureTable | None:
    """The features cached in `folder` (a `feature_folder`), or None."""
    return FeatureTable.load(folder) if (folder / "meta.json").exists() else None


class TowerEmbedder:
    """A Ray Data actor: builds the towers once, then embeds batches of items."""

    def __init__(self, clip_cfg: dict, use_gpu: bool = False):
        import torch

        from outfitter.model.device import resolve_device
        from outfitter.model.towers import create_towers

        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        # A GPU actor was scheduled with num_gpus=1: Ray made that GPU the only visible one, and
        # a GPU actor that sees none is a scheduling error, not a reason to embed on the CPU.
        self.device = resolve_device("cuda" if use_gpu else "cpu")
        self.towers = create_towers(ClipCfg(**clip_cfg), device=self.device)
        self.towers.model.eval()

    def __call__(self, batch: dict) -> dict:
        paths = [str(p) for p in batch["image_path"]]
        texts = [str(t) for t in batch["text"]]
        image = self.towers.encode_images(paths, batch_size=len(paths))
        text = self.towers.encode_texts(texts, batch_size=len(texts))
        return {"item_id": batch["item_id"], "image": image, "text_feat": text}  # (B, D) each


def actor_pool_size(use_gpu: bool, n_blocks: int) -> int:
    """Embedding actors for the cluster as it is now: one per GPU, else one per CPU (each actor
    runs its towers on one thread), counting what is free (a Serve app or a Train run may hold
    some) and never more than there are blocks to embed; at least one."""
    import ray

    resource = "GPU" if use_gpu else "CPU"
    free = ray.available_resources().get(resource, 0)
    return max(1, min(int(free), n_blocks))


def embed_catalog(
    catalog: Catalog,
    clip_cfg: ClipCfg,
    *,
    cache_dir: Path | None = None,
    batch_size: int = 128,
    actors: int | None = None,
    use_gpu: bool | None = None,
    force: bool = False,
    stamp: str | None = None,
) -> tuple[FeatureTable, Path, bool]:
    """Embed every catalog item with frozen towers on Ray Data (cached).

    `stamp`: the catalog's `catalog_stamp` when the caller has it (it reads every image file's
    size and time: seconds at Polyvore size).

    Returns:
        (features, folder they are saved in, whether the cache was reused).
    """
    import pyarrow as pa
    import ray

    from outfitter.platform.local_ray import ensure_ray

    stamp = stamp or catalog_stamp(catalog)
    out = feature_folder(stamp, clip_cfg, cache_dir)
    if not force and (cached := cached_features(out)) is not None:
        return cached, out, True
    ensure_ray()
    ray.data.DataContext.get_current().print_on_execution_start = False
    use_gpu = bool(ray.cluster_resources().get("GPU", 0)) if use_gpu is None else use_gpu
    ids = catalog.item_ids
    columns = pa.table(
        {
            "item_id": ids,
            "image_path": [str(catalog.image_path(i)) for i in ids],
            "text": [catalog.items[i].text for i in ids],
        }
    )
    n_blocks = max(1, min(len(ids) // batch_size, 64))
    actors = actors or actor_pool_size(use_gpu, n_blocks)
    step = max(1, -(-len(ids) // n_blocks))  # rows a block (blocks of a table, not of dicts)
    ds = ray.data.from_arrow([columns.slice(i, step) for i in range(0, len(ids), step)])
    embedded = ds.map_batches(
        TowerEmbedder,
        fn_constructor_kwargs={"clip_cfg": clip_cfg.__dict__, "use_gpu": use_gpu},
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors),  # a fixed pool of TowerEmbedders
        num_gpus=1 if use_gpu else 0,
        num_cpus=0 if use_gpu else 1,
        batch_format="numpy",
    )
    got_ids, images, texts = [], [], []
    for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
        got_ids.extend(map(str, batch["item_id"]))
        images.append(batch["image"])
        texts.append(batch["text_feat"])
    row = {item_id: r for r, item_id in enumerate(got_ids)}
    missing = [i for i in ids if i not in row]
    if missing:
        raise RuntimeError(f"embedding lost {len(missing)} items, e.g. {missing[:5]}")
    order = np.fromiter((row[i] for i in ids), dtype=np.int64, count=len(ids))
    table = FeatureTable(
        ids,
        np.concatenate(images)[order].astype(np.float32, copy=False),
        np.concatenate(texts)[order].astype(np.float32, copy=False),
    )
    table.meta.update({"clip": clip_cfg.__dict__, "catalog_stamp": stamp, "key": out.name})
    tmp = out.with_name(out.name + ".tmp")
    table.save(tmp)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)  # the cache entry appears whole or not at all
    return table, out, False
