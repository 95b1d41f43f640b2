"""Serving on a shared cluster: an optional API key, trusted hosts, `/v1/model` detail only with
the key, every `args.limits` override enforced by the request schemas, credentials masked in a
replica's `load_error`, and serve configs without open Ray ports.

The app runs in-process over the catalog fixture and a stub model backend that records what
reaches it: every check here happens before any model call.
"""

from __future__ import annotations

import asyncio
import logging
import types
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from outfitter.data import load_catalog
from outfitter.platform.serve import security
from outfitter.platform.serve.errors import ModelUnavailable

KEY = "k3y-0f-the-tenant-0123456789abcdef"
SERVE_CONFIGS = Path(__file__).resolve().parent.parent / "serve_configs"


class _Backend:
    """The model backend's interface; every model call is recorded, then answered with a 503."""

    def __init__(self):
        self.calls: list[str] = []

    async def info(self):
        return {"max_items": 8, "version": "7", "name": "outfitter", "alias": "champion",
                "run_id": "run-123", "metrics": {"valid_auc": 0.9}, "model_config_name": "tiny",
                "index": {"n_items": 5}, "load_error": "models:/outfitter/8: boom"}  # fmt: skip

    async def _model(self, name):
        self.calls.append(name)
        raise ModelUnavailable("stub")

    async def encode_new(self, items):
        return await self._model("encode_new")

    async def score(self, outfits):
        return await self._model("score")

    async def retrieve(self, contexts, texts, categories, k, excludes):
        return await self._model("retrieve")


@pytest.fixture(scope="module")
def catalog(polyvore_mini):
    return load_catalog(polyvore_mini)


def _client(catalog, limits=None, **kwargs):
    from outfitter.platform.serve.app import create_app
    from outfitter.platform.serve.schemas import LIMITS
    from outfitter.platform.serve.service import CatalogService

    backend = _Backend()
    limits = limits or LIMITS
    app = create_app(CatalogService(catalog, backend, limits), limits, static_dir=None, **kwargs)
    return TestClient(app, raise_server_exceptions=False, base_url="http://127.0.0.1"), backend


# ---------------------------------------------------------------- API key


def test_with_a_key_every_route_but_healthz_and_model_needs_it(catalog, caplog):
    caplog.set_level(logging.DEBUG)
    client, backend = _client(catalog, api_key=security.ApiKey(KEY))
    ids = catalog.item_ids[:2]
    body = {"items": [{"item_id": i} for i in ids]}
    for method, path, kw in [
        ("GET", "/v1/items", {}),
        ("GET", f"/v1/items/{ids[0]}/image", {}),
        ("POST", "/v1/compatibility", {"json": body}),
        ("GET", "/openapi.json", {}),
        ("GET", "/docs", {}),
    ]:
        for headers in ({}, {"X-API-Key": "wrong-key-0123456789"}, {"Authorization": "Bearer x"}):
            r = client.request(method, path, headers=headers, **kw)
            assert r.status_code == 401, (path, headers, r.status_code)
            assert r.json()["errors"][0]["field"] == "X-API-Key"
            assert r.headers["www-authenticate"].startswith("ApiKey")
    assert backend.calls == []  # refused before any model call
    assert client.get("/healthz").status_code == 200
    assert client.get("/v1/items", headers={"X-API-Key": KEY}).status_code == 200
    assert client.get("/v1/items", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert KEY not in caplog.text


def test_model_detail_only_with_the_key(catalog):
    client, _ = _client(catalog, api_key=security.ApiKey(KEY))
    public = client.get("/v1/model").json()
    assert public["version"] == "7" and public["name"] == "outfitter"
    assert public["run_id"] is None and public["metrics"] == {} and public["index"] == {}
    assert public["load_error"] is None
    detail = client.get("/v1/model", headers={"X-API-Key": KEY}).json()
    assert detail["run_id"] == "run-123" and detail["load_error"] == "models:/outfitter/8: boom"
    open_client, _ = _client(catalog)  # no key configured (loopback): everything, as before
    assert open_client.get("/v1/model").json()["run_id"] == "run-123"


def test_the_key_comes_from_env_or_file_and_is_never_shown(tmp_path):
    assert security.load_api_key({}) is None
    assert security.load_api_key({security.API_KEY_ENV: KEY}).matches(KEY)
    (tmp_path / "key").write_text(KEY + "\n")  # a mounted Secret ends with a newline
    from_file = security.load_api_key({security.API_KEY_FILE_ENV: str(tmp_path / "key")})
    assert from_file.matches(KEY) and not from_file.matches(KEY[:-1]) and not from_file.matches("")
    assert KEY not in repr(from_file) and not hasattr(from_file, "__dict__")  # a digest only
    with pytest.raises(ValueError, match="not both"):
        security.load_api_key({security.API_KEY_ENV: KEY, security.API_KEY_FILE_ENV: "x"})
    with pytest.raises(ValueError, match="at least 16"):
        security.load_api_key({security.API_KEY_ENV: "short"})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        security.load_api_key({security.API_KEY_FILE_ENV: str(tmp_path / "empty")})
    from outfitter.platform.serve.deployments import AppArgs

    assert not [f for f in AppArgs.model_fields if "key" in f]  # never an app argument


def test_the_key_is_compared_in_constant_time(monkeypatch):
    import hmac

    calls, real = [], hmac.compare_digest

    def spy(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", spy)
    key = security.ApiKey(KEY)
    assert not key.matches("x") and key.matches(KEY) and not key.matches(KEY * 3)
    assert calls == [(32, 32)] * 3  # digests: the same length whatever was presented


# ---------------------------------------------------------------- trusted hosts


def test_only_trusted_host_headers_are_answered(catalog):
    client, _ = _client(catalog, allowed_hosts=["127.0.0.1", "localhost"])
    assert client.get("/healthz", headers={"Host": "127.0.0.1:8000"}).status_code == 200
    assert client.get("/healthz", headers={"Host": "localhost"}).status_code == 200
    for host in ("evil.example", "rebind.attacker.test:8000", "127.0.0.1.evil.example"):
        r = client.get("/v1/items", headers={"Host": host})
        assert r.status_code == 400, (host, r.status_code)


def test_deployments_default_to_loopback_hosts_and_configs_list_theirs():
    from outfitter.platform.serve.deployments import AppArgs

    assert AppArgs(data_dir="d").allowed_hosts == ["127.0.0.1", "localhost"]
    for name in ("local.yaml", "gpu.yaml"):
        config = yaml.safe_load((SERVE_CONFIGS / name).read_text())
        hosts = config["applications"][0]["args"].get("allowed_hosts", ["127.0.0.1", "localhost"])
        assert "*" not in hosts, name


# ---------------------------------------------------------------- every limit honoured


def _retrieve(ids, **extra):
    return {"items": [{"item_id": ids[0]}], "target": {"description": "red"}, **extra}


OVERRIDES = {
    # limit: (value, path, body at the limit, body over it, field named by the 422)
    "max_k": (3, "/v1/retrieve", lambda ids: _retrieve(ids, k=3),
              lambda ids: _retrieve(ids, k=4), "k"),
    "max_exclude": (2, "/v1/retrieve", lambda ids: _retrieve(ids, exclude=ids[1:3]),
                    lambda ids: _retrieve(ids, exclude=ids[1:4]), "exclude"),
    "max_targets": (1, "/v1/complete",
                    lambda ids: {"items": [{"item_id": ids[0]}], "targets": [{"description": "a"}]},
                    lambda ids: {"items": [{"item_id": ids[0]}],
                                 "targets": [{"description": "a"}, {"description": "b"}]},
                    "targets"),
    "max_text_chars": (10, "/v1/retrieve",
                       lambda ids: {**_retrieve(ids), "target": {"description": "x" * 10}},
                       lambda ids: {**_retrieve(ids), "target": {"description": "x" * 11}},
                       "target.description"),
}  # fmt: skip


@pytest.mark.parametrize("limit", list(OVERRIDES))
def test_each_limit_override_is_enforced(catalog, limit):
    from outfitter.platform.serve.schemas import Limits

    value, path, at_limit, over, field = OVERRIDES[limit]
    client, backend = _client(catalog, Limits(**{limit: value}))
    ids = catalog.item_ids
    r = client.post(path, json=over(ids))
    assert r.status_code == 422, (limit, r.status_code, r.text)
    assert r.json()["errors"][0]["field"] == field and str(value) in r.text, r.text
    assert backend.calls == []
    r = client.post(path, json=at_limit(ids))
    assert r.status_code == 503 and backend.calls, (limit, r.status_code, r.text)  # reached it


def test_the_schema_documents_the_overridden_limits(catalog):
    from outfitter.platform.serve.schemas import Limits

    client, _ = _client(catalog, Limits(max_k=3))
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["RetrieveRequest"]["properties"]["k"]["maximum"] == 3


# ---------------------------------------------------------------- load errors, configs


def test_a_replica_load_error_holds_no_credentials(monkeypatch):
    from outfitter.platform.serve import core
    from outfitter.platform.serve.deployments import BatchedBackend

    def fails(*args, **kwargs):
        raise OSError("cannot reach http://bob:s3cr3t-Pa55@10.0.0.1:5000/api (refused)")

    replica = BatchedBackend("data", None, "cpu", {"model_uri": "m", "revision": "0"})
    replica.state = types.SimpleNamespace(version="8")  # a version already serving
    replica.config = {"model_uri": "m", "revision": "0"}
    monkeypatch.setattr(core, "load_state", fails)
    asyncio.run(replica.reconfigure({"model_uri": "models:/outfitter/9", "revision": "9"}))
    assert "s3cr3t" not in replica.load_error and "bob:***@" in replica.load_error


def _rayservice() -> list[dict]:
    return [d for d in yaml.safe_load_all((SERVE_CONFIGS / "rayservice.yaml").read_text()) if d]


def test_rayservice_uses_ray_token_auth_and_a_network_policy():
    cluster = _rayservice()[0]["spec"]["rayClusterConfig"]
    assert cluster["authOptions"]["mode"] == "token"
    policy_file = SERVE_CONFIGS / "rayservice-networkpolicy.yaml"
    (doc,) = [d for d in yaml.safe_load_all(policy_file.read_text()) if d]
    assert doc["kind"] == "NetworkPolicy"
    policy = doc["spec"]
    selector = policy["podSelector"]["matchLabels"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:  # every Ray pod
        labels = group["template"].get("metadata", {}).get("labels", {})
        assert selector.items() <= labels.items(), (selector, labels)
    assert "Ingress" in policy["policyTypes"]
    # every ingress rule names its sources: nothing is open to the whole cluster or the internet
    assert policy["ingress"] and all(rule.get("from") for rule in policy["ingress"])
    serve_ports = {p["port"] for rule in policy["ingress"] for p in rule.get("ports", [])}
    assert 8000 in serve_ports
    outside = [r for r in policy["ingress"] if any("namespaceSelector" in f for f in r["from"])]
    assert outside and all(r.get("ports") for r in outside)  # other namespaces: named ports only
    assert 6379 not in serve_ports  # GCS: only the cluster's own pods
    (workers,) = cluster["workerGroupSpecs"]  # the replicas: the API key from a mounted Secret
    (container,) = workers["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    key_file = Path(env[security.API_KEY_FILE_ENV])
    mount = next(m for m in container["volumeMounts"] if key_file.parent == Path(m["mountPath"]))
    volume = next(v for v in workers["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"]


def test_no_config_opens_the_ray_dashboard():
    """Local runs start Ray without a dashboard (`include_dashboard=False`); the GPU config's
    `ray start` binds it to loopback; in KubeRay it listens in the head pod behind token auth
    and the NetworkPolicy (KubeRay applies serveConfigV2 through it)."""
    gpu = (SERVE_CONFIGS / "gpu.yaml").read_text()
    assert "--dashboard-host=127.0.0.1" in gpu and "RAY_AUTH_MODE=token" in gpu
    head = _rayservice()[0]["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]
    if head.get("dashboard-host") not in (None, "127.0.0.1", "localhost"):
        assert _rayservice()[0]["spec"]["rayClusterConfig"]["authOptions"]["mode"] == "token"


def test_a_serve_replica_builds_its_app_with_the_key_and_hosts(polyvore_mini, monkeypatch):
    """The deployment's own wiring: `Outfitter.__init__` reads the key from the environment and
    `__serve_build_asgi_app__` installs it and `allowed_hosts` (no Ray: the user class itself)."""
    from outfitter.platform.serve.deployments import Outfitter

    monkeypatch.setenv(security.API_KEY_ENV, KEY)
    user_class = next(c for c in Outfitter.func_or_class.__mro__[1:] if "__init__" in vars(c))
    replica = object.__new__(user_class)
    defaults = {"model_uri": "m", "revision": "0", "allowed_hosts": ["127.0.0.1"]}
    user_class.__init__(replica, str(polyvore_mini), None, "cpu", defaults)
    client = TestClient(user_class.__serve_build_asgi_app__(replica), base_url="http://127.0.0.1")
    assert client.get("/v1/items").status_code == 401
    assert client.get("/v1/items", headers={"X-API-Key": KEY}).status_code == 200
    assert (
        client.get("/v1/items", headers={"Host": "evil.example", "X-API-Key": KEY}).status_code
        == 400
    )
