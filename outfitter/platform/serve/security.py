"""Who may call the API: an optional API key, the Host header, and what `/v1/model` shows.

- **API key** (optional): set `OUTFITTER_API_KEY`, or `OUTFITTER_API_KEY_FILE` naming a file (a
  mounted Kubernetes Secret), in the replica's environment. Every request then needs it in the
  `X-API-Key` header (or `Authorization: Bearer KEY`), compared in constant time; without it the
  answer is a 401. `/healthz` (probes) and `/v1/model` (which version is served) stay open, but
  `/v1/model` shows its detail (run id, metrics, index, the last load error) only to a caller
  with the key. The key is never an application argument (those reach Ray's logs and the Serve
  config) and never logged; only a digest of it is held.
- **Trusted hosts**: a request whose `Host` header is not in the configured list gets a 400, so
  a web page cannot reach the loopback API through DNS rebinding (its requests carry the
  attacker's host name).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from pathlib import Path

API_KEY_ENV = "OUTFITTER_API_KEY"
API_KEY_FILE_ENV = "OUTFITTER_API_KEY_FILE"
API_KEY_HEADER = "X-API-Key"
MIN_KEY_CHARS = 16
OPEN_PATHS = frozenset({"/healthz", "/v1/model"})  # /v1/model: version only, detail with the key
DEFAULT_ALLOWED_HOSTS = ("127.0.0.1", "localhost")
AUTHENTICATED = "outfitter_api_key_ok"  # request.state flag set by ApiKeyMiddleware


class ApiKey:
    """The expected key, held as a digest: never printed, compared in constant time."""

    __slots__ = ("_digest",)

    def __init__(self, key: str):
        self._digest = hashlib.sha256(key.encode()).digest()

    def matches(self, presented: str | bytes | None) -> bool:
        if not presented:
            return False
        raw = presented if isinstance(presented, bytes) else presented.encode()
        # equal-length digests: the comparison time says nothing about the key or its length
        return hmac.compare_digest(hashlib.sha256(raw).digest(), self._digest)

    def __repr__(self) -> str:
        return "ApiKey(***)"


def load_api_key(environ: Mapping[str, str] | None = None) -> ApiKey | None:
    """The API key from `OUTFITTER_API_KEY` or the file `OUTFITTER_API_KEY_FILE` names; None
    when neither is set (no authentication: a loopback-only deployment)."""
    environ = os.environ if environ is None else environ
    key, path = environ.get(API_KEY_ENV), environ.get(API_KEY_FILE_ENV)
    if key and path:
        raise ValueError(f"set {API_KEY_ENV} or {API_KEY_FILE_ENV}, not both")
    if path:
        try:
            key = Path(path).read_text().strip()
        except OSError as err:
            raise ValueError(
                f"{API_KEY_FILE_ENV}={path}: cannot read it ({err.strerror})"
            ) from None
        if not key:
            raise ValueError(f"{API_KEY_FILE_ENV}={path} is empty")
    if not key:
        return None
    if len(key) < MIN_KEY_CHARS:
        raise ValueError(
            f"the API key has {len(key)} characters; use at least {MIN_KEY_CHARS} "
            "(e.g. `openssl rand -hex 32`)"
        )
    return ApiKey(key)


def presented_key(headers: Mapping[bytes, bytes]) -> bytes | None:
    """The key a request carries: `X-API-Key`, else `Authorization: Bearer ...`."""
    key = headers.get(API_KEY_HEADER.lower().encode())
    if key:
        return key
    scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" and token.strip() else None


class ApiKeyMiddleware:
    """401 for a request without the key (when one is configured), except on OPEN_PATHS;
    records on the request whether the key was presented (`request.state`)."""

    def __init__(self, app, key: ApiKey | None):
        self.app, self.key = app, key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        ok = self.key is None or self.key.matches(presented_key(dict(scope.get("headers") or [])))
        scope.setdefault("state", {})[AUTHENTICATED] = ok
        if ok or scope.get("path") in OPEN_PATHS:
            return await self.app(scope, receive, send)
        rule = f"a valid API key is required in the {API_KEY_HEADER} header"
        body = json.dumps(
            {"error": f"unauthorized: {rule}", "errors": [{"field": API_KEY_HEADER, "rule": rule}]}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", f'ApiKey header="{API_KEY_HEADER}"'.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def authenticated(request) -> bool:
    """Whether the request presented the API key (True when no key is configured)."""
    return bool(request.scope.get("state", {}).get(AUTHENTICATED, True))
