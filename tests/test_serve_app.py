"""The serving app in-process (FastAPI TestClient over CatalogService + LocalBackend, no Ray).

Every endpoint on catalog and new items, and every class of bad input: each must be answered
with a 4xx naming the field and the rule, never a 5xx or a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serve_helpers import first_of, image_b64, tiny_versions

from outfitter.data import load_catalog
from outfitter.platform.serve.app import create_app
from outfitter.platform.serve.core import LocalBackend, load_state
from outfitter.platform.serve.schemas import Limits
from outfitter.platform.serve.service import CatalogService

LIMITS = Limits(max_body_bytes=256 * 1024, max_image_bytes=32 * 1024, max_image_pixels=128 * 128)


@pytest.fixture(scope="module")
def catalog(synth_dir):
    return load_catalog(synth_dir)


@pytest.fixture(scope="module")
def versions(synth_dir, tmp_path_factory):
    return tiny_versions(tmp_path_factory.getbasetemp() / "tiny-models", synth_dir)


@pytest.fixture(scope="module")
def backend(versions, synth_dir, catalog):
    return LocalBackend(load_state(str(versions[0]), synth_dir, device="cpu", catalog=catalog))


@pytest.fixture(scope="module")
def client(catalog, backend):
    app = create_app(CatalogService(catalog, backend, LIMITS), LIMITS, static_dir=None)
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def outfit(catalog):
    """Catalog ids of a top, a bottom and shoes."""
    return first_of(catalog, "tops", "bottoms", "shoes")


def refs(ids):
    return [{"item_id": i} for i in ids]


NEW_ITEM = {"title": "red canvas tote", "description": "a roomy bag", "image_b64": image_b64()}


# ---------------------------------------------------------------- endpoints


def test_compatibility_and_weakest_item(client, outfit):
    r = client.post("/v1/compatibility", json={"items": refs(outfit)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert 0.0 <= body["score"] <= 1.0 and body["model_version"] == "v1"
    weakest = body["weakest_item"]
    # weakest = the removal that leaves the best-scoring outfit: check against each removal
    without = [
        client.post("/v1/compatibility", json={"items": refs(outfit[:i] + outfit[i + 1 :])}).json()
        for i in range(len(outfit))
    ]
    best = max(range(len(outfit)), key=lambda i: without[i]["score"])
    assert weakest["index"] == best and weakest["item_id"] == outfit[best]
    assert weakest["score_without"] == pytest.approx(without[best]["score"], abs=1e-5)


def test_new_items_are_embedded_on_the_fly(client, outfit):
    r = client.post("/v1/compatibility", json={"items": [*refs(outfit[:2]), NEW_ITEM]})
    assert r.status_code == 200, r.text
    other = {**NEW_ITEM, "image_b64": image_b64(color=(10, 200, 10), fmt="JPEG")}
    r2 = client.post("/v1/compatibility", json={"items": [*refs(outfit[:2]), other]})
    assert r2.status_code == 200 and r2.json()["score"] != r.json()["score"]
    r = client.post(
        "/v1/retrieve",
        json={
            "items": [NEW_ITEM],
            "target": {"description": "white sneakers", "category": "shoes"},
        },
    )
    assert r.status_code == 200 and len(r.json()["items"]) == 10


def test_retrieve_filters_category_and_excludes(client, outfit):
    body = {"items": refs(outfit[:2]), "target": {"description": "leather ankle boots"}, "k": 5}
    r = client.post(
        "/v1/retrieve", json={**body, "target": {**body["target"], "category": "shoes"}}
    )
    assert r.status_code == 200, r.text
    hits = r.json()["items"]
    assert len(hits) == 5 and {h["category"] for h in hits} == {"shoes"}
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert all(h["title"] for h in hits)
    excluded = [hits[0]["item_id"], outfit[2]]
    body2 = {**body, "target": {**body["target"], "category": "shoes"}, "exclude": excluded}
    again = client.post("/v1/retrieve", json=body2).json()["items"]
    assert not {h["item_id"] for h in again} & set(excluded)
    # without a category: any category, never the context items themselves
    free = client.post("/v1/retrieve", json=body).json()["items"]
    assert len(free) == 5 and not {h["item_id"] for h in free} & set(outfit[:2])


def test_complete_fills_several_blanks(client, outfit):
    targets = [
        {"description": "sneakers", "category": "shoes"},
        {"description": "a small bag", "category": "bags"},
    ]
    r = client.post("/v1/complete", json={"items": refs(outfit[:2]), "targets": targets, "k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [len(res["items"]) for res in body["results"]] == [3, 3]
    assert body["results"][1]["items"][0]["category"] == "bags"
    assert body["outfit"][:2] == outfit[:2] and len(body["outfit"]) == 4
    assert 0.0 <= body["score"] <= 1.0


def test_items_listing_search_and_image(client, catalog):
    page = client.get("/v1/items", params={"category": "shoes", "limit": 5, "offset": 2}).json()
    shoes = [i for i in catalog.item_ids if catalog.items[i].category == "shoes"]
    assert page["total"] == len(shoes) and [i["item_id"] for i in page["items"]] == shoes[2:7]
    word = catalog.items[shoes[0]].title.split()[-1]
    found = client.get("/v1/items", params={"q": word.upper()}).json()
    assert found["total"] >= 1
    for hit in found["items"]:
        item = catalog.items[hit["item_id"]]
        assert word.lower() in f"{item.title} {item.description} {item.fine_category}".lower()
    r = client.get(f"/v1/items/{shoes[0]}/image")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.content == catalog.image_path(shoes[0]).read_bytes()


def test_catalog_search_finds_what_a_scan_of_every_item_finds(catalog):
    """The joined-text search of /v1/items answers as the per-item substring scan it replaced,
    in catalog order: categories, substrings, several words, very common and absent words."""
    import random

    from outfitter.platform.serve.service import CatalogSearch

    search = CatalogSearch(catalog)
    text = {
        i: f"{it.title} {it.description} {it.fine_category}".lower()
        for i, it in catalog.items.items()
    }
    vocabulary = sorted({w for t in text.values() for w in t.split()})
    rng = random.Random(0)
    queries = [[], ["e"], ["a", "shoe"], ["leath"], ["zzzz-nothing"], ["black", "black"]]
    queries += [rng.sample(vocabulary, k) for k in (1, 1, 2, 2, 3) for _ in range(4)]
    queries += [[w[1:4]] for w in rng.sample(vocabulary, 6)]  # substrings inside words
    for category in (None, "shoes", "bags", "no-such-category"):
        for words in queries:
            want = [
                i
                for i in catalog.item_ids
                if (category is None or catalog.items[i].category == category)
                and all(w in text[i] for w in words)
            ]
            assert search.matching(category, words) == want, (category, words)


def test_model_health_and_docs(client):
    info = client.get("/v1/model").json()
    assert info["version"] == "v1" and info["model_config_name"] == "hybrid-tiny"
    assert info["index"]["n_items"] > 0
    assert client.get("/healthz").json() == {"status": "ok", "model_version": "v1"}
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/compatibility", "/v1/retrieve", "/v1/complete", "/v1/items"} <= set(paths)


def test_swap_changes_the_served_version(client, backend, versions, synth_dir, catalog, outfit):
    old = backend.state
    backend.swap(load_state(str(versions[1]), synth_dir, device="cpu", catalog=catalog))
    try:
        r = client.post("/v1/compatibility", json={"items": refs(outfit)})
        assert r.json()["model_version"] == "v2"
    finally:
        backend.swap(old)


# ---------------------------------------------------------------- bad input


def _bad(client, path, payload, status, field, rule):
    r = client.post(path, json=payload)
    assert r.status_code == status, r.text
    assert "Traceback" not in r.text
    errors = r.json()["errors"]
    assert any(e["field"] == field and rule in e["rule"] for e in errors), errors


def test_unknown_item_ids_are_listed(client, outfit):
    payload = {"items": [*refs(outfit[:1]), {"item_id": "no-such"}, {"item_id": "nope"}]}
    _bad(
        client, "/v1/compatibility", payload, 422, "items", "unknown item ids: ['no-such', 'nope']"
    )
    payload = {"items": refs(outfit[:1]), "target": {"description": "x"}, "exclude": ["ghost"]}
    _bad(client, "/v1/retrieve", payload, 422, "exclude", "ghost")


@pytest.mark.parametrize("n", [0, 1, 13])
def test_outfit_length_limits(client, outfit, n):
    ids = (outfit * 5)[:n]
    _bad(client, "/v1/compatibility", {"items": refs(ids)}, 422, "items", "List should have")


def test_retrieve_needs_a_context_and_k_in_range(client, outfit):
    target = {"description": "shoes"}
    _bad(client, "/v1/retrieve", {"items": [], "target": target}, 422, "items", "at least 1")
    for k in (0, 101, "ten"):
        payload = {"items": refs(outfit[:1]), "target": target, "k": k}
        _bad(client, "/v1/retrieve", payload, 422, "k", "")
    too_many = {"items": refs(outfit[:2]), "targets": [target] * 9}
    _bad(client, "/v1/complete", too_many, 422, "targets", "at most 8")


def test_bad_images(client, outfit):
    def payload(b64):
        return {"items": [*refs(outfit[:1]), {**NEW_ITEM, "image_b64": b64}]}

    field = "items.1.image_b64"
    _bad(client, "/v1/compatibility", payload("not base64!!"), 422, field, "not valid base64")
    junk = base64.b64encode(b"GIF89a but not really an image" * 4).decode()
    _bad(client, "/v1/compatibility", payload(junk), 422, field, "not a decodable image")
    png = base64.b64decode(image_b64())
    truncated = base64.b64encode(png[: len(png) // 2]).decode()
    _bad(client, "/v1/compatibility", payload(truncated), 422, field, "not a decodable image")
    _bad(client, "/v1/compatibility", payload(image_b64((200, 200))), 413, field, "pixels")
    big = base64.b64encode(bytes(40 * 1024)).decode()
    _bad(client, "/v1/compatibility", payload(big), 413, field, "bytes; the limit is 32768")
    assert Image.MAX_IMAGE_PIXELS is not None  # PIL's decompression-bomb guard stays on


def test_text_types_and_shapes(client, outfit):
    long = {**NEW_ITEM, "title": "x" * 501}
    _bad(
        client,
        "/v1/compatibility",
        {"items": [*refs(outfit[:1]), long]},
        422,
        "items.1.title",
        "at most 500",
    )
    target = {"description": "y" * 501}
    _bad(
        client,
        "/v1/retrieve",
        {"items": refs(outfit[:1]), "target": target},
        422,
        "target.description",
        "at most 500",
    )
    _bad(client, "/v1/compatibility", {"items": "abc"}, 422, "items", "valid list")
    _bad(
        client,
        "/v1/compatibility",
        {"items": [{"item_id": 5}, {"item_id": 6}]},
        422,
        "items.0.item_id",
        "valid string",
    )
    _bad(
        client,
        "/v1/compatibility",
        {"items": refs(outfit), "extra": 1},
        422,
        "extra",
        "not permitted",
    )
    both = {**NEW_ITEM, "item_id": outfit[0]}  # a catalog reference takes no other fields
    _bad(
        client,
        "/v1/compatibility",
        {"items": [both, *refs(outfit[1:])]},
        422,
        "items.0.title",
        "Extra inputs",
    )
    no_image = {"title": "a hat"}
    _bad(
        client,
        "/v1/compatibility",
        {"items": [no_image, *refs(outfit[1:])]},
        422,
        "items.0.image_b64",
        "Field required",
    )
    _bad(client, "/v1/compatibility", {}, 422, "items", "Field required")
    target = {"description": "boots", "category": "boats"}
    _bad(
        client,
        "/v1/retrieve",
        {"items": refs(outfit[:1]), "target": target},
        422,
        "target.category",
        "'shoes'",
    )


def test_bad_query_parameters_and_paths(client):
    for params, field in [({"category": "boats"}, "category"), ({"limit": 0}, "limit"),
                          ({"limit": 10_000}, "limit"), ({"offset": -1}, "offset"),
                          ({"limit": "many"}, "limit"), ({"q": "z" * 501}, "q")]:  # fmt: skip
        r = client.get("/v1/items", params=params)
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == field, (params, r.text)
    r = client.get("/v1/items/../../etc/passwd/image")
    assert r.status_code == 404 and "Traceback" not in r.text
    r = client.get("/v1/items/no-such-item/image")
    assert r.status_code == 404 and "unknown item id" in r.json()["error"]
    assert client.get("/v2/nothing").status_code == 404
    assert client.get("/v1/compatibility").status_code == 405


def test_bodies_over_the_limit_and_malformed_json(client):
    headers = {"content-type": "application/json"}
    r = client.post("/v1/compatibility", content=b"[" * (300 * 1024), headers=headers)
    assert r.status_code == 413 and r.json()["errors"][0]["field"] == "body"

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        for _ in range(40):
            yield b" " * 8192

    r = client.post("/v1/compatibility", content=chunks(), headers=headers)
    assert r.status_code == 413, r.text
    r = client.post("/v1/compatibility", content=b'{"items": [', headers=headers)
    assert r.status_code == 422 and r.json()["errors"][0] == {
        "field": "body",
        "rule": r.json()["errors"][0]["rule"],
    }
    assert "not valid JSON" in r.json()["errors"][0]["rule"]
    r = client.post("/v1/compatibility", content=b"items=1", headers={"content-type": "text/plain"})
    assert 400 <= r.status_code < 500


class _Broken:
    """A backend that fails: the app must answer 500/503 without leaking the exception."""

    def __init__(self, exc):
        self.exc = exc

    async def info(self):
        raise self.exc

    encode_new = score = retrieve = info


@pytest.mark.parametrize(
    "exc, status",
    [(RuntimeError("secret internal detail"), 500), (None, 503)],
)
def test_internal_errors_leak_nothing(catalog, outfit, exc, status):
    from outfitter.platform.serve.errors import ModelUnavailable

    exc = exc or ModelUnavailable("the model is still loading")
    app = create_app(CatalogService(catalog, _Broken(exc), LIMITS), LIMITS, static_dir=None)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/v1/compatibility", json={"items": refs(outfit)})
    assert r.status_code == status
    assert "secret" not in r.text and "Traceback" not in r.text


def test_concurrent_requests_share_the_backend(catalog, backend, outfit):
    service = CatalogService(catalog, backend, LIMITS)
    from outfitter.platform.serve.schemas import CompatibilityRequest

    req = CompatibilityRequest(items=refs(outfit))

    async def many():
        return await asyncio.gather(*(service.compatibility(req) for _ in range(8)))

    scores = {round(r.score, 6) for r in asyncio.run(many())}
    assert len(scores) == 1


def test_outfit_length_follows_the_configured_and_model_limits(catalog, backend, outfit):
    limits = Limits(max_outfit_items=3)
    client = TestClient(
        create_app(CatalogService(catalog, backend, limits), limits, static_dir=None)
    )
    four = refs(outfit + outfit[:1])
    _bad(
        client, "/v1/compatibility", {"items": four}, 422, "items", "4 items; the model takes 2..3"
    )
    body = {"items": refs(outfit), "target": {"description": "a hat"}}
    _bad(client, "/v1/retrieve", body, 422, "items", "3 items + 1 to retrieve")
    body = {"items": refs(outfit[:2]), "targets": [{"description": "a hat"}] * 2}
    _bad(client, "/v1/complete", body, 422, "targets", "2 items + 2 to retrieve")
    ok = {"items": refs(outfit[:2]), "target": {"description": "a hat"}}
    assert client.post("/v1/retrieve", json=ok).status_code == 200


# ---------------------------------------------------------------- bounded memory, event loop


def _big_png_b64(side: int = 4096) -> str:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (side, side), (250, 250, 250)).save(buf, "PNG")  # ~50 kB for 48 MB of RGB
    return base64.b64encode(buf.getvalue()).decode()


def test_twelve_big_pngs_are_refused_by_the_pixel_budget(catalog, backend, monkeypatch):
    """Twelve 4096x4096 solid PNGs: a ~0.7 MB body that would decode to ~600 MB of pixels. Each
    image is within the per-image limits; together they break the per-request budget, and the
    answer (413 naming it) comes before any of them is decoded."""
    from outfitter.platform.serve import errors

    decoded = []
    monkeypatch.setattr(errors, "_decode", lambda *a: decoded.append(a) or Image.new("RGB", (1, 1)))
    limits = Limits()
    client = TestClient(
        create_app(CatalogService(catalog, backend, limits), limits, static_dir=None)
    )
    big = {"title": "a white shirt", "image_b64": _big_png_b64()}
    body = json.dumps({"items": [big] * 12}).encode()
    assert len(body) < 1024 * 1024 < limits.max_body_bytes
    r = client.post("/v1/compatibility", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    (err,) = r.json()["errors"]
    assert err["field"] == "items" and "max_request_pixels" in err["rule"]
    assert str(limits.max_request_pixels) in err["rule"] and decoded == []


def test_uploaded_images_are_shrunk_to_the_tower_input(backend):
    from outfitter.platform.serve.errors import decode_image_b64

    side = (asyncio.run(backend.info()))["image_size"]
    assert side and side < 300
    image = decode_image_b64(image_b64((600, 300)), "image_b64", Limits(), side)
    assert image.size == (2 * side, side)  # the shorter side at the tower's size, aspect kept
    small = decode_image_b64(image_b64((side // 2, side // 2)), "image_b64", Limits(), side)
    assert small.size == (side // 2, side // 2)  # never enlarged


def test_a_replica_over_its_in_flight_bound_answers_503_at_once(catalog, outfit):
    """Requests beyond max_in_flight get a fast 503 with Retry-After and a JSON body naming the
    limit; the ones admitted finish normally; catalog reads are never refused."""
    import httpx

    release = asyncio.Event()

    class Slow:
        async def info(self):
            return {"max_items": 20, "version": "s", "image_size": None}

        async def score(self, outfits):
            await release.wait()
            return "s", np.full(len(outfits), 0.5, np.float32)

    limits = Limits(max_in_flight=2)
    app = create_app(CatalogService(catalog, Slow(), limits), limits, static_dir=None)

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            body = {"items": refs(outfit)}
            post = http.post
            held = [asyncio.create_task(post("/v1/compatibility", json=body)) for _ in range(2)]
            await asyncio.sleep(0.2)
            t0 = asyncio.get_running_loop().time()
            refused = await http.post("/v1/compatibility", json=body)
            seconds = asyncio.get_running_loop().time() - t0
            listing = await http.get("/v1/items", params={"limit": 1})
            release.set()
            return refused, seconds, listing, await asyncio.gather(*held)

    refused, seconds, listing, held = asyncio.run(run())
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert seconds < 1.0
    assert "max_in_flight" in refused.json()["errors"][0]["rule"] and "2" in refused.json()["error"]
    assert listing.status_code == 200
    assert [r.status_code for r in held] == [200, 200]


def test_image_decoding_does_not_block_the_event_loop(catalog, backend, outfit, monkeypatch):
    """While one request decodes a (slow) upload, another request is answered."""
    import time

    import httpx

    from outfitter.platform.serve import errors

    real = errors._decode

    def slow_decode(*args):
        time.sleep(1.5)  # a blocking decode, as PIL's is
        return real(*args)

    monkeypatch.setattr(errors, "_decode", slow_decode)
    app = create_app(CatalogService(catalog, backend, LIMITS), LIMITS, static_dir=None)

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            body = {"items": [*refs(outfit[:2]), NEW_ITEM]}
            upload = asyncio.create_task(http.post("/v1/compatibility", json=body))
            await asyncio.sleep(0.3)
            t0 = time.perf_counter()
            health = await http.get("/healthz")
            waited = time.perf_counter() - t0
            return health, waited, await upload

    health, waited, upload = asyncio.run(run())
    assert health.status_code == 200 and upload.status_code == 200, upload.text
    assert waited < 0.8, f"/healthz waited {waited:.2f}s behind an image decode"
