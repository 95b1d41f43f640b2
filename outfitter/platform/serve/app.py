"""The FastAPI app: routes over a `CatalogService`, and guards that keep every bad request a 4xx.

The same app runs in-process (tests, `uvicorn`) and as the Ray Serve ingress. Errors are answered
as `{"error": ..., "errors": [{"field", "rule"}]}`; a body over the size limit is cut off while it
streams in (413); an unexpected exception is logged and answered with a bare 500, never a
traceback.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures' Annotated
# limits (built from the `limits` argument of create_app) at definition time.
import json
import logging
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from outfitter.platform.serve import security
from outfitter.platform.serve.errors import ModelUnavailable, ServingError
from outfitter.platform.serve.schemas import (
    LIMITS,
    REF_TAGS,
    CategoryName,
    CompatibilityResponse,
    CompleteResponse,
    ErrorResponse,
    Health,
    ItemsPage,
    Limits,
    ModelInfo,
    RetrieveResponse,
    request_models,
)
from outfitter.platform.serve.service import CatalogService

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"  # the Outfit Studio page, if shipped
_ERRORS = {status: {"model": ErrorResponse} for status in (400, 404, 413, 422, 503)}


def _error(
    status: int, message: str, errors: list[dict] | None = None, headers=None
) -> JSONResponse:
    body = {"error": message, "errors": errors or []}
    return JSONResponse(body, status_code=status, headers=headers)


class GuardMiddleware:
    """Refuses bodies over `max_body_bytes` (413); turns any escaped exception into a bare 500."""

    def __init__(self, app, max_body_bytes: int):
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_body_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            size = declared.decode(errors="replace")[:20]
            rule = f"request body is {size} bytes; the limit is {limit}"
            return await _error(413, rule, [{"field": "body", "rule": rule}])(scope, receive, send)
        seen, started = 0, False

        async def counting_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:  # a chunked body that did not declare its length
                raise HTTPException(413, f"request body exceeds the limit of {limit} bytes")
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await _error(500, "internal error; the server log has the details")(
                    scope, receive, send
                )


class AdmissionMiddleware:
    """A bounded queue per replica: at most `max_in_flight` model requests inside at once.

    A model request (POST under /v1/) beyond the bound is answered at once with 503, a
    `Retry-After` header and a JSON body naming the limit: under overload a client learns to
    back off in a millisecond instead of waiting for a timeout, and the replica's memory stays
    bounded by the requests it holds. Catalog reads (GET) are cheap and are never refused.
    """

    def __init__(self, app, max_in_flight: int, retry_after_s: int = 1):
        self.app, self.max_in_flight, self.retry_after_s = app, max_in_flight, retry_after_s
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        if self.in_flight >= self.max_in_flight:
            rule = f"{self.in_flight} requests in flight; the limit is {self.max_in_flight}"
            headers = {"Retry-After": str(self.retry_after_s)}
            errors = [{"field": "request", "rule": f"max_in_flight: {rule}"}]
            answer = _error(503, f"overloaded: {rule}; retry later", errors, headers=headers)
            return await answer(scope, receive, send)
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def _field(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in REF_TAGS]
    if len(parts) > 1 and parts[0] in ("body", "query", "path"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def _rule(err: dict) -> str:
    if err.get("type") == "json_invalid":
        return f"is not valid JSON ({(err.get('ctx') or {}).get('error', 'decode error')})"
    return str(err.get("msg", "invalid")).removeprefix("Value error, ")


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "field": "body" if e.get("type") == "json_invalid" else _field(e.get("loc", ())),
                "rule": _rule(e),
            }
            for e in exc.errors()[:50]
        ]
        summary = "; ".join(f"{e['field']}: {e['rule']}" for e in errors[:5])
        return _error(422, f"invalid request: {summary}", errors)

    @app.exception_handler(ServingError)
    async def _serving(_: Request, exc: ServingError) -> JSONResponse:
        return _error(
            exc.status, f"{exc.field}: {exc.rule}", [{"field": exc.field, "rule": exc.rule}]
        )

    @app.exception_handler(ModelUnavailable)
    async def _unavailable(_: Request, exc: ModelUnavailable) -> JSONResponse:
        return _error(503, f"no model is loaded: {exc}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        # FastAPI's only 400 is a body it cannot read (e.g. bytes that are not UTF-8)
        errors = [{"field": "body", "rule": detail}] if exc.status_code == 400 else None
        return _error(exc.status_code, detail, errors, headers=exc.headers)  # Allow on a 405


def create_app(
    service: CatalogService,
    limits: Limits = LIMITS,
    static_dir: Path | None = STATIC_DIR,
    *,
    api_key: security.ApiKey | None = None,
    allowed_hosts: list[str] | None = None,
) -> FastAPI:
    """The serving app over `service`; serves `static_dir/index.html` at `/` when it exists.

    Args:
        api_key: when given, every route but /healthz and /v1/model needs it (`security`).
        allowed_hosts: Host headers answered (others get a 400); None: any.
    """
    app = FastAPI(
        title="Outfitter",
        version="1",
        description="Outfit compatibility and complementary-item retrieval over a catalog.",
    )
    app.add_middleware(AdmissionMiddleware, max_in_flight=limits.max_in_flight)
    app.add_middleware(security.ApiKeyMiddleware, key=api_key)
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    app.add_middleware(GuardMiddleware, max_body_bytes=limits.max_body_bytes)  # the outermost
    models = request_models(limits)  # the request schemas of these limits
    _install_handlers(app)

    @app.post("/v1/compatibility", response_model=CompatibilityResponse, responses=_ERRORS)
    async def compatibility(req: models.compatibility):
        """Probability that the items go together, and the item whose removal helps most."""
        return await service.compatibility(req)

    @app.post("/v1/retrieve", response_model=RetrieveResponse, responses=_ERRORS)
    async def retrieve(req: models.retrieve):
        """The k catalog items that best complete the outfit as the target describes."""
        return await service.retrieve(req)

    @app.post("/v1/complete", response_model=CompleteResponse, responses=_ERRORS)
    async def complete(req: models.complete):
        """Fill several blanks of one outfit at once."""
        return await service.complete(req)

    @app.get("/v1/items", response_model=ItemsPage, responses=_ERRORS)
    def items(  # a plain def: FastAPI runs it in its thread pool, off the event loop
        category: CategoryName | None = None,
        q: Annotated[str | None, Query(max_length=limits.max_text_chars)] = None,
        limit: Annotated[int, Query(ge=1, le=limits.max_list_limit)] = 50,
        offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    ):
        """Catalog items, filtered by category and words of their text."""
        return service.list_items(category, q, limit, offset)

    @app.get("/v1/items/{item_id}/image", response_class=FileResponse, responses=_ERRORS)
    async def item_image(item_id: str):
        """The item's catalog image."""
        return FileResponse(service.image_path(item_id), media_type="image/jpeg")

    @app.get("/v1/model", response_model=ModelInfo, responses=_ERRORS)
    async def model(request: Request):
        """The model version being served: registered name, version, alias; with the API key
        (or when none is configured) also its run, metrics, index and last load error."""
        info = await service.model_info()
        if security.authenticated(request):
            return info
        hidden = {"run_id": None, "metrics": {}, "index": {}, "load_error": None}
        return info.model_copy(update={**hidden, "model_config_name": None})

    @app.get("/healthz", response_model=Health, responses=_ERRORS)
    async def healthz():
        return await service.health()

    if static_dir is not None and (static_dir / "index.html").is_file():
        from fastapi.staticfiles import StaticFiles

        app.mount("/", StaticFiles(directory=static_dir, html=True), name="studio")
    return app
