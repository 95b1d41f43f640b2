"""Plain serving functions (no Ray): one loaded model version, and what a request computes on it.

`load_state` resolves a model URI (registry alias/version or checkpoint folder) and loads the
whole version into one process: weights, input builder and faiss index, so that one replica
answers a request without calling another. `encode_new_items`, `score_outfits` and `retrieve`
(`targets_to_queries` then the index search, fused) take lists, so a caller may batch several
requests into one call; `LocalBackend` calls them one request at a time (tests, plain uvicorn),
the Serve replica (`deployments`) batches them.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from outfitter.data.types import CATEGORIES, Catalog
from outfitter.model.retrieval import TargetPlan, query_vectors
from outfitter.platform.index import CatalogIndex, Hit
from outfitter.platform.serve.service import Member, NewItem, VersionSkew

log = logging.getLogger(__name__)


@dataclass
class ModelState:
    """One model version, loaded for serving: weights, input builder and faiss index together."""

    version: str  # the registry version, or the checkpoint folder's name
    resolved: Any  # registry.ResolvedModel
    cfg: Any  # ModelConfig
    meta: dict = field(default_factory=dict)
    model: torch.nn.Module | None = None
    builder: Any = None  # InputBuilder: catalog features, CLIP towers, text encodings
    index: CatalogIndex | None = None
    device: torch.device = torch.device("cpu")
    alias: str | None = None  # the alias this version was pinned from (`models:/NAME/N` has none)

    @property
    def max_items(self) -> int:
        return int(self.cfg.transformer.max_items)

    @property
    def image_size(self) -> int | None:
        """The side the CLIP image tower resizes to (None where images are squashed instead)."""
        towers = getattr(self.builder, "towers", None) if self.cfg.kind == "hybrid" else None
        return getattr(towers, "image_size", None)


def set_threads(n: int) -> None:
    """Pin torch's and faiss's CPU thread pools to `n` (a replica's CPU share, not the host's)."""
    import faiss

    n = max(1, int(n))
    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)


def settle_heap() -> None:
    """Move what a serving process has loaded out of the cyclic GC's way (`gc.freeze`).

    A loaded version is ~500k long-lived Python objects (catalog, word ids, modules); a full
    collection walks all of them, measured at 0.3-3 s on this machine, and lands on whichever
    request is running: the tail of the latency. Frozen objects are skipped by every
    collection. Called after each load or swap, once the old version's references are gone:
    unfreezing first lets a replaced version's cycles be collected before the new heap freezes.
    """
    import gc

    gc.unfreeze()
    gc.collect()
    gc.freeze()


def load_state(
    model_uri: str,
    data_dir: str | Path,
    *,
    tracking_uri: str | None = None,
    device: str = "auto",
    catalog: Catalog | None = None,
    index_dir: str | Path | None = None,
) -> ModelState:
    """Load model version `model_uri`: weights, input builder over the catalog, faiss index.

    The index comes from `index_dir`, else the one logged for the registry version, else the
    `index/` folder of a local checkpoint; failing all three it is built here (logged warning)
    from the version's catalog vectors (`platform.vectors`: encoded once, then cached).
    """
    from outfitter.platform import registry
    from outfitter.platform.vectors import open_checkpoint

    if tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    if "://" in model_uri or tracking_uri:
        registry.configure_tracking()
    resolved = registry.resolve_model(model_uri)
    folder = _index_dir(resolved, index_dir)
    # features a missing index needs come from this replica's towers, not a Ray Data job
    opened = open_checkpoint(
        resolved.checkpoint_dir, data_dir, catalog=catalog, device=device, embed_on_ray=False
    )
    state = ModelState(
        resolved.version or Path(resolved.checkpoint_dir).resolve().name,
        resolved,
        opened.cfg,
        opened.meta,
        model=opened.model,
        builder=opened.builder,
        device=opened.device,
        alias=resolved.alias,
    )
    if folder is not None:
        state.index = CatalogIndex.load(folder, use_gpu=state.device.type == "cuda")
    else:
        from outfitter.platform.index import build_index_for_model

        log.warning("model %s has no index: building one in memory", state.version)
        state.index = build_index_for_model(resolved, opened.data_dir, opened=opened)
    if state.cfg.kind == "hybrid":
        _ = state.builder.towers  # target descriptions' text tower: built now, not on a request
    return state


def _index_dir(resolved, index_dir) -> Path | None:
    if index_dir is not None:
        return Path(index_dir)
    if resolved.index_dir is not None:
        return Path(resolved.index_dir)
    local = Path(resolved.checkpoint_dir) / "index"
    return local if (local / "meta.json").is_file() else None


def model_info(state: ModelState) -> dict[str, Any]:
    """What GET /v1/model reports (plus `max_items`, which the ingress checks outfits against)."""
    r = state.resolved
    index = state.index
    return {
        "name": r.name or "local",
        "version": state.version,
        "alias": state.alias,
        "run_id": r.run_id,
        "metrics": {k: float(v) for k, v in (r.metrics or {}).items()},
        "model_config_name": state.cfg.name,
        "max_items": state.max_items,
        "image_size": state.image_size,
        "index": {}
        if index is None
        else {"n_items": len(index), "dim": index.dim, "shards": index.shard_kinds()},
    }


def _cat_padded(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate along dim 0, zero-padding dim 1 of integer token tensors of different lengths."""
    if tensors[0].dim() == 2 and not tensors[0].is_floating_point():
        width = max(t.shape[1] for t in tensors)
        tensors = [torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in tensors]
    return torch.cat(tensors)


def _pad(state: ModelState, outfits: list[list[Member]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Item vectors (B, N, D) and mask (B, N) of outfits of catalog ids and new-item vectors."""
    index, n = state.index, max(len(o) for o in outfits)
    vecs = np.zeros((len(outfits), n, index.dim), np.float32)
    mask = np.zeros((len(outfits), n), bool)
    for b, outfit in enumerate(outfits):
        ids = [m for m in outfit if isinstance(m, str)]
        catalog = iter(index.vectors_of(ids)) if ids else iter(())
        for j, member in enumerate(outfit):
            if not isinstance(member, str) and np.shape(member) != (index.dim,):
                # a new item embedded by another model version: the caller re-runs it
                raise VersionSkew(f"item vector of shape {np.shape(member)}; model has {index.dim}")
            vecs[b, j] = next(catalog) if isinstance(member, str) else member
            mask[b, j] = True
    return torch.from_numpy(vecs).to(state.device), torch.from_numpy(mask).to(state.device)


@torch.no_grad()
def encode_new_items(state: ModelState, items: list[NewItem]) -> np.ndarray:
    """L2-normalised vectors (M, D) of non-catalog items (images already decoded and shrunk)."""
    if not items:
        return np.zeros((0, state.index.dim), np.float32)
    builder = state.builder
    inputs = [builder.encode_new_item(it.title, it.description, it.image) for it in items]
    merged = {k: _cat_padded([i[k] for i in inputs]).to(state.device) for k in inputs[0]}
    return state.model.encode_items(merged).float().cpu().numpy()  # (M, D)


@torch.no_grad()
def score_outfits(state: ModelState, outfits: list[list[Member]]) -> np.ndarray:
    """Compatibility probabilities (B,) of outfits."""
    vecs, mask = _pad(state, outfits)  # (B, N, D), (B, N)
    logits = state.model.compatibility_logits(vecs, mask)  # (B,)
    probs = torch.sigmoid(logits.float()).cpu().numpy()
    return np.nan_to_num(probs, nan=0.0)  # a NaN must not reach JSON (or a 5xx)


@torch.no_grad()
def targets_to_queries(
    state: ModelState,
    contexts: list[list[Member]],
    texts: list[str],
    categories: list[int | None],
) -> tuple[np.ndarray, TargetPlan]:
    """L2-normalised query vectors (Q, D): what each target's text and category ask of its
    outfit, and the plan of each target (`model.retrieval`: the category inferred for a target
    given without one, how sure, and which items the search keeps to)."""
    vecs, mask = _pad(state, contexts)  # (Q, N, D), (Q, N)
    queries, plan = query_vectors(state.model, state.builder, vecs, mask, texts, categories)
    return np.nan_to_num(queries.float().cpu().numpy(), nan=0.0), plan


def category_answers(plan: TargetPlan) -> list[dict[str, Any]]:
    """What each target's answer says of its category (`schemas.TargetCategory`)."""
    out = []
    for i, searched in enumerate(plan.search):
        inferred = plan.inferred[i]
        name = inferred if inferred is not None else searched
        out.append(
            {
                "name": None if name is None else CATEGORIES[name],
                "inferred": inferred is not None,
                "confidence": plan.confidence[i],
                "searched": None if searched is None else CATEGORIES[searched],
            }
        )
    return out


def retrieve(
    state: ModelState,
    contexts: list[list[Member]],
    texts: list[str],
    categories: list[int | None],
    k: int,
    excludes: list[set[str]],
) -> list[tuple[list[Hit], dict[str, Any]]]:
    """The `k` best catalog items per target and what its answer says of its category: its
    query vector, then the faiss index over the category the plan searches, fused."""
    queries, plan = targets_to_queries(state, contexts, texts, categories)  # (Q, D)
    hits = state.index.search(queries, k, plan.search, excludes)
    return list(zip(hits, category_answers(plan), strict=True))


class LocalBackend:
    """`service.ModelBackend` in-process, one request at a time: `swap` replaces the version.

    The plain-uvicorn baseline and the tests use it; the Serve replica batches the same calls.
    """

    def __init__(self, state: ModelState):
        self.state = state

    def swap(self, state: ModelState) -> None:
        self.state = state  # a request holds the state it started with until it finishes

    async def encode_new(self, items):
        st = self.state
        return st.version, await asyncio.to_thread(encode_new_items, st, items)

    async def score(self, outfits):
        st = self.state
        return st.version, await asyncio.to_thread(score_outfits, st, outfits)

    async def retrieve(self, contexts, texts, categories, k, excludes):
        st = self.state
        hits = await asyncio.to_thread(retrieve, st, contexts, texts, categories, k, excludes)
        return st.version, hits

    async def info(self) -> dict[str, Any]:
        return model_info(self.state)
