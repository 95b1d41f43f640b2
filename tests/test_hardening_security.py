"""Serving security: path probes sent raw reach the image route and are refused; an image that is
a symlink out of the catalog is never served.

Requests go over a real socket to uvicorn on a free loopback port, as bytes: no HTTP client
normalises `..` or re-encodes the path before it reaches the server. A spy on the service proves
each probe reached the image route (a probe the router already refuses tests nothing).
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from serve_helpers import free_port

from outfitter.data import load_catalog
from outfitter.data import polyvore as P

SECRET = b"not-an-image: the secret of another tenant"


class _StubBackend:
    async def info(self):
        return {"max_items": 8, "version": "stub", "name": "outfitter", "alias": None,
                "run_id": None, "metrics": {}}  # fmt: skip


class Server:
    """uvicorn in a thread on a free loopback port; `raw(target)` sends one request as bytes."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.server.started, "uvicorn did not start"
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def raw(self, target: str, headers: dict | None = None) -> tuple[int, bytes]:
        lines = [f"GET {target} HTTP/1.1", f"Host: 127.0.0.1:{self.port}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body


@pytest.fixture()
def catalog_dir(tmp_path, polyvore_mini) -> Path:
    out = tmp_path / "mini"
    shutil.copytree(polyvore_mini, out)
    return out


def _app(catalog_dir: Path, seen: list[str]):
    from outfitter.platform.serve.app import create_app
    from outfitter.platform.serve.service import CatalogService

    class Spy(CatalogService):
        def image_path(self, item_id):
            seen.append(item_id)
            return super().image_path(item_id)

    catalog = load_catalog(catalog_dir)
    return create_app(Spy(catalog, _StubBackend()), static_dir=None), catalog


PROBES = {  # raw request target -> the item id the route receives
    "/v1/items/../image": "..",
    "/v1/items/%2e%2e/image": "..",
    "/v1/items/..%5C..%5Cetc%5Cpasswd/image": "..\\..\\etc\\passwd",
    "/v1/items/x%00y/image": "x\x00y",
    "/v1/items/.%2e/image": "..",
}


def test_raw_traversal_probes_reach_the_image_route_and_are_refused(catalog_dir):
    seen: list[str] = []
    app, catalog = _app(catalog_dir, seen)
    with Server(app) as server:
        for target, item_id in PROBES.items():
            seen.clear()
            status, body = server.raw(target)
            assert seen == [item_id], f"{target} never reached the route: {seen} {status}"
            assert status == 404, (target, status, body[:200])
            assert json.loads(body)["errors"][0]["field"] == "item_id", body
        real = catalog.item_ids[0]
        status, body = server.raw(f"/v1/items/{real}/image")
        assert status == 200 and body[:2] == b"\xff\xd8"  # a JPEG: the route does serve files


def test_an_image_symlinked_out_of_the_catalog_is_not_served(catalog_dir, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    victim = sorted((catalog_dir / P.IMAGE_DIR).iterdir())[0]
    victim.unlink()
    victim.symlink_to(secret)
    seen: list[str] = []
    app, _ = _app(catalog_dir, seen)
    with Server(app) as server:
        status, body = server.raw(f"/v1/items/{victim.stem}/image")
    assert seen == [victim.stem]
    assert SECRET not in body and status == 404, (status, body[:200])
