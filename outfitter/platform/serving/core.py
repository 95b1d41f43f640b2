"""Plain serving classes (no Ray): one loaded model version, and what each deployment does with it.

`load_state` resolves a model URI (registry alias/version or checkpoint folder) and loads only the
parts a deployment needs: the model and input builder for `encoder` and `scorer`, the faiss index
for `scorer` (catalog item vectors) and `retriever`. `ItemEncoder`, `Scorer` and `Retriever` are
what the Ray deployments call, and `LocalBackend` runs all three in-process for tests and for a
plain FastAPI app.
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
from outfitter.model.device import resolve_device
from outfitter.platform.index import CatalogIndex, Hit
from outfitter.platform.serving.service import Member, NewItem, VersionSkew

log = logging.getLogger(__name__)

PARTS = ("encoder", "scorer", "retriever")


@dataclass
class ModelState:
    """One model version, loaded for serving."""

    version: str  # the registry version, or the checkpoint folder's name
    resolved: Any  # registry.ResolvedModel
    cfg: Any  # ModelConfig
    meta: dict = field(default_factory=dict)
    model: torch.nn.Module | None = None
    builder: Any = None  # InputBuilder (encoder part)
    index: CatalogIndex | None = None
    device: torch.device = torch.device("cpu")
    prompt_feats: torch.Tensor | None = None  # (C, Dt) category prompts, to guess a category

    @property
    def max_items(self) -> int:
        return int(self.cfg.transformer.max_items)


def load_state(
    model_uri: str,
    data_dir: str | Path,
    *,
    parts: tuple[str, ...] = PARTS,
    tracking_uri: str | None = None,
    device: str = "auto",
    catalog: Catalog | None = None,
    index_dir: str | Path | None = None,
) -> ModelState:
    """Load the parts of model version `model_uri` that `parts` need.

    The index comes from `index_dir`, else the one logged for the registry version, else the
    `index/` folder of a local checkpoint; failing all three it is built here (logged warning).
    """
    from outfitter.platform import registry

    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown serving parts {sorted(unknown)}; known: {PARTS}")
    if tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    if "://" in model_uri or tracking_uri:
        registry.configure_tracking()
    resolved = registry.resolve_model(model_uri)
    folder = _index_dir(resolved, index_dir) if {"scorer", "retriever"} & set(parts) else None
    # The retriever alone needs no weights, unless the index has to be built here.
    needs_model = bool({"encoder", "scorer"} & set(parts)) or ("retriever" in parts and not folder)
    state = _load_model(resolved, resolve_device(device), with_weights=needs_model)
    if "encoder" in parts or ("retriever" in parts or "scorer" in parts) and folder is None:
        from outfitter.data import load_catalog
        from outfitter.model.inputs import InputBuilder

        catalog = catalog or load_catalog(Path(data_dir))
        state.builder = InputBuilder.for_model(state.model, catalog)
    if folder is not None:
        state.index = CatalogIndex.load(folder)
    elif "scorer" in parts or "retriever" in parts:
        from outfitter.platform.index import build_index

        log.warning("model %s has no index: building one in memory", state.version)
        state.index = build_index(state.model, state.builder, device=state.device)
    if "encoder" in parts:
        _guesses_category(state)  # creates the towers and the prompt features now, not on a request
    else:
        state.builder = None
    if not {"encoder", "scorer"} & set(parts):
        state.model = None
    return state


def _load_model(resolved, device: torch.device, *, with_weights: bool) -> ModelState:
    """The checkpoint's config and meta, and its model in eval mode on `device` if asked."""
    import json

    from outfitter.model.checkpoint import load_checkpoint
    from outfitter.model.config import ModelConfig

    folder = Path(resolved.checkpoint_dir)
    version = resolved.version or folder.resolve().name
    if with_weights:
        model, cfg, meta = load_checkpoint(folder, map_location="cpu")
        model.to(device).eval()
    else:
        model, cfg = None, ModelConfig.from_dict(json.loads((folder / "config.json").read_text()))
        meta = (
            json.loads((folder / "meta.json").read_text())
            if (folder / "meta.json").exists()
            else {}
        )
    return ModelState(version, resolved, cfg, dict(meta or {}), model=model, device=device)


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
        "alias": r.alias,
        "run_id": r.run_id,
        "metrics": {k: float(v) for k, v in (r.metrics or {}).items()},
        "model_config_name": state.cfg.name,
        "max_items": state.max_items,
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


def concat_texts(encoded: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Merge several `ItemEncoder.encode_texts` results (one per request) into one batch."""
    if not encoded or not encoded[0]:
        return {}
    return {key: _cat_padded([e[key] for e in encoded]) for key in encoded[0]}


def split_texts(
    encoded: dict[str, torch.Tensor], sizes: list[int]
) -> list[dict[str, torch.Tensor]]:
    """The inverse of `concat_texts`: one dict per request of `sizes[i]` texts."""
    out, start = [], 0
    for n in sizes:
        out.append({key: value[start : start + n] for key, value in encoded.items()})
        start += n
    return out


def _guesses_category(state: ModelState) -> bool:
    """Whether targets without a category need one guessed; computes the prompt features once."""
    cfg = state.cfg
    if cfg.kind != "hybrid" or not cfg.target.use_category:
        return False
    if state.prompt_feats is None:
        prompts = [state.builder.prompt(c) for c in range(len(CATEGORIES))]
        state.prompt_feats = torch.from_numpy(state.builder.towers.encode_texts(prompts))  # (C, Dt)
    return True


class ItemEncoder:
    """CLIP towers side: vectors of new items, encodings of target descriptions."""

    def __init__(self, state: ModelState):
        self.state = state

    @torch.no_grad()
    def encode_new(self, items: list[NewItem]) -> np.ndarray:
        """L2-normalised vectors (M, D) of non-catalog items."""
        st = self.state
        if not items:
            return np.zeros((0, st.index.dim if st.index else 0), np.float32)
        inputs = [st.builder.encode_new_item(it.title, it.description, it.image) for it in items]
        merged = {k: _cat_padded([i[k] for i in inputs]).to(st.device) for k in inputs[0]}
        return st.model.encode_items(merged).float().cpu().numpy()  # (M, D)

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Target-text inputs, and `category_guess` (T,): the nearest category prompt."""
        st = self.state
        encoded = dict(st.builder.encode_texts(texts))
        if _guesses_category(st) and texts:
            towers = st.builder.towers
            feats = encoded.get("text_feat")
            feats = (
                torch.from_numpy(towers.encode_texts(texts)) if feats is None else feats
            )  # (T, Dt)
            encoded["category_guess"] = (feats @ st.prompt_feats.T).argmax(1)  # (T,)
        return {k: v.cpu() for k, v in encoded.items()}


class Scorer:
    """Outfit transformer side: compatibility of outfits, retrieval query vectors."""

    def __init__(self, state: ModelState):
        self.state = state

    def _pad(self, outfits: list[list[Member]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Item vectors (B, N, D) and mask (B, N) of outfits of catalog ids and new-item vectors."""
        index, n = self.state.index, max(len(o) for o in outfits)
        vecs = np.zeros((len(outfits), n, index.dim), np.float32)
        mask = np.zeros((len(outfits), n), bool)
        for b, outfit in enumerate(outfits):
            ids = [m for m in outfit if isinstance(m, str)]
            catalog = iter(index.vectors_of(ids)) if ids else iter(())
            for j, member in enumerate(outfit):
                if not isinstance(member, str) and np.shape(member) != (index.dim,):
                    # a new item embedded by another model version: the caller re-runs it
                    raise VersionSkew(
                        f"item vector of shape {np.shape(member)}; model has {index.dim}"
                    )
                vecs[b, j] = next(catalog) if isinstance(member, str) else member
                mask[b, j] = True
        dev = self.state.device
        return torch.from_numpy(vecs).to(dev), torch.from_numpy(mask).to(dev)

    @torch.no_grad()
    def score(self, outfits: list[list[Member]]) -> np.ndarray:
        """Compatibility probabilities (B,) of outfits."""
        vecs, mask = self._pad(outfits)  # (B, N, D), (B, N)
        logits = self.state.model.compatibility_logits(vecs, mask)  # (B,)
        probs = torch.sigmoid(logits.float()).cpu().numpy()
        return np.nan_to_num(probs, nan=0.0)  # a NaN must not reach JSON (or a 5xx)

    @torch.no_grad()
    def query(
        self, contexts: list[list[Member]], texts: dict, categories: list[int | None]
    ) -> np.ndarray:
        """L2-normalised query vectors (Q, D) for the wanted item of each context.

        A target without a category takes the category whose prompt is closest to its text.
        """
        st = self.state
        vecs, mask = self._pad(contexts)  # (Q, N, D), (Q, N)
        guess = texts.get("category_guess")
        cats = [
            c if c is not None else (int(guess[i]) if guess is not None else 0)
            for i, c in enumerate(categories)
        ]
        target_text = {k: v.to(st.device) for k, v in texts.items() if k != "category_guess"}
        category = torch.tensor(cats, dtype=torch.long, device=st.device)  # (Q,)
        queries = st.model.query(vecs, mask, target_text or None, category)  # (Q, D)
        return np.nan_to_num(queries.float().cpu().numpy(), nan=0.0)


class Retriever:
    """faiss side: the catalog items closest to query vectors."""

    def __init__(self, state: ModelState):
        self.state = state

    def search(self, queries: np.ndarray, k: int, categories, excludes) -> list[list[Hit]]:
        return self.state.index.search(queries, k, categories, excludes)


class LocalBackend:
    """`service.ModelBackend` in-process: all parts on one `ModelState`; `swap` replaces it."""

    def __init__(self, state: ModelState):
        self.state = state

    def swap(self, state: ModelState) -> None:
        self.state = state  # a request holds the state it started with until it finishes

    async def encode_new(self, items):
        st = self.state
        return st.version, await asyncio.to_thread(ItemEncoder(st).encode_new, items)

    async def score(self, outfits):
        st = self.state
        return st.version, await asyncio.to_thread(Scorer(st).score, outfits)

    async def query(self, contexts, texts, categories):
        st = self.state

        def run():
            return Scorer(st).query(contexts, ItemEncoder(st).encode_texts(texts), categories)

        return st.version, await asyncio.to_thread(run)

    async def search(self, queries, k, categories, excludes):
        st = self.state
        return st.version, await asyncio.to_thread(
            Retriever(st).search, queries, k, categories, excludes
        )

    async def info(self) -> dict[str, Any]:
        return model_info(self.state)
