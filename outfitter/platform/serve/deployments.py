"""The Ray Serve deployment: one FastAPI replica holds a whole model version and batches inside.

    HTTP ─► proxy ─► Outfitter replica (FastAPI app + model + catalog vectors + faiss index)
                       score:    @serve.batch over requests ─► outfit transformer
                       retrieve: @serve.batch over requests ─► target queries ─► faiss search

A request is answered by the replica that took it, without a second hop; throughput scales by
adding replicas (autoscaling on ongoing requests). The replica's `user_config` names the model
(a concrete `models:/NAME/N`, pinned at deploy time, see `launch.prepare_config`); re-applying the
config calls `reconfigure`, which loads the new version beside the old one and swaps a single
reference: in-flight requests finish on the version they started with (a request whose parts
were answered by two versions is re-run). A version that fails to load leaves the running one
serving.

`build_app(args)` is the application builder of `serve_configs/*.yaml`
(`import_path: outfitter.platform.serve.deployments:build_app`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import numpy as np
from pydantic import BaseModel, Field
from ray import serve

from outfitter.platform.redact import redact_uri
from outfitter.platform.serve import core, security
from outfitter.platform.serve.errors import ModelUnavailable
from outfitter.platform.serve.schemas import Limits
from outfitter.platform.serve.service import CatalogService

log = logging.getLogger("ray.serve")

DEPLOYMENT = "Outfitter"  # the one deployment of the application
MODEL_KEYS = ("model_uri", "revision", "index_dir")  # user_config keys that name the version


class AppArgs(BaseModel):
    """Arguments of `build_app`: the `args:` of an application in a Serve config."""

    model_uri: str = Field(
        "models:/outfitter@champion",
        description="registry alias/version or checkpoint dir; an alias is pinned to its version "
        "when the application is built",
    )
    revision: str = Field("0", description="change it to reload the model after moving an alias")
    index_dir: str | None = Field(None, description="faiss index folder; default: the version's")
    data_dir: str = Field(..., description="catalog folder (Polyvore layout)")
    tracking_uri: str | None = Field(None, description="MLflow store; default MLFLOW_TRACKING_URI")
    device: str = Field("auto", description="torch device of the replica: auto, cpu, cuda")
    threads: int = Field(
        0, ge=0, description="torch/faiss CPU threads per replica; 0: the replica's num_cpus"
    )
    max_batch_size: int = Field(16, ge=1, description="@serve.batch size; 1 disables batching")
    batch_wait_timeout_s: float = Field(
        0.0, ge=0, description="@serve.batch wait for a fuller batch (0: take what has queued)"
    )
    limits: dict[str, int] = Field(default_factory=dict, description="overrides of schemas.Limits")
    allowed_hosts: list[str] = Field(
        default_factory=lambda: list(security.DEFAULT_ALLOWED_HOSTS),
        description="Host headers answered (DNS-rebinding guard): the names clients use",
    )


def _split(array, sizes: list[int]) -> list:
    return np.split(np.asarray(array), np.cumsum(sizes)[:-1]) if sizes else []


class BatchedBackend:
    """`service.ModelBackend` of one replica: concurrent requests merged into one model call.

    Each batch runs on the version loaded when it starts (`self.state` may be swapped meanwhile)
    in a worker thread, so the replica's event loop keeps parsing and answering requests. A
    request that finds its step idle skips the batch queue (`_run`).
    `reconfigure` loads the version a `user_config` names beside the running one and swaps.
    """

    def __init__(
        self, data_dir: str, tracking_uri: str | None, device: str, defaults: dict, catalog=None
    ):
        self.data_dir, self.tracking_uri, self.device = data_dir, tracking_uri, device
        self.defaults = defaults  # the builder's user_config; a config file may set only some keys
        self.catalog = catalog
        self.config: dict[str, Any] = {}
        self.state: core.ModelState | None = None
        self.load_error: str | None = None  # why the last reload failed (the old one kept)
        self.busy = {"encode": 0, "score": 0, "retrieve": 0}  # requests inside each model step

    async def reconfigure(self, config: dict[str, Any]) -> None:
        config = {**self.defaults, **(config or {})}
        self.set_batching(config.get("max_batch_size", 16), config.get("batch_wait_timeout_s", 0))
        same = all(config.get(k) == self.config.get(k) for k in MODEL_KEYS)
        if self.state is not None and same:
            self.config, self.load_error = config, None  # (back to) the model being served
            return
        try:
            state = await asyncio.to_thread(
                core.load_state,
                config["model_uri"],
                self.data_dir,
                tracking_uri=self.tracking_uri,
                device=self.device,
                catalog=self.catalog,
                index_dir=config.get("index_dir"),
            )
        except Exception as err:
            if self.state is None:
                raise  # nothing to serve: a clear startup error
            # shown by GET /v1/model and logged: no credentials of a store URI in it
            self.load_error = redact_uri(f"{config.get('model_uri')}: {type(err).__name__}: {err}")
            log.error(
                "keeping model %s; loading the new one failed: %s",
                self.state.version,
                self.load_error,
            )
            return
        state.alias = config.get("alias") or state.alias
        self.state, self.config, self.load_error = state, config, None  # the swap
        log.info("serving model %s (%s)", state.version, config["model_uri"])
        del state
        await asyncio.to_thread(core.settle_heap)  # the old version's cycles go, the new freezes

    def current(self) -> core.ModelState:
        if self.state is None:
            raise ModelUnavailable("the model is still loading")
        return self.state

    def set_batching(self, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        for fn in (self._encode_new, self._score, self._retrieve):
            fn.set_max_batch_size(int(max_batch_size))
            fn.set_batch_wait_timeout_s(float(batch_wait_timeout_s))

    # Each model step runs a list of requests in one model call: a batch that @serve.batch
    # gathered, or a single request that found the step idle (see `_run`).

    async def _encode_batch(self, requests: list[list]) -> list[tuple[str, np.ndarray]]:
        state = self.current()
        flat = [item for items in requests for item in items]
        vectors = await asyncio.to_thread(core.encode_new_items, state, flat)  # (M, D)
        return [(state.version, part) for part in _split(vectors, [len(r) for r in requests])]

    async def _score_batch(self, requests: list[list]) -> list[tuple[str, np.ndarray]]:
        state = self.current()
        flat = [outfit for outfits in requests for outfit in outfits]
        probs = await asyncio.to_thread(core.score_outfits, state, flat)  # (B,)
        return [(state.version, part) for part in _split(probs, [len(r) for r in requests])]

    async def _retrieve_batch(self, requests: list[tuple]) -> list[tuple[str, list]]:
        """Each request: (contexts, texts, categories, k, excludes); one search at the largest k."""
        state = self.current()
        contexts, texts, cats, excludes = [], [], [], []
        for ctx, txt, cat, _, exc in requests:
            contexts += ctx
            texts += txt
            cats += cat
            excludes += exc
        k = max(r[3] for r in requests)
        hits = await asyncio.to_thread(core.retrieve, state, contexts, texts, cats, k, excludes)
        rows = iter(hits)  # (hits, category answer) per target
        return [
            (state.version, [(h[:k_r], c) for h, c in (next(rows) for _ in ctx)])
            for ctx, _, _, k_r, _ in requests
        ]

    # The same steps behind `@serve.batch`'s queues (sized by `set_batching`). Declared as
    # methods of their own: `serve.batch` finds `self` by the decorated method's name.
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def _encode_new(self, requests: list[list]) -> list[tuple[str, np.ndarray]]:
        return await self._encode_batch(requests)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def _score(self, requests: list[list]) -> list[tuple[str, np.ndarray]]:
        return await self._score_batch(requests)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def _retrieve(self, requests: list[tuple]) -> list[tuple[str, list]]:
        return await self._retrieve_batch(requests)

    async def _run(self, step: str, request, batched, alone):
        """One request through a model step: at once when no other request is inside the step,
        else through the step's `@serve.batch` queue, so concurrent requests share model calls.

        A batch of one gains nothing from the queue, and going through it was about a third of
        the latency at concurrency 1 (bench/serve_load.py: p50 4.4 -> 2.8 ms on
        /v1/compatibility without it); once requests overlap, they batch as before.
        """
        idle = self.busy[step] == 0
        self.busy[step] += 1
        try:
            if idle:
                return (await alone([request]))[0]
            return await batched(request)
        finally:
            self.busy[step] -= 1

    async def encode_new(self, items):
        return await self._run("encode", items, self._encode_new, self._encode_batch)

    async def score(self, outfits):
        return await self._run("score", outfits, self._score, self._score_batch)

    async def retrieve(self, contexts, texts, categories, k, excludes):
        request = (contexts, texts, categories, k, excludes)
        return await self._run("retrieve", request, self._retrieve, self._retrieve_batch)

    async def info(self) -> dict[str, Any]:
        return {**core.model_info(self.current()), "load_error": self.load_error}


# Serve learns that a replica's process died only from its next health check: every 2 s here
# instead of Ray's 10, so a crashed replica is replaced up to 8 s sooner (the check itself is one
# actor call that the replica answers from its event loop).
@serve.deployment(
    ray_actor_options={"num_cpus": 1}, max_ongoing_requests=32, health_check_period_s=2
)
@serve.ingress()
class Outfitter:
    """The FastAPI app of `app.create_app` over the model version its `user_config` names."""

    def __init__(self, data_dir: str, tracking_uri: str | None, device: str, defaults: dict):
        from outfitter.data import load_catalog

        self.limits = Limits(**defaults.get("limits", {}))
        self.api_key = security.load_api_key()  # OUTFITTER_API_KEY[_FILE]; never an argument
        self.allowed_hosts = defaults.get("allowed_hosts", list(security.DEFAULT_ALLOWED_HOSTS))
        threads = defaults.get("threads") or _cpus_of_this_replica()
        if threads:
            core.set_threads(threads)
        catalog = load_catalog(data_dir)
        self.backend = BatchedBackend(data_dir, tracking_uri, device, defaults, catalog)
        self.service = CatalogService(catalog, self.backend, self.limits)

    def __serve_build_asgi_app__(self):
        from outfitter.platform.serve.app import create_app

        return create_app(
            self.service, self.limits, api_key=self.api_key, allowed_hosts=self.allowed_hosts
        )

    async def reconfigure(self, config: dict[str, Any]) -> None:
        await self.backend.reconfigure(config)

    async def info(self) -> dict[str, Any]:
        """What GET /v1/model reports, and why the last reload failed (handle calls, tests)."""
        return await self.backend.info()


def _cpus_of_this_replica() -> int | None:
    """The CPUs Ray gave this replica (at least 1), not the host's; None outside a Ray worker."""
    import ray

    if not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return None  # e.g. a test constructing the class directly: leave its threads alone
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    return max(1, int(cpus))


def user_config(args: AppArgs) -> dict[str, Any]:
    """The deployment's `user_config`; a config's `deployments[].user_config` wins key by key."""
    return {
        "model_uri": args.model_uri,
        "revision": args.revision,
        "index_dir": args.index_dir,
        "max_batch_size": args.max_batch_size,
        "batch_wait_timeout_s": args.batch_wait_timeout_s,
    }


def build_app(args: AppArgs | dict[str, Any]) -> serve.Application:
    """The Serve application: the builder named by `import_path` in serve_configs/*.yaml.

    A registry alias in `model_uri` is resolved here, once, to the version it names now: every
    replica (a restart, an autoscaler scale-up) then loads that version, whatever the alias
    points at later. `outfitter serve` pins the same way in the config it deploys.
    """
    from outfitter.platform.serve.launch import absolute_args, pin_model_uri

    args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
    args = AppArgs.model_validate(absolute_args(args.model_dump()))  # as `serve run` from here
    if args.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    Limits(**args.limits)  # fail at deploy time on an unknown limit
    config = user_config(args)
    pinned, alias = pin_model_uri(args.model_uri, args.tracking_uri)
    config.update(model_uri=pinned, alias=alias)
    defaults = {**config, "limits": args.limits, "threads": args.threads,
                "allowed_hosts": args.allowed_hosts}  # fmt: skip
    return Outfitter.options(user_config=config).bind(
        args.data_dir, args.tracking_uri, args.device, defaults
    )
