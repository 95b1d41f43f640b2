"""A checkpoint opened once, and its catalog's item vectors, encoded once per model version.

`open_checkpoint` is the one way a process opens a checkpoint to use it on a catalog: the weights
on the chosen device, config, meta, the catalog and the model's `InputBuilder`. What follows a
training run (evaluation of both splits, plots, the index that promotion needs) shares one opened
checkpoint; so do `outfitter evaluate`, `outfitter index build` and a Serve replica.

`OpenedCheckpoint.item_vectors()` are the catalog's item vectors under the model, (N, D) float32
in `catalog.item_ids` order: encoded once (`model.evaluate.encode_catalog`, reading the Ray Data
features of `platform.embed` for a frozen-tower model) and cached beside the feature cache, in
`$OUTFITTER_CACHE_DIR/vectors/<key>/` (`ids.json`, `vectors.npy`, `meta.json`), keyed by what
they depend on:

- the checkpoint's model files by content (`config.json`: architecture and preprocessing sizes;
  `model.safetensors`; `towers.safetensors`, the towers that made the features; `vocab.json`),
  so a version downloaded from the registry finds the vectors its training run encoded;
- the catalog's content stamp (`embed.catalog_stamp`: ids, texts, categories, image files);
- `ENCODING`, the version of the code that turns an item into model inputs.

A second evaluation or index build of one version on one catalog encodes nothing; another
checkpoint, catalog or encoding gets another key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from outfitter.data.types import Catalog

log = logging.getLogger(__name__)

# Bump when the code that turns a catalog item into model inputs changes (image resizing, item
# text, word ids): vectors cached by the old code then stop matching.
ENCODING = 2  # 2: one image preprocessing per model (model/preprocess.py), one item_text
VECTOR_CACHE_KEEP = 8  # cache entries kept, most recently used first ($OUTFITTER_VECTOR_CACHE_KEEP)
_DIGESTS: dict[tuple, str] = {}  # (path, size, mtime) -> sha256: a file is hashed once a process


@dataclass(eq=False)
class OpenedCheckpoint:
    """A checkpoint loaded for use on a catalog: model (eval mode), config, meta, input builder
    and, on first request, the catalog's item vectors."""

    folder: Path
    model: Any  # OutfitModel, eval mode, on `device`
    cfg: Any  # ModelConfig
    meta: dict
    catalog: Catalog
    device: Any  # torch.device
    data_dir: Path
    data_format: str | None = None
    features: Any = None  # FeatureTable of a frozen-tower model, when already at hand
    cache_dir: Path | None = None
    # A frozen-tower model's features, when they must be computed: on Ray Data (cached,
    # `platform.embed`), or by the builder in this process (a Serve replica's own towers).
    embed_on_ray: bool = True
    catalog_stamp: str | None = None  # the catalog's `embed.catalog_stamp`, when already known
    _builder: Any = field(default=None, repr=False)
    _vectors: np.ndarray | None = field(default=None, repr=False)
    _key: str | None = field(default=None, repr=False)

    @property
    def builder(self):
        """The model's `InputBuilder` over the catalog (its features when given)."""
        if self._builder is None:
            from outfitter.model.inputs import InputBuilder

            self._builder = InputBuilder.for_model(self.model, self.catalog, self.features)
        return self._builder

    @property
    def vector_key(self) -> str:
        """`<catalog stamp>-<checkpoint digest>`: the cache entry of this model on this catalog."""
        if self._key is None:
            if self.catalog_stamp is None:
                from outfitter.platform.embed import catalog_stamp

                self.catalog_stamp = catalog_stamp(self.catalog)  # 1.3 s at 200k items
            self._key = f"{self.catalog_stamp}-{checkpoint_digest(self.folder)}"
        return self._key

    @property
    def vector_folder(self) -> Path:
        return vector_cache_root(self.cache_dir) / self.vector_key

    def item_vectors(self) -> np.ndarray:
        """The catalog's item vectors (N, D) float32, `catalog.item_ids` order: from memory,
        else the cache, else encoded now (and cached)."""
        if self._vectors is None:
            self._vectors = _read_vectors(self.vector_folder, self.catalog.item_ids)
            if self._vectors is not None:
                log.info("catalog vectors of %s reused from %s", self.folder, self.vector_folder)
            else:
                self._vectors = self._encode()
                _write_vectors(
                    self.vector_folder, self.catalog.item_ids, self._vectors, self._cache_meta()
                )
                _evict(self.vector_folder)
        return self._vectors

    def item_vectors_tensor(self):
        """`item_vectors()` as a torch tensor on the model's device."""
        import torch

        return torch.from_numpy(self.item_vectors()).to(self.device)

    def _cache_meta(self) -> dict:
        """What a cache entry records of the vectors it holds."""
        return {
            "key": self.vector_key,
            "encoding": ENCODING,
            "checkpoint": str(self.folder),
            "model_config": self.cfg.name,
            "catalog": str(Path(self.catalog.root).resolve()),
        }

    def _encode(self) -> np.ndarray:
        from rich.progress import Progress

        from outfitter.model.evaluate import encode_catalog

        if self.cfg.input_kind == "features" and self.features is None and self.embed_on_ray:
            from outfitter.platform.embed import embed_catalog

            # the towers' features on Ray Data (cached by towers and catalog content)
            self.features, _, _ = embed_catalog(
                self.catalog, self.cfg.clip, cache_dir=self.cache_dir, stamp=self.catalog_stamp
            )
            self._builder = None  # rebuilt over these features
        ids = self.catalog.item_ids
        t0 = time.perf_counter()
        with Progress(transient=True) as bar:
            task = bar.add_task("encoding catalog items", total=len(ids))
            vecs = encode_catalog(
                self.model, self.builder, ids, progress=lambda n: bar.advance(task, n)
            )
        log.info(
            "encoded %d catalog items with %s in %.1f s", len(ids), self.folder,
            time.perf_counter() - t0,
        )  # fmt: skip
        return np.ascontiguousarray(vecs.cpu().numpy(), dtype=np.float32)


def open_checkpoint(
    folder: str | Path,
    data_dir: str | Path | None = None,
    *,
    catalog: Catalog | None = None,
    data_format: str | None = None,
    features=None,
    device="auto",
    cache_dir: Path | None = None,
    embed_on_ray: bool = True,
    catalog_stamp: str | None = None,
) -> OpenedCheckpoint:
    """Load checkpoint `folder` for use on the catalog of `data_dir` (or `catalog`).

    Args:
        data_format: polyvore or amazon; None detects it from the folder (`data.formats`).
        features: the catalog's tower features when at hand (a training run's); otherwise they
            are embedded (cached) only if the item vectors have to be encoded.
        device: where the model runs (`resolve_device`).
        cache_dir: the feature and vector cache (default `$OUTFITTER_CACHE_DIR`).
        embed_on_ray: features to compute go through Ray Data (True) or the builder's towers in
            this process (False).
        catalog_stamp: the catalog's `embed.catalog_stamp` when the caller has it (a training
            run's dataset check computed it); else computed when the vectors are first needed.
    """
    from outfitter.model.checkpoint import load_checkpoint
    from outfitter.model.device import resolve_device

    if catalog is None and data_dir is None:
        raise ValueError("open_checkpoint needs the catalog: pass data_dir or catalog")
    device = resolve_device(device)
    folder = Path(folder)
    model, cfg, meta = load_checkpoint(folder, map_location=device)
    if catalog is None:
        from outfitter.data import load_catalog

        catalog = load_catalog(Path(data_dir), data_format)
    log.info("opened checkpoint %s (%s) on %s", folder, cfg.name, device)
    return OpenedCheckpoint(
        folder=folder,
        model=model,
        cfg=cfg,
        meta=dict(meta or {}),
        catalog=catalog,
        device=device,
        data_dir=Path(data_dir) if data_dir is not None else Path(catalog.root),
        data_format=data_format,
        features=features,
        cache_dir=cache_dir,
        embed_on_ray=embed_on_ray,
        catalog_stamp=catalog_stamp,
    )


# ---------------------------------------------------------------- the cache on disk


def vector_cache_root(cache_dir: Path | None = None) -> Path:
    """`<cache>/vectors`, the cache being `cache_dir` or the feature cache's default."""
    from outfitter.platform.embed import default_cache_dir

    return Path(cache_dir or default_cache_dir()) / "vectors"


def checkpoint_digest(folder: str | Path) -> str:
    """Content digest of what a checkpoint's item vectors depend on: its model files (not its
    meta or optimizer state) and `ENCODING`."""
    from outfitter.model.checkpoint import CONFIG, TOWERS, VOCAB, WEIGHTS

    digest = hashlib.sha256(f"encoding={ENCODING}".encode())
    for name in (CONFIG, WEIGHTS, TOWERS, VOCAB):
        path = Path(folder) / name
        if path.is_file():
            digest.update(f"{name}={_file_sha256(path)}".encode())
    return digest.hexdigest()[:16]


def _file_sha256(path: Path) -> str:
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _DIGESTS:
        with open(path, "rb") as f:
            _DIGESTS[memo] = hashlib.file_digest(f, "sha256").hexdigest()
    return _DIGESTS[memo]


def _read_vectors(folder: Path, ids: list[str]) -> np.ndarray | None:
    """The cached vectors of `ids`, or None when absent or unusable (then re-encoded)."""
    if not (folder / "meta.json").is_file():
        return None
    try:
        cached_ids = json.loads((folder / "ids.json").read_text(encoding="utf-8"))
        vectors = np.load(folder / "vectors.npy", allow_pickle=False)
    except (OSError, ValueError) as err:
        log.warning("catalog vector cache %s is unreadable (%s); encoding again", folder, err)
        return None
    if cached_ids != ids or vectors.ndim != 2 or len(vectors) != len(ids):
        log.warning("catalog vector cache %s does not match the catalog; encoding again", folder)
        return None
    os.utime(folder / "meta.json")  # most recently used (eviction order)
    return np.ascontiguousarray(vectors, dtype=np.float32)


def _write_vectors(folder: Path, ids: list[str], vectors: np.ndarray, meta: dict) -> None:
    """Write a cache entry whole or not at all (a sibling folder renamed into place)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        (staging / "ids.json").write_text(json.dumps(ids), encoding="utf-8")
        np.save(staging / "vectors.npy", vectors)
        meta = {**meta, "n_items": len(ids), "dim": int(vectors.shape[1])}
        (staging / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)  # an unusable entry (a usable one was read, not rewritten)
        os.rename(staging, folder)
    except OSError as err:  # another process wrote it first, or a read-only cache: not fatal
        log.warning("could not cache catalog vectors in %s: %s", folder, err)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _evict(keep_entry: Path) -> None:
    """Keep the `OUTFITTER_VECTOR_CACHE_KEEP` most recently used entries."""
    keep = int(os.environ.get("OUTFITTER_VECTOR_CACHE_KEEP", VECTOR_CACHE_KEEP))
    root = keep_entry.parent
    entries = [e for e in root.iterdir() if (e / "meta.json").is_file() and e != keep_entry]
    entries.sort(key=lambda e: (e / "meta.json").stat().st_mtime, reverse=True)
    for old in entries[max(keep - 1, 0) :]:
        shutil.rmtree(old, ignore_errors=True)
