"""What each endpoint means, over any model backend: in-process (tests, plain FastAPI) or Ray Serve.

`CatalogService` validates item references against the catalog, decodes uploaded images (in a
thread, within a per-request pixel budget, shrunk to the image tower's input size), and composes
the backend's three operations (embed new items, score outfits, retrieve: query then search).
Every backend answer carries the model version that produced it; when a hot swap lands in the
middle of a request and two answers disagree, the request is re-run, so a response never mixes
two model versions.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from outfitter.data.errors import DatasetError
from outfitter.data.images import confined
from outfitter.data.types import CATEGORIES, CATEGORY_INDEX, Catalog
from outfitter.platform.serve.errors import ServingError, decode_images
from outfitter.platform.serve.schemas import (
    LIMITS,
    CatalogItem,
    CompatibilityRequest,
    CompatibilityResponse,
    CompletedTarget,
    CompleteRequest,
    CompleteResponse,
    Health,
    ItemRef,
    ItemsPage,
    Limits,
    ModelInfo,
    RetrievedItem,
    RetrieveRequest,
    RetrieveResponse,
    TargetCategory,
    WeakestItem,
)

log = logging.getLogger(__name__)

# An outfit member as the backend sees it: a catalog id, or the (D,) vector of a new item.
Member = str | np.ndarray


@dataclass(frozen=True)
class NewItem:
    """A non-catalog item of a request, image already decoded and checked."""

    title: str
    description: str
    image: Image.Image


class ModelBackend(Protocol):
    """The model side; every call returns `(model_version, result)`."""

    async def encode_new(self, items: list[NewItem]) -> tuple[str, np.ndarray]: ...

    async def score(self, outfits: list[list[Member]]) -> tuple[str, np.ndarray]: ...

    async def retrieve(
        self,
        contexts: list[list[Member]],
        texts: list[str],
        categories: list[int | None],
        k: int,
        excludes: list[set[str]],
    ) -> tuple[str, list[tuple[list, dict]]]: ...

    async def info(self) -> dict[str, Any]: ...


class VersionSkew(Exception):
    """Two parts of one request were answered by different model versions."""


def _new(refs: list[ItemRef]) -> list[ItemRef]:
    return [r for r in refs if not r.is_catalog]


def _same(*versions: str | None) -> str:
    found = {v for v in versions if v is not None}
    if len(found) != 1:
        raise VersionSkew(sorted(found))
    return found.pop()


class CatalogSearch:
    """The filter of `/v1/items` at catalog scale: items of a category whose text holds every word.

    A word matches anywhere in an item's lower-cased title, description and fine category (a
    substring: "leath" finds "leather"), as a scan of each item's text would, but the texts are
    joined into one string searched by C code (`re.finditer`) and categories are precomputed
    rows: a Python scan cost 70 ms a query at 41k items, ~0.3 s at Polyvore's 250k. Results keep
    the catalog's order.
    """

    def __init__(self, catalog: Catalog):
        self.ids = list(catalog.item_ids)
        items = [catalog.items[i] for i in self.ids]
        self.texts = [
            f"{it.title} {it.description} {it.fine_category}".lower().replace("\n", " ")
            for it in items
        ]
        self.blob = "\n".join(self.texts)  # a word has no whitespace: no match spans two items
        self.starts = np.cumsum([0] + [len(t) + 1 for t in self.texts])[:-1]
        categories = np.array([it.category for it in items])
        self.by_category = {str(c): np.flatnonzero(categories == c) for c in set(categories)}

    def matching(self, category: str | None, words: Sequence[str]) -> list[str]:
        rows = None if category is None else self.by_category.get(category, np.empty(0, int))
        for word in words:
            known = len(self.ids) if rows is None else len(rows)
            if self.blob.count(word) > 4 * known:  # a very common word: check the rows left
                rows = np.arange(len(self.ids)) if rows is None else rows
                rows = rows[[word in self.texts[r] for r in rows]]
                continue
            found = np.fromiter((m.start() for m in re.finditer(re.escape(word), self.blob)), int)
            hit = np.unique(np.searchsorted(self.starts, found, side="right") - 1)
            rows = hit if rows is None else np.intersect1d(rows, hit, assume_unique=True)
        if rows is None:
            return self.ids
        return [self.ids[r] for r in rows]


class CatalogService:
    """The endpoints' semantics over a catalog and a model backend."""

    def __init__(
        self, catalog: Catalog, backend: ModelBackend, limits: Limits = LIMITS, retries: int = 4
    ):
        self.catalog, self.backend, self.limits, self.retries = catalog, backend, limits, retries
        self._catalog_search = CatalogSearch(catalog)

    async def _retrying(self, run, *args):
        for attempt in range(self.retries):
            try:
                return await run(*args)
            except VersionSkew as skew:
                log.info(
                    "model versions %s answered one request (attempt %d); re-running",
                    skew,
                    attempt + 1,
                )
        raise ServingError(
            "model_version", "the model was swapped repeatedly during this request; retry", 503
        )

    # ------------------------------------------------------------ item references

    def _check_ids(self, ids: Sequence[str], field: str) -> None:
        unknown = sorted({i for i in ids if i not in self.catalog.items})
        if unknown:
            shown = unknown[:20] + (["..."] if len(unknown) > 20 else [])
            raise ServingError(field, f"unknown item ids: {shown}")

    async def _members(self, refs: list[ItemRef], field: str) -> tuple[list[Member], str | None]:
        """Catalog ids as they are, new items embedded by the backend; plus that model version."""
        self._check_ids([r.item_id for r in refs if r.is_catalog], field)
        uploads = [
            (f"{field}.{i}.image_b64", r.image_b64) for i, r in enumerate(refs) if not r.is_catalog
        ]
        if not uploads:
            return [r.item_id for r in refs], None
        side = (await self.backend.info()).get("image_size")
        # Decoding is CPU work: a thread, so the event loop keeps answering other requests.
        images = await asyncio.to_thread(decode_images, uploads, self.limits, side)
        new = [
            NewItem(r.title, r.description, im) for r, im in zip(_new(refs), images, strict=True)
        ]
        version, vectors = await self.backend.encode_new(new)  # (M, D)
        it = iter(vectors)
        return [r.item_id if r.is_catalog else next(it) for r in refs], version

    async def _check_length(self, n: int, field: str, blanks: int = 0) -> None:
        """`n` given items (+ `blanks` to fill) must fit the model's outfit length."""
        high = min(self.limits.max_outfit_items, int((await self.backend.info())["max_items"]))
        low = 2 - min(blanks, 1)
        if not low <= n <= high - blanks:
            what = f"{n} items + {blanks} to retrieve" if blanks else f"{n} items"
            raise ServingError(field, f"outfit has {what}; the model takes {low}..{high} in all")

    # ------------------------------------------------------------ endpoints

    async def compatibility(self, req: CompatibilityRequest) -> CompatibilityResponse:
        await self._check_length(len(req.items), "items")
        return await self._retrying(self._compatibility, req)

    async def _compatibility(self, req: CompatibilityRequest) -> CompatibilityResponse:
        members, v_enc = await self._members(req.items, "items")
        n = len(members)
        # One forward for the outfit and its n leave-one-out variants.
        variants = [members] + [members[:i] + members[i + 1 :] for i in range(n)]
        version, probs = await self.backend.score(variants)  # (n + 1,)
        version = _same(v_enc, version)
        weakest = int(np.argmax(probs[1:]))
        return CompatibilityResponse(
            score=float(probs[0]),
            model_version=version,
            weakest_item=WeakestItem(
                index=weakest,
                item_id=req.items[weakest].item_id,
                score_without=float(probs[1 + weakest]),
            ),
        )

    async def retrieve(self, req: RetrieveRequest) -> RetrieveResponse:
        await self._check_length(len(req.items), "items", blanks=1)
        self._check_ids(req.exclude, "exclude")
        return await self._retrying(self._retrieve, req)

    async def _retrieve(self, req: RetrieveRequest) -> RetrieveResponse:
        members, v_enc = await self._members(req.items, "items")
        version, results = await self._search(members, req.items, [req.target], req.k, req.exclude)
        items, category = results[0]
        return RetrieveResponse(model_version=_same(v_enc, version), items=items, category=category)

    async def complete(self, req: CompleteRequest) -> CompleteResponse:
        await self._check_length(len(req.items), "targets", blanks=len(req.targets))
        self._check_ids(req.exclude, "exclude")
        return await self._retrying(self._complete, req)

    async def _complete(self, req: CompleteRequest) -> CompleteResponse:
        members, v_enc = await self._members(req.items, "items")
        version, results = await self._search(members, req.items, req.targets, req.k, req.exclude)
        chosen: list[str] = []
        for hits, _ in results:  # greedy: the best item not already picked for an earlier blank
            pick = next((h.item_id for h in hits if h.item_id not in chosen), None)
            if pick is not None:
                chosen.append(pick)
        v_score, probs = await self.backend.score([members + chosen])
        return CompleteResponse(
            model_version=_same(version, v_enc, v_score),
            results=[
                CompletedTarget(target=t, items=items, category=category)
                for t, (items, category) in zip(req.targets, results, strict=True)
            ],
            outfit=[r.item_id for r in req.items] + chosen,
            score=float(probs[0]),
        )

    async def _search(
        self, members: list[Member], refs: list[ItemRef], targets, k: int, exclude: list[str]
    ) -> tuple[str, list[tuple[list[RetrievedItem], TargetCategory]]]:
        """Top-k catalog items per target, given the context outfit (`members` of `refs`), and
        what the model made of each target's category."""
        cats = [None if t.category is None else CATEGORY_INDEX[t.category] for t in targets]
        texts = [t.description for t in targets]
        skip = set(exclude) | {r.item_id for r in refs if r.is_catalog}
        n = len(targets)
        version, hits = await self.backend.retrieve([members] * n, texts, cats, k, [skip] * n)
        return version, [
            ([self._retrieved(h) for h in row], TargetCategory(**category))
            for row, category in hits
        ]

    def _retrieved(self, hit) -> RetrievedItem:
        item = self.catalog.items.get(hit.item_id)
        return RetrievedItem(
            item_id=hit.item_id,
            score=float(hit.score),
            category=CATEGORIES[hit.category],
            title=item.title if item else "",
        )

    def list_items(self, category: str | None, q: str | None, limit: int, offset: int) -> ItemsPage:
        ids = self._catalog_search.matching(category, q.lower().split() if q else [])
        page = [self.catalog.items[i] for i in ids[offset : offset + limit]]
        return ItemsPage(
            total=len(ids),
            limit=limit,
            offset=offset,
            items=[
                CatalogItem(item_id=it.item_id, title=it.title, category=it.category) for it in page
            ],
        )

    def image_path(self, item_id: str) -> Path:
        if item_id not in self.catalog.items:
            raise ServingError("item_id", f"unknown item id {item_id!r}", status=404)
        path = self.catalog.image_path(item_id)
        try:
            confined(path)  # a symlink out of the image folder is never served
        except DatasetError:
            raise ServingError("item_id", f"item {item_id!r} has no image", status=404) from None
        if not path.is_file():
            raise ServingError("item_id", f"item {item_id!r} has no image", status=404)
        return path

    async def model_info(self) -> ModelInfo:
        info = await self.backend.info()
        return ModelInfo(**{k: v for k, v in info.items() if k in ModelInfo.model_fields})

    async def health(self) -> Health:
        info = await self.backend.info()
        return Health(status="ok", model_version=info["version"])
