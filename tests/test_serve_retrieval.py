"""`/v1/retrieve` and `/v1/complete` say what the model made of each target's category.

In-process app (FastAPI TestClient, LocalBackend, no Ray) over random-init hybrid-tiny versions:
a category given is searched as given; a target without one gets the category its head infers,
with its probability, and the search keeps to it only above `target.category_threshold`.
"""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient
from serve_helpers import first_of

from outfitter.data import load_catalog
from outfitter.data.types import CATEGORIES
from outfitter.model import load_config
from outfitter.model.checkpoint import save_checkpoint
from outfitter.model.factory import build_model
from outfitter.model.inputs import InputBuilder
from outfitter.platform.index import build_index
from outfitter.platform.serve.app import create_app
from outfitter.platform.serve.core import LocalBackend, load_state
from outfitter.platform.serve.service import CatalogService


@pytest.fixture(scope="module")
def catalog(synth_dir):
    return load_catalog(synth_dir)


@pytest.fixture(scope="module")
def versions(synth_dir, catalog, tmp_path_factory) -> dict[float, object]:
    """One random-init model saved twice: category_threshold 0 (always sure) and 1 (never)."""
    root = tmp_path_factory.mktemp("threshold")
    torch.manual_seed(0)
    model = build_model(load_config("hybrid-tiny"))
    builder = InputBuilder.for_model(model, catalog)
    index = build_index(model.eval(), builder)
    out = {}
    for threshold in (0.0, 1.0):
        cfg = load_config("hybrid-tiny", {"target.category_threshold": threshold})
        out[threshold] = root / f"t{threshold}"
        save_checkpoint(out[threshold], model, cfg, {}, towers=builder.towers)
        index.save(out[threshold] / "index")
    return out


def _client(folder, synth_dir, catalog) -> TestClient:
    backend = LocalBackend(load_state(str(folder), synth_dir, device="cpu", catalog=catalog))
    return TestClient(create_app(CatalogService(catalog, backend), static_dir=None))


@pytest.fixture(scope="module")
def outfit(catalog):
    return [{"item_id": i} for i in first_of(catalog, "tops", "bottoms")]


@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_inferred_category_is_reported_and_searched_above_the_threshold(
    threshold, versions, synth_dir, catalog, outfit
):
    client = _client(versions[threshold], synth_dir, catalog)
    body = {"items": outfit, "target": {"description": "black leather boots"}, "k": 8}
    r = client.post("/v1/retrieve", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    cat = answer["category"]
    assert cat["inferred"] is True and cat["name"] in CATEGORIES
    assert 1 / len(CATEGORIES) <= cat["confidence"] <= 1.0
    found = {item["category"] for item in answer["items"]}
    if threshold == 0.0:  # always sure enough: the search keeps to the inferred category
        assert cat["searched"] == cat["name"] and found == {cat["name"]}
    else:  # never sure enough: the whole catalog
        assert cat["searched"] is None and len(answer["items"]) == 8
    given = client.post(
        "/v1/retrieve", json={**body, "target": {**body["target"], "category": "bags"}}
    ).json()
    assert given["category"] == {
        "name": "bags", "inferred": False, "confidence": None, "searched": "bags"
    }  # fmt: skip
    assert {item["category"] for item in given["items"]} == {"bags"}
    complete = client.post(
        "/v1/complete",
        json={"items": outfit, "k": 3, "targets": [{"description": "boots"},
                                                   {"description": "x", "category": "hats"}]},
    )  # fmt: skip
    assert complete.status_code == 200, complete.text
    first, second = (res["category"] for res in complete.json()["results"])
    assert first["inferred"] is True and second["searched"] == "hats"
