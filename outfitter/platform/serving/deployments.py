"""Ray Serve deployments: a thin layer over the plain classes of `core`, composed with handles.

    HTTP ─► Ingress (FastAPI) ─► ItemEncoder  (CLIP towers: new items, target texts; @serve.batch)
                              ─► OutfitScorer (outfit transformer: scores, queries; @serve.batch)
                              ─► Retriever    (faiss index of the same model version)

Every model deployment takes a `user_config` naming the model (`model_uri`, and a free `revision`
to force a reload after moving an alias). Re-applying the config calls `reconfigure`, which loads
the new version beside the old one and swaps a single reference: in-flight requests finish on
the version they started with, and the ingress re-runs any request whose parts were answered by
two versions. A version that fails to load leaves the running one serving.

`build_app(args)` is the application builder of `serve_configs/*.yaml`
(`import_path: outfitter.platform.serving.deployments:build_app`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import numpy as np
from pydantic import BaseModel, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from outfitter.platform.serving import core
from outfitter.platform.serving.errors import ModelUnavailable
from outfitter.platform.serving.schemas import Limits
from outfitter.platform.serving.service import CatalogService, NewItem, VersionSkew

log = logging.getLogger("ray.serve")


class AppArgs(BaseModel):
    """Arguments of `build_app`: the `args:` of an application in a Serve config."""

    model_uri: str = Field(
        "models:/outfitter@champion", description="registry alias/version or checkpoint dir"
    )
    revision: str = Field("0", description="change it to reload the model after moving an alias")
    index_dir: str | None = Field(None, description="faiss index folder; default: the version's")
    data_dir: str = Field(..., description="catalog folder (Polyvore layout)")
    tracking_uri: str | None = Field(None, description="MLflow store; default MLFLOW_TRACKING_URI")
    device: str = Field(
        "auto", description="torch device of the model deployments: auto, cpu, cuda"
    )
    max_batch_size: int = Field(16, ge=1, description="@serve.batch size; 1 disables batching")
    batch_wait_timeout_s: float = Field(
        0.005, ge=0, description="@serve.batch wait for a fuller batch"
    )
    limits: dict[str, int] = Field(default_factory=dict, description="overrides of schemas.Limits")


class _ModelReplica:
    """Loads the model version its `user_config` names; keeps serving the old one if that fails."""

    parts: tuple[str, ...] = ()  # what of a model version this deployment loads (core.load_state)
    batched: tuple[str, ...] = ()  # its @serve.batch methods, resized by user_config

    def __init__(self, data_dir: str, tracking_uri: str | None, device: str, defaults: dict):
        self.data_dir, self.tracking_uri, self.device = data_dir, tracking_uri, device
        self.defaults = defaults  # the builder's user_config; a config file may set only some keys
        self.state: core.ModelState | None = None
        self.config: dict[str, Any] = {}
        self.load_error: str | None = None

    async def reconfigure(self, config: dict[str, Any]) -> None:
        config = {**self.defaults, **(config or {})}
        batching = {k: config[k] for k in ("max_batch_size", "batch_wait_timeout_s") if k in config}
        self._set_batching(**batching)
        model_keys = ("model_uri", "revision", "index_dir")
        if self.state is not None and all(config.get(k) == self.config.get(k) for k in model_keys):
            self.config, self.load_error = config, None  # (back to) the model being served
            return
        try:
            state = await asyncio.to_thread(
                core.load_state,
                config["model_uri"],
                self.data_dir,
                parts=self.parts,
                tracking_uri=self.tracking_uri,
                device=self.device,
                index_dir=config.get("index_dir"),
            )
        except Exception as err:
            if self.state is None:
                raise  # nothing to serve: a clear startup error
            self.load_error = f"{config.get('model_uri')}: {type(err).__name__}: {err}"
            log.error(
                "keeping model %s; loading the new one failed: %s",
                self.state.version,
                self.load_error,
            )
            return
        self.state, self.config, self.load_error = state, config, None
        log.info("serving model %s (%s)", state.version, ",".join(self.parts))

    def _set_batching(
        self, max_batch_size: int | None = None, batch_wait_timeout_s: float | None = None
    ):
        for method in self.batched:
            fn = getattr(self, method)
            if max_batch_size is not None:
                fn.set_max_batch_size(int(max_batch_size))
            if batch_wait_timeout_s is not None:
                fn.set_batch_wait_timeout_s(float(batch_wait_timeout_s))

    def _current(self) -> core.ModelState:
        if self.state is None:
            raise ModelUnavailable("the model is still loading")
        return self.state


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
class ItemEncoder(_ModelReplica):
    """CLIP towers: vectors of new (non-catalog) items and encodings of target descriptions."""

    parts = ("encoder",)
    batched = ("encode_new", "encode_texts")

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def encode_new(self, requests: list[list[NewItem]]) -> list[tuple[str, np.ndarray]]:
        state = self._current()
        flat = [item for items in requests for item in items]
        vectors = await asyncio.to_thread(core.ItemEncoder(state).encode_new, flat)  # (M, D)
        return [(state.version, part) for part in _split(vectors, [len(r) for r in requests])]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def encode_texts(self, requests: list[list[str]]) -> list[tuple[str, Any]]:
        state = self._current()
        flat = [text for texts in requests for text in texts]
        encoded = await asyncio.to_thread(core.ItemEncoder(state).encode_texts, flat)
        return [
            (state.version, part) for part in core.split_texts(encoded, [len(r) for r in requests])
        ]


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
class OutfitScorer(_ModelReplica):
    """The outfit transformer: compatibility of outfits and retrieval query vectors."""

    parts = ("scorer",)
    batched = ("score", "query")

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def score(self, requests: list[list[list[core.Member]]]) -> list[tuple[str, np.ndarray]]:
        state = self._current()
        flat = [outfit for outfits in requests for outfit in outfits]
        probs = await asyncio.to_thread(core.Scorer(state).score, flat)  # (B,)
        return [(state.version, part) for part in _split(probs, [len(r) for r in requests])]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def query(self, requests: list[tuple]) -> list[tuple[str, np.ndarray | None]]:
        """Each request: (contexts, (text version, encoded texts), categories).

        Texts encoded by another model version (a swap in between) are not computed: the answer
        (this version, None) tells the caller to re-run the request.
        """
        state = self._current()
        fresh = [r[1][0] == state.version for r in requests]
        current = [r for r, ok in zip(requests, fresh, strict=True) if ok]
        contexts = [c for ctx, _, _ in current for c in ctx]
        cats = [c for _, _, cs in current for c in cs]
        texts = core.concat_texts([enc for _, (_, enc), _ in current])
        queries = (
            await asyncio.to_thread(core.Scorer(state).query, contexts, texts, cats)  # (Q, D)
            if current
            else None
        )
        parts = iter(_split(queries, [len(r[0]) for r in current]) if current else [])
        return [(state.version, next(parts) if ok else None) for ok in fresh]

    async def info(self) -> dict[str, Any]:
        info = core.model_info(self._current())
        return {**info, "load_error": self.load_error}


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
class Retriever(_ModelReplica):
    """The faiss index of the served model version."""

    parts = ("retriever",)

    async def search(self, queries: np.ndarray, k: int, categories, excludes) -> tuple[str, list]:
        state = self._current()
        hits = await asyncio.to_thread(
            core.Retriever(state).search, queries, k, categories, excludes
        )
        return state.version, hits


def _split(array, sizes: list[int]) -> list:
    return np.split(np.asarray(array), np.cumsum(sizes)[:-1]) if sizes else []


_RETRIES = 3  # model calls are pure reads: safe to re-send when a replica died under them


async def _call(method, *args):
    """`await method.remote(*args)`, re-sent when the replica it went to died or went away."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError
    from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError

    transient = (ActorDiedError, ActorUnavailableError, ReplicaUnavailableError)
    for attempt in range(_RETRIES + 1):
        try:
            return await method.remote(*args)
        except transient as err:
            if attempt == _RETRIES:
                raise ModelUnavailable(
                    f"model replicas unavailable: {type(err).__name__}"
                ) from None
            log.warning(
                "re-sending a request after %s (attempt %d)", type(err).__name__, attempt + 1
            )
            await asyncio.sleep(0.1 * 2**attempt)
        except DeploymentUnavailableError as err:
            raise ModelUnavailable(str(err)) from None
    raise AssertionError("unreachable")


class HandleBackend:
    """`service.ModelBackend` over deployment handles."""

    def __init__(
        self, encoder: DeploymentHandle, scorer: DeploymentHandle, retriever: DeploymentHandle
    ):
        self.encoder, self.scorer, self.retriever = encoder, scorer, retriever
        self._info: tuple[float, dict] | None = None

    async def encode_new(self, items):
        return await _call(self.encoder.encode_new, items)

    async def score(self, outfits):
        return await _call(self.scorer.score, outfits)

    async def query(self, contexts, texts, categories):
        encoded = await _call(self.encoder.encode_texts, texts)  # (version, encodings)
        text_version = encoded[0]
        version, queries = await _call(self.scorer.query, (contexts, encoded, categories))
        if version != text_version:
            raise VersionSkew([text_version, version])
        return version, queries

    async def search(self, queries, k, categories, excludes):
        return await _call(self.retriever.search, queries, k, categories, excludes)

    async def info(self) -> dict:
        now = time.monotonic()
        if self._info is None or now - self._info[0] > 1.0:  # fresh within a second of a swap
            self._info = (now, await _call(self.scorer.info))
        return self._info[1]


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=128)
@serve.ingress()
class Ingress:
    """The FastAPI app of `app.create_app`, its model calls going to the other deployments."""

    def __init__(self, encoder, scorer, retriever, data_dir: str, limits: dict[str, int]):
        from outfitter.data import load_catalog

        self.limits = Limits(**limits)
        backend = HandleBackend(encoder, scorer, retriever)
        self.service = CatalogService(load_catalog(data_dir), backend, self.limits)

    def __serve_build_asgi_app__(self):
        from outfitter.platform.serving.app import create_app

        return create_app(self.service, self.limits)


MODEL_DEPLOYMENTS = ("ItemEncoder", "OutfitScorer", "Retriever")


def user_configs(args: AppArgs) -> dict[str, dict[str, Any]]:
    """The `user_config` of each model deployment; a config's `deployments[].user_config` wins."""
    model = {"model_uri": args.model_uri, "revision": args.revision, "index_dir": args.index_dir}
    batching = {
        "max_batch_size": args.max_batch_size,
        "batch_wait_timeout_s": args.batch_wait_timeout_s,
    }
    return {
        "ItemEncoder": {**model, **batching},
        "OutfitScorer": {**model, **batching},
        "Retriever": model,
    }


def build_app(args: AppArgs | dict[str, Any]) -> serve.Application:
    """The Serve application: the builder named by `import_path` in serve_configs/*.yaml."""
    from outfitter.platform.serving.launch import absolute_args

    args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
    args = AppArgs.model_validate(absolute_args(args.model_dump()))  # as `serve run` from here
    if args.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    Limits(**args.limits)  # fail at deploy time on an unknown limit
    configs = user_configs(args)
    common = (args.data_dir, args.tracking_uri, args.device)
    deployments = {d.name: d for d in (ItemEncoder, OutfitScorer, Retriever)}
    encoder, scorer, retriever = (
        deployments[name].options(user_config=configs[name]).bind(*common, configs[name])
        for name in MODEL_DEPLOYMENTS
    )
    return Ingress.bind(encoder, scorer, retriever, args.data_dir, args.limits)
