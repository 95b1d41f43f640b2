"""The faiss catalog index: item vectors of one model version, searchable by category.

Items are split into one faiss index per category (a "shard"). A category filter then searches
exactly the right items whatever the index kind: a filtered search on a single IVF or HNSW index
only post-filters the candidates it happened to visit, and can come back short for a rare
category. An unfiltered search queries every shard and merges, which is exact for exact shards
and as good as the shards otherwise. Vectors are L2-normalised, so inner product = cosine
similarity.

Each shard's kind and search parameters are chosen when it is built, from its size: an exact
`IndexFlatIP` below `IndexConfig.exact_below` items; above, an approximate shard (IVF) whose
`nprobe` is calibrated on held-out queries until recall@10 against exact search reaches
`IndexConfig.target_recall` (`platform.index_tuning`), kept only if it then computes at least
`min_speedup` times fewer distances than exact search, and exact otherwise.

On disk (one folder, logged as an artifact of the model version so the two never disagree):
`ids.json` (row order), `categories.npy` (N,) category index per row, `vectors.npy` (N, D) the
item vectors themselves (the serving layer scores catalog items from them), `meta.json` (model
version, config, shard kinds), `index-<category>.faiss` per non-empty category, and
`manifest.json` (model version, dim, item count, sha256 and size of every other file, and per
shard its kind, search parameters and calibration), checked on every load: a folder with a
missing, truncated or swapped file is refused, never half-served; the recorded search parameters
are applied to the shards it loads. Format 2 folders (before calibration) still load, with the
parameters their shard files hold.
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
from outfitter.platform.index_tuning import (
    SEARCH_PARAM,
    apply_params,
    calibrate,
    describe_shard,
    search_params,
    unreachable,
)

log = logging.getLogger(__name__)

INDEX_FORMAT = 3  # 2: manifest.json with checksums; 3: + each shard's kind, parameters, calibration
READABLE_FORMATS = (2, 3)  # a format 2 folder loads with the parameters its shard files hold
MANIFEST = "manifest.json"


class IndexIntegrityError(ValueError):
    """An index folder that does not match its manifest, or not the model it is loaded for."""


@dataclass(frozen=True)
class IndexConfig:
    """How the per-category shards are built and searched."""

    # auto: exact below exact_below, else `approximate`, calibrated, and kept only if it pays
    kind: Literal["auto", "flat", "ivf", "hnsw"] = "auto"
    exact_below: int = 20_000  # auto: a shard with fewer items is an exact IndexFlatIP
    # The kind auto tries at or above exact_below; auto = IVF, on the CPU as on a GPU (faiss-gpu
    # has no HNSW): at 100k items it built 4-7x faster than HNSW and searched 2-4x faster
    # (bench/index.py, both calibrated to the same recall).
    approximate: Literal["auto", "ivf", "hnsw"] = "auto"
    # IVF inverted lists; 0 = 4 * sqrt(n) up to max_nlist, capped so each list trains on >= 39
    # points. max_nlist bounds k-means: over 1M points nlist 4000 takes ~15 min on 2 CPUs.
    nlist: int = 0
    max_nlist: int = 1024
    nprobe: int = 16  # IVF lists visited per query when calibration is off (target_recall None)
    hnsw_m: int = 32  # HNSW graph degree
    ef_construction: int = 200  # HNSW build-time beam width
    ef_search: int = 128  # HNSW query-time beam width when calibration is off (at least k)
    # recall@calibration_k against exact search that nprobe / efSearch are raised to reach, on
    # calibration_queries of the shard's own vectors held out; None: the values above, as given
    target_recall: float | None = 0.95
    calibration_k: int = 10
    calibration_queries: int = 500
    # auto: a calibrated shard must compute this many times fewer distances than exact search
    # per query, or the shard stays exact (not worth an approximate answer)
    min_speedup: float = 4.0
    # an approximate shard that cannot reach target_recall: "exact" keeps it exact (a warning),
    # "error" raises IndexCalibrationError
    on_unreachable: Literal["exact", "error"] = "exact"
    use_gpu: bool = True  # move shards to the GPU when faiss was built with GPUs and sees one

    def __post_init__(self) -> None:
        if self.kind not in ("auto", "flat", "ivf", "hnsw"):
            raise ValueError(f"index kind {self.kind!r}; use auto, flat, ivf or hnsw")
        if self.approximate not in ("auto", "ivf", "hnsw"):
            raise ValueError(f"approximate index kind {self.approximate!r}; use auto, ivf or hnsw")
        if self.target_recall is not None and not 0 < self.target_recall <= 1:
            raise ValueError(f"target_recall {self.target_recall}; must be in (0, 1], or None")
        if self.on_unreachable not in ("exact", "error"):
            raise ValueError(f"on_unreachable {self.on_unreachable!r}; use exact or error")
        if self.calibration_k < 1 or self.calibration_queries < 1:
            raise ValueError("calibration_k and calibration_queries must be >= 1")

    def kind_for(self, n: int, on_gpu: bool = False) -> str:
        """The index kind of a shard of `n` items (`on_gpu`: the shards will move to a GPU; auto
        picks IVF either way, the one approximate kind faiss-gpu holds)."""
        if self.kind != "auto":
            return self.kind
        if n < self.exact_below:
            return "flat"
        return "ivf" if self.approximate == "auto" else self.approximate

    def nlist_for(self, n: int) -> int:
        nlist = self.nlist or min(int(round(4 * math.sqrt(n))), self.max_nlist)
        return max(1, min(nlist, n // 39))


@dataclass(frozen=True)
class Hit:
    """One search result."""

    item_id: str
    score: float  # inner product of unit vectors = cosine similarity
    category: int  # index into CATEGORIES


def _new_shard(vectors: np.ndarray, kind: str, cfg: IndexConfig) -> faiss.Index:
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


def _build_shard(
    vectors: np.ndarray, cfg: IndexConfig, on_gpu: bool, queries: np.ndarray | None = None
) -> tuple[faiss.Index, dict]:
    """The shard over `vectors` (n, D) and its tuning: kind, search `params`, `calibration` (None
    when not calibrated) and the `reason` for them, as recorded in the manifest (`queries`: the
    calibration queries, see `index_tuning.calibrate`)."""
    n = len(vectors)
    kind = cfg.kind_for(n, on_gpu)
    if kind == "flat":
        why = f"{n} items < exact_below {cfg.exact_below}" if cfg.kind == "auto" else "kind=flat"
        return _new_shard(vectors, "flat", cfg), _exact(None, why)
    shard = _new_shard(vectors, kind, cfg)
    if cfg.target_recall is None:
        tuning = describe_shard(shard, ef_search=cfg.ef_search)
        return shard, {**tuning, "calibration": None, "reason": "target_recall=None: as configured"}
    tuning = calibrate(shard, kind, vectors, cfg, queries)
    c, name = tuning["calibration"], SEARCH_PARAM[kind]
    found = (
        f"recall@{c['k']} {c['recall']:.3f} >= {c['target_recall']} at {name}="
        f"{tuning['params'][name]}, {c['speedup']:.1f}x fewer distances than exact"
    )
    if not c["reached"]:
        why = unreachable(kind, n, tuning, cfg.on_unreachable)
        return _new_shard(vectors, "flat", cfg), _exact(c, why)
    if cfg.kind == "auto" and c["speedup"] < cfg.min_speedup:
        why = f"{kind}: {found}, below min_speedup {cfg.min_speedup}: exact"
        return _new_shard(vectors, "flat", cfg), _exact(c, why)
    return shard, {**tuning, "reason": f"{kind}: {found}"}


def _exact(calibration: dict | None, reason: str) -> dict:
    return {"kind": "flat", "params": {}, "calibration": calibration, "reason": reason}


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
    # category index -> the shard's kind, search `params`, `calibration` and `reason` (manifest)
    tuning: dict[int, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for c, shard in self.shards.items():  # shards built elsewhere: what the faiss object says
            if c not in self.tuning:
                self.tuning[c] = describe_shard(_to_cpu(shard), ef_search=self.config.ef_search)
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
        calibration_queries: np.ndarray | dict[int, np.ndarray] | None = None,
    ) -> CatalogIndex:
        """Index `vectors` (N, D) of items `ids` whose category indexes are `categories`.

        Args:
            device: the process's torch device; the shards follow it (see `_gpu_target`).
            calibration_queries: (Q, D) unit vectors like the ones the index will be searched
                with, on which approximate shards are calibrated (each shard on all of them), or
                per category index the queries of that category's searches; None (or a
                category without any): each shard's own items, held out from their own answers.
        """
        config = config or IndexConfig()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        categories = np.asarray(categories, dtype=np.int64)
        _check_vectors(vectors, ids, categories)
        norms = np.linalg.norm(vectors, axis=1)
        if vectors.size and not np.allclose(norms, 1.0, atol=1e-3):
            raise ValueError("item vectors must be L2-normalised (inner product = cosine)")
        gpu = _gpu_target(config, device)
        shards, tuning = {}, {}
        for c in np.unique(categories).tolist():
            part, queries = vectors[categories == c], calibration_queries
            if isinstance(queries, dict):
                queries = queries.get(c)
            shards[c], tuning[c] = _build_shard(part, config, gpu is not None, queries)
            log.info("shard %s: %s", CATEGORIES[c], tuning[c].get("reason"))
        index = cls(list(ids), categories, vectors, shards, config, dict(meta or {}), tuning)
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
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.ids)

    def shard_kinds(self) -> dict[str, str]:
        """Category name -> faiss index class of its shard."""
        return {CATEGORIES[c]: type(s).__name__ for c, s in sorted(self.shards.items())}

    def shard_params(self) -> dict[str, dict]:
        """Category name -> the search parameters its shard was built and tuned with."""
        return {CATEGORIES[c]: dict(self.tuning[c]["params"]) for c in sorted(self.shards)}

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
        shards = {}
        for c, shard in sorted(self.shards.items()):
            cpu = _to_cpu(shard)
            faiss.write_index(cpu, str(folder / f"index-{CATEGORIES[c]}.faiss"))
            shards[CATEGORIES[c]] = {
                "faiss_class": type(cpu).__name__,
                "n": int(cpu.ntotal),
                **self.tuning[c],
            }
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
            "shards": shards,
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
        shards, tuning = {}, {}
        for c in np.unique(categories).tolist():
            path = folder / f"index-{CATEGORIES[c]}.faiss"
            if path.name not in manifest["files"]:
                raise IndexIntegrityError(f"index {folder}: no shard file {path.name}")
            shards[c] = faiss.read_index(str(path))
            tuning[c] = _recorded_tuning(folder, manifest, CATEGORIES[c], shards[c], config)
        return cls(ids, categories, vectors, shards, config, meta, tuning).maybe_to_gpu()

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
        params = search_params(shard, self.tuning[c]["params"], k)
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


def _recorded_tuning(
    folder: Path, manifest: dict, name: str, shard: faiss.Index, config: IndexConfig
) -> dict:
    """The tuning of shard `name` as its manifest records it, applied to `shard`; a format 2
    manifest records none: the parameters the shard file holds (HNSW: the config's ef_search,
    with which format 2 searched)."""
    found = describe_shard(shard, ef_search=config.ef_search)
    if manifest["format"] == 2:
        return {**found, "calibration": None, "reason": "format 2 index: parameters of the file"}
    tuning = (manifest.get("shards") or {}).get(name)
    try:
        recorded = tuning["kind"]
        if recorded == found["kind"]:
            apply_params(shard, tuning["params"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise IndexIntegrityError(
            f"index {folder}: {MANIFEST} has no usable parameters for shard {name} ({err!r}); "
            "rebuild it with `outfitter index build`"
        ) from err
    if recorded != found["kind"]:
        raise IndexIntegrityError(
            f"index {folder}: {MANIFEST} says shard {name} is {recorded}, its file holds a "
            f"{type(shard).__name__}"
        )
    return tuning


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
    """sha256 and size of a file."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256")
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
    if manifest.get("format") not in READABLE_FORMATS:
        raise IndexIntegrityError(
            f"index format {manifest.get('format')} in {folder}; expected one of "
            f"{READABLE_FORMATS}: rebuild it with `outfitter index build`"
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
