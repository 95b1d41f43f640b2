"""The faiss catalog index: item vectors of one model version, searchable by category.

Items are split into one faiss index per category (a "shard"). A category filter then searches
exactly the right items whatever the index kind: a filtered search on a single IVF or HNSW index
only post-filters the candidates it happened to visit, and can come back short for a rare
category. An unfiltered search queries every shard and merges, which is exact for exact shards
and as good as the shards otherwise. Each shard is an exact `IndexFlatIP` below
`IndexConfig.exact_below` items and IVF or HNSW above; vectors are L2-normalised, so inner
product = cosine similarity.

On disk (one folder, logged as an artifact of the model version so the two never disagree):
`ids.json` (row order), `categories.npy` (N,) category index per row, `vectors.npy` (N, D) the
item vectors themselves (the serving layer scores catalog items from them), `meta.json` (model
version, config, shard kinds), `index-<category>.faiss` per non-empty category, and
`manifest.json` (model version, dim, item count, sha256 and size of every other file), checked on
every load: a folder with a missing, truncated or swapped file is refused, never half-served.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np

from outfitter.data.types import CATEGORIES

log = logging.getLogger(__name__)

INDEX_FORMAT = 2  # 2: manifest.json with checksums
MANIFEST = "manifest.json"


class IndexIntegrityError(ValueError):
    """An index folder that does not match its manifest, or not the model it is loaded for."""


@dataclass(frozen=True)
class IndexConfig:
    """How the per-category shards are built and searched."""

    kind: Literal["auto", "flat", "ivf", "hnsw"] = "auto"  # auto: flat below exact_below
    exact_below: int = 50_000  # auto: a shard with fewer items is an exact IndexFlatIP
    # The kind auto picks at or above exact_below; auto: IVF where the shards go to a GPU
    # (faiss-gpu holds flat and IVF indexes, not HNSW), HNSW on the CPU.
    approximate: Literal["auto", "ivf", "hnsw"] = "auto"
    nlist: int = (
        0  # IVF inverted lists; 0 = 4 * sqrt(n), capped so each list trains on >= 39 points
    )
    nprobe: int = 16  # IVF lists visited per query
    hnsw_m: int = 32  # HNSW graph degree
    ef_construction: int = 200  # HNSW build-time beam width
    ef_search: int = 128  # HNSW query-time beam width (raised to k when k is larger)
    use_gpu: bool = True  # move shards to the GPU when faiss was built with GPUs and sees one

    def __post_init__(self) -> None:
        if self.kind not in ("auto", "flat", "ivf", "hnsw"):
            raise ValueError(f"index kind {self.kind!r}; use auto, flat, ivf or hnsw")
        if self.approximate not in ("auto", "ivf", "hnsw"):
            raise ValueError(f"approximate index kind {self.approximate!r}; use auto, ivf or hnsw")

    def kind_for(self, n: int, on_gpu: bool = False) -> str:
        """The index kind of a shard of `n` items (`on_gpu`: the shards will move to a GPU)."""
        if self.kind != "auto":
            return self.kind
        if n < self.exact_below:
            return "flat"
        if self.approximate == "auto":
            return "ivf" if on_gpu else "hnsw"
        return self.approximate

    def nlist_for(self, n: int) -> int:
        nlist = self.nlist or int(round(4 * math.sqrt(n)))
        return max(1, min(nlist, n // 39))


@dataclass(frozen=True)
class Hit:
    """One search result."""

    item_id: str
    score: float  # inner product of unit vectors = cosine similarity
    category: int  # index into CATEGORIES


def _build_shard(vectors: np.ndarray, kind: str, cfg: IndexConfig) -> faiss.Index:
    """One faiss index over `vectors` (n, D); faiss ids are positions in `vectors`."""
    n, dim = vectors.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "ivf":
        index = faiss.IndexIVFFlat(
            faiss.IndexFlatIP(dim), dim, cfg.nlist_for(n), faiss.METRIC_INNER_PRODUCT
        )
        index.train(vectors)
        index.nprobe = min(cfg.nprobe, index.nlist)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.ef_construction
        index.hnsw.efSearch = cfg.ef_search
    else:  # IndexConfig validates kinds
        raise AssertionError(kind)
    index.add(vectors)
    return index


def _gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _gpu_target(config: IndexConfig, device=None) -> int | None:
    """The GPU id the shards go to, or None (CPU). `device`: the torch device of the process
    (a `cpu` worker keeps its shards on the CPU; `cuda:N` puts them on GPU N); None: GPU 0
    when the config allows it and faiss sees a GPU."""
    if not config.use_gpu or not _gpu_available():
        return None
    if device is None:
        return 0
    from outfitter.model.device import gpu_index, resolve_device

    return gpu_index(resolve_device(device))


def _to_gpu(index: faiss.Index, resources: Any, gpu: int = 0) -> faiss.Index:
    """The shard on GPU `gpu`, or the CPU shard where faiss has no GPU version of it (HNSW)."""
    try:
        return faiss.index_cpu_to_gpu(resources, gpu, index)
    except RuntimeError as err:
        log.info("keeping a %s shard on the CPU: %s", type(index).__name__, err)
        return index


def _to_cpu(index: faiss.Index) -> faiss.Index:
    if hasattr(faiss, "index_gpu_to_cpu") and "Gpu" in type(index).__name__:
        return faiss.index_gpu_to_cpu(index)
    return index


def _check_vectors(vectors: np.ndarray, ids: Sequence[str], categories: np.ndarray) -> None:
    if vectors.ndim != 2 or vectors.shape[0] != len(ids) or len(categories) != len(ids):
        raise ValueError(
            f"vectors {vectors.shape}, {len(ids)} ids and {len(categories)} categories must "
            "agree: one row per item"
        )
    if len(set(ids)) != len(ids):
        raise ValueError("item ids must be unique")
    bad = categories[(categories < 0) | (categories >= len(CATEGORIES))]
    if bad.size:
        raise ValueError(f"category index {int(bad[0])} outside 0..{len(CATEGORIES) - 1}")


@dataclass
class CatalogIndex:
    """Catalog item vectors with one faiss shard per category."""

    ids: list[str]
    categories: np.ndarray  # (N,) int64 category index per row
    vectors: np.ndarray  # (N, D) float32, L2-normalised
    shards: dict[int, faiss.Index]  # category index -> shard over rows[category]
    config: IndexConfig = field(default_factory=IndexConfig)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.row = {item_id: i for i, item_id in enumerate(self.ids)}
        # Shard position -> global row, per category: rows in row order, as the shards were built.
        self.rows = {c: np.flatnonzero(self.categories == c) for c in self.shards}

    # ------------------------------------------------------------ build, save, load

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids: Sequence[str],
        categories: Sequence[int] | np.ndarray,
        config: IndexConfig | None = None,
        meta: dict | None = None,
        device=None,
    ) -> CatalogIndex:
        """Index `vectors` (N, D) of items `ids` whose category indexes are `categories`.

        Args:
            device: the process's torch device; the shards follow it (see `_gpu_target`).
        """
        config = config or IndexConfig()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        categories = np.asarray(categories, dtype=np.int64)
        _check_vectors(vectors, ids, categories)
        norms = np.linalg.norm(vectors, axis=1)
        if vectors.size and not np.allclose(norms, 1.0, atol=1e-3):
            raise ValueError("item vectors must be L2-normalised (inner product = cosine)")
        gpu = _gpu_target(config, device)
        shards = {}
        for c in np.unique(categories).tolist():
            part = vectors[categories == c]
            shards[c] = _build_shard(part, config.kind_for(len(part), gpu is not None), config)
        index = cls(list(ids), categories, vectors, shards, config, dict(meta or {}))
        return index.maybe_to_gpu(device)

    def maybe_to_gpu(self, device=None) -> CatalogIndex:
        """Move the shards to the GPU when the config allows it and faiss sees one (the GPU of
        `device` when given: a CPU process keeps its shards on the CPU)."""
        gpu = _gpu_target(self.config, device)
        if gpu is not None:
            self._gpu_resources = faiss.StandardGpuResources()
            self.shards = {c: _to_gpu(s, self._gpu_resources, gpu) for c, s in self.shards.items()}
        return self

    @property
    def on_gpu(self) -> bool:
        return any("Gpu" in type(s).__name__ for s in self.shards.values())

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.ids)

    def shard_kinds(self) -> dict[str, str]:
        """Category name -> faiss index class of its shard."""
        return {CATEGORIES[c]: type(s).__name__ for c, s in sorted(self.shards.items())}

    def save(self, folder: Path) -> Path:
        """Write the index folder (see the module docstring) crash-safely; returns it.

        Every file goes to a fresh sibling folder, the manifest last, and that folder is renamed
        into place: a crash at any step leaves the previous index whole (at `folder`, or, inside
        the swap of an existing folder, at a `.NAME.old-*` sibling that `load` falls back to).
        """
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
        try:
            self._write_files(staging)
            _replace_folder(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return folder

    def _write_files(self, folder: Path) -> None:
        (folder / "ids.json").write_text(json.dumps(self.ids))
        np.save(folder / "categories.npy", self.categories)
        np.save(folder / "vectors.npy", self.vectors)
        for c, shard in self.shards.items():
            faiss.write_index(_to_cpu(shard), str(folder / f"index-{CATEGORIES[c]}.faiss"))
        meta = {
            **self.meta,
            "format": INDEX_FORMAT,
            "n_items": len(self),
            "dim": self.dim,
            "config": asdict(self.config),
            "shards": self.shard_kinds(),
        }
        (folder / "meta.json").write_text(json.dumps(meta, indent=2))
        files = {p.name: _file_digest(p) for p in sorted(folder.iterdir())}
        manifest = {
            "format": INDEX_FORMAT,
            "model_name": self.meta.get("model_name"),
            "model_version": _version_str(self.meta.get("model_version")),
            "dim": self.dim,
            "n_items": len(self),
            "files": files,
        }
        _write_synced(folder / MANIFEST, json.dumps(manifest, indent=2))
        for name in files:
            _fsync(folder / name)

    @classmethod
    def load(
        cls,
        folder: Path,
        use_gpu: bool | None = None,
        *,
        model_version: str | int | None = None,
        dim: int | None = None,
    ) -> CatalogIndex:
        """Read an index folder written by `save`, verified against its manifest.

        Args:
            use_gpu: overrides the saved config's.
            model_version, dim: what the index must have been built for (IndexIntegrityError
                otherwise); None: not checked.
        """
        folder = _live_folder(Path(folder))
        manifest = verify_index(folder, model_version=model_version, dim=dim)
        meta = json.loads((folder / "meta.json").read_text())
        config = IndexConfig(**meta.pop("config"))
        if use_gpu is not None:
            config = IndexConfig(**{**asdict(config), "use_gpu": use_gpu})
        for key in ("format", "n_items", "dim", "shards"):
            meta.pop(key, None)
        ids = json.loads((folder / "ids.json").read_text())
        categories = np.load(folder / "categories.npy")
        vectors = np.load(folder / "vectors.npy")
        n, d = manifest["n_items"], manifest["dim"]
        if len(ids) != n or categories.shape != (n,) or vectors.shape != (n, d):
            raise IndexIntegrityError(
                f"index {folder}: {len(ids)} ids, categories {categories.shape}, vectors "
                f"{vectors.shape}; its manifest says {n} items of {d} dims"
            )
        shards = {}
        for c in np.unique(categories).tolist():
            path = folder / f"index-{CATEGORIES[c]}.faiss"
            if path.name not in manifest["files"]:
                raise IndexIntegrityError(f"index {folder}: no shard file {path.name}")
            shards[c] = faiss.read_index(str(path))
        return cls(ids, categories, vectors, shards, config, meta).maybe_to_gpu()

    # ------------------------------------------------------------ search

    def vectors_of(self, item_ids: Sequence[str]) -> np.ndarray:
        """(len(item_ids), D) vectors of catalog items; KeyError lists unknown ids."""
        missing = [i for i in item_ids if i not in self.row]
        if missing:
            raise KeyError(f"unknown item ids: {missing}")
        return self.vectors[[self.row[i] for i in item_ids]]

    def _search_shard(self, c: int, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of one shard: scores (Q, k') and global rows (Q, k'), -1 where short."""
        shard = self.shards[c]
        k = min(k, shard.ntotal)
        params = None
        if isinstance(shard, faiss.IndexHNSW):
            params = faiss.SearchParametersHNSW(efSearch=max(self.config.ef_search, k))
        scores, local = shard.search(queries, k, params=params)
        rows = np.where(local >= 0, self.rows[c][np.maximum(local, 0)], -1)
        return scores, rows

    def search(
        self,
        queries: np.ndarray,
        k: int,
        category: int | None | Sequence[int | None] | np.ndarray = None,
        exclude: Collection[str] | Sequence[Collection[str]] = (),
    ) -> list[list[Hit]]:
        """The `k` best catalog items for each query vector (Q, D), best first.

        Args:
            queries: query vectors, L2-normalised.
            k: results per query (fewer when the category has fewer items).
            category: a category index for all queries, one per query, or None for no filter.
            exclude: item ids never returned: one collection for all queries, or one per query.
        """
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        n_q = len(queries)
        if queries.shape[1] != self.dim:
            raise ValueError(f"query vectors have {queries.shape[1]} dims; index has {self.dim}")
        if k < 1:
            raise ValueError(f"k={k}; must be >= 1")
        single = category is None or isinstance(category, (int, np.integer))
        cats = [category] * n_q if single else [None if c is None else int(c) for c in category]
        excl = _per_query(exclude, n_q)
        if len(cats) != n_q:
            raise ValueError(f"{len(cats)} categories for {n_q} queries")
        results: list[list[Hit]] = [[] for _ in range(n_q)]
        for cat in set(cats):
            group = [q for q in range(n_q) if cats[q] == cat]
            shard_ids = list(self.shards) if cat is None else [cat] if cat in self.shards else []
            extra = max((len(excl[q]) for q in group), default=0)  # over-fetch past exclusions
            per_shard = [self._search_shard(c, queries[group], k + extra) for c in shard_ids]
            for pos, q in enumerate(group):
                results[q] = self._merge(per_shard, pos, k, excl[q])
        return results

    def _merge(self, per_shard: list, pos: int, k: int, exclude: set[str]) -> list[Hit]:
        """Best `k` hits of query `pos` across shard results, skipping excluded ids."""
        if not per_shard:
            return []
        scores = np.concatenate([s[pos] for s, _ in per_shard])
        rows = np.concatenate([r[pos] for _, r in per_shard])
        hits = []
        for j in np.argsort(-scores, kind="stable"):
            row = int(rows[j])
            if row < 0 or self.ids[row] in exclude:
                continue
            hits.append(Hit(self.ids[row], float(scores[j]), int(self.categories[row])))
            if len(hits) == k:
                break
        return hits


def _per_query(exclude: Collection[str] | Sequence[Collection[str]], n_q: int) -> list[set[str]]:
    """Normalise `exclude` to one set per query."""
    items = list(exclude)
    if items and not isinstance(items[0], str):
        if len(items) != n_q:
            raise ValueError(f"{len(items)} exclude lists for {n_q} queries")
        return [set(e) for e in items]
    return [set(items)] * n_q


# ---------------------------------------------------------------- the folder on disk


def _version_str(version) -> str | None:
    return None if version is None else str(version)


def _file_digest(path: Path) -> dict:
    """sha256 and size of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return {"sha256": digest.hexdigest(), "bytes": path.stat().st_size}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _replace_folder(staging: Path, folder: Path) -> None:
    """Rename the complete `staging` folder to `folder`, replacing an existing one.

    POSIX has no atomic swap of two directories: the old folder moves aside first, and `load`
    reads it from there if a crash falls between the two renames.
    """
    if folder.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
        os.rename(folder, aside / folder.name)
    os.rename(staging, folder)
    for stale in folder.parent.glob(f".{folder.name}.old-*"):  # this one, or a crashed save's
        shutil.rmtree(stale, ignore_errors=True)


def _live_folder(folder: Path) -> Path:
    """`folder`, or the previous index a save was swapping out when it crashed."""
    if folder.exists():
        return folder
    aside = sorted(folder.parent.glob(f".{folder.name}.old-*/{folder.name}"))
    if aside and (aside[-1] / MANIFEST).is_file():
        log.warning("index %s is missing; reading the copy a crashed save moved aside", folder)
        return aside[-1]
    return folder


def verify_index(
    folder: Path, *, model_version: str | int | None = None, dim: int | None = None
) -> dict:
    """Check an index folder against its manifest (files, sizes, sha256) and the expected model
    version and dimension; returns the manifest. Raises FileNotFoundError for a folder that is
    not an index, IndexIntegrityError for one that is damaged or belongs to another model."""
    folder = Path(folder)
    if not (folder / "meta.json").is_file():
        raise FileNotFoundError(f"{folder} is not an index folder (no meta.json)")
    if not (folder / MANIFEST).is_file():
        fmt = json.loads((folder / "meta.json").read_text()).get("format")
        raise IndexIntegrityError(
            f"index format {fmt} in {folder} has no {MANIFEST}; expected format {INDEX_FORMAT}: "
            "rebuild it with `outfitter index build`"
        )
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = dict(manifest["files"])
        int(manifest["n_items"]), int(manifest["dim"])
    except (ValueError, KeyError, TypeError) as err:
        raise IndexIntegrityError(f"unreadable {MANIFEST} in {folder}: {err}") from err
    if manifest.get("format") != INDEX_FORMAT:
        raise IndexIntegrityError(
            f"index format {manifest.get('format')} in {folder}; expected {INDEX_FORMAT}"
        )
    for name, want in files.items():
        path = folder / name
        if Path(name).name != name or not path.is_file() or path.is_symlink():
            raise IndexIntegrityError(f"index {folder}: file {name!r} is missing")
        if path.stat().st_size != want["bytes"] or _file_digest(path) != want:
            raise IndexIntegrityError(
                f"index {folder}: {name} does not match its checksum in {MANIFEST} "
                "(a partial or mixed write); rebuild the index"
            )
    for name in ("ids.json", "categories.npy", "vectors.npy", "meta.json"):
        if name not in files:
            raise IndexIntegrityError(f"index {folder}: {MANIFEST} lists no {name}")
    recorded = manifest.get("model_version")
    if model_version is not None and recorded is not None and str(model_version) != recorded:
        raise IndexIntegrityError(
            f"index {folder} was built for model version {recorded}, not {model_version}"
        )
    if dim is not None and int(dim) != int(manifest["dim"]):
        raise IndexIntegrityError(
            f"index {folder} holds {manifest['dim']}-d vectors; the model makes {dim}-d ones"
        )
    return manifest


# ---------------------------------------------------------------- building from a model version


def build_index(
    model,
    builder,
    *,
    config: IndexConfig | None = None,
    meta: dict | None = None,
    batch_size: int = 256,
    device=None,
) -> CatalogIndex:
    """The index of every item of `builder.catalog` under `model` (an OutfitModel in eval mode)."""
    from outfitter.model.evaluate import encode_catalog

    catalog = builder.catalog
    ids = catalog.item_ids
    device = device or next(model.parameters()).device
    vectors = encode_catalog(model, builder, ids, batch_size).cpu().numpy()  # (N, D)
    categories = [catalog.items[i].category_index for i in ids]
    return CatalogIndex.build(vectors, ids, categories, config, meta, device=device)


def build_index_for_model(
    resolved,
    data_dir: Path,
    out_dir: Path | None = None,
    *,
    config: IndexConfig | None = None,
    features=None,
    device: str = "auto",
    opened=None,
) -> CatalogIndex:
    """Build (and save to `out_dir`) the catalog index of a resolved model version.

    Args:
        resolved: a `registry.ResolvedModel` (checkpoint folder + version info).
        features: the catalog's cached tower features; for a model that reads features and none
            are given, they come from the embedding cache (`platform.embed`, Ray Data).
        device: where the model encodes the catalog and the shards live (`resolve_device`).
        opened: `resolved`'s checkpoint already opened on this catalog (`platform.vectors`); its
            item vectors are reused (they are cached per model version and catalog anyway).
    """
    from outfitter.platform.vectors import open_checkpoint

    if opened is None:
        opened = open_checkpoint(
            resolved.checkpoint_dir, data_dir, features=features, device=device
        )
    catalog = opened.catalog
    ids = catalog.item_ids
    meta = {
        "model_name": resolved.name,
        "model_version": resolved.version,
        "model_config": opened.cfg.name,
        "checkpoint": str(resolved.checkpoint_dir),
        "data_dir": str(Path(data_dir).resolve()),
    }
    categories = [catalog.items[i].category_index for i in ids]
    index = CatalogIndex.build(
        opened.item_vectors(), ids, categories, config, meta, device=opened.device
    )
    if out_dir is not None:
        index.save(Path(out_dir))
    return index
