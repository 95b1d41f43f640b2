"""Train/serve parity: one catalog item and one outfit, through every path that encodes them.

The training features and input builder, `evaluate`'s catalog encoding and scoring, the faiss
index a replica loads, and a Serve request (FastAPI TestClient over `CatalogService` +
`LocalBackend`, no Ray) must give the item the same vector and the outfit the same score; and
the item uploaded as a new item, with its own image file and text, must get its catalog vector.

The catalog's images are 48 px (neither model's input size, so every path resizes) and the probed
item's image is a 101 x 80 photo (not square, larger than the CLIP input: a request shrinks it
before the tower's transform does). Models are freshly built (random init), each in a checkpoint
with its index, as training saves them.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from serve_helpers import first_of

from outfitter.data import load_catalog
from outfitter.data.features import FeatureTable
from outfitter.data.types import item_text
from outfitter.model import evaluate as model_evaluate
from outfitter.model.checkpoint import load_checkpoint, save_checkpoint
from outfitter.model.config import load_config
from outfitter.model.factory import build_model, build_vocab
from outfitter.model.inputs import InputBuilder
from outfitter.model.towers import create_towers
from outfitter.platform.embed import TowerEmbedder
from outfitter.platform.index import build_index
from outfitter.platform.serve.app import create_app
from outfitter.platform.serve.core import LocalBackend, load_state
from outfitter.platform.serve.schemas import Limits
from outfitter.platform.serve.service import CatalogService

ATOL = 1e-5


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A small synthetic catalog of 48 px images; the first top's image made 101 x 80."""
    from outfitter.data.synth import synthesize

    out = synthesize(tmp_path_factory.mktemp("parity"), n_outfits=120, seed=3, image_size=48)
    catalog = load_catalog(out)
    probe = next(i for i in catalog.item_ids if catalog.items[i].category == "tops")
    noise = np.random.default_rng(0).integers(0, 256, (80, 101, 3), dtype=np.uint8)
    Image.fromarray(noise).save(catalog.image_path(probe), "JPEG", quality=90)
    return out


@pytest.fixture(scope="module")
def catalog(data_dir):
    return load_catalog(data_dir)


@pytest.fixture(scope="module")
def outfit(catalog):
    """The probed top (first), a bottom and shoes."""
    return first_of(catalog, "tops", "bottoms", "shoes")


def training_features(cfg, catalog) -> FeatureTable | None:
    """The frozen towers' features as training gets them: the Ray Data actor's batch function
    (`platform.embed.TowerEmbedder`), called here in-process."""
    if cfg.input_kind != "features":
        return None
    ids = catalog.item_ids
    embedder = TowerEmbedder(cfg.clip.__dict__)
    rows = embedder(
        {
            "item_id": np.array(ids),
            "image_path": np.array([str(catalog.image_path(i)) for i in ids]),
            "text": np.array([catalog.items[i].text for i in ids]),
        }
    )
    return FeatureTable(ids, np.stack(rows["image"]), np.stack(rows["text_feat"]))


def prob(logits: torch.Tensor) -> np.ndarray:
    return torch.sigmoid(logits.float()).cpu().numpy()


class RecordingBackend(LocalBackend):
    """LocalBackend that keeps the vectors it gave a request's new items."""

    def __init__(self, state):
        super().__init__(state)
        self.new_vectors: list[np.ndarray] = []

    async def encode_new(self, items):
        version, vectors = await super().encode_new(items)
        self.new_vectors.append(vectors)
        return version, vectors


@pytest.mark.parametrize("name", ["hybrid-tiny", "sun2020-tiny"])
def test_one_item_one_outfit_same_vector_and_score_everywhere(
    name, data_dir, catalog, outfit, tmp_path
):
    cfg = load_config(name)
    probe = outfit[0]

    # --- training: the model as a worker builds it, features as the run embeds them
    torch.manual_seed(0)
    vocab = build_vocab(cfg, catalog) if cfg.kind == "sun2020" else None
    towers = create_towers(cfg.clip) if cfg.kind == "hybrid" else None
    model = build_model(cfg, vocab=vocab).eval()
    builder = InputBuilder.for_model(model, catalog, training_features(cfg, catalog))
    with torch.no_grad():
        train_vecs = model.encode_items(builder.item_inputs(outfit))  # (3, D)
        mask = torch.ones(1, len(outfit), dtype=torch.bool)
        train_score = prob(model.compatibility_logits(train_vecs[None], mask))[0]
    train_vecs = train_vecs.numpy()

    # --- the checkpoint and its index, as a run saves them
    folder = save_checkpoint(tmp_path / "ckpt", model, cfg, {"seed": 0}, towers=towers)
    restored, _, _ = load_checkpoint(folder)
    build_index(restored, InputBuilder.for_model(restored, catalog)).save(folder / "index")

    # --- evaluate: the checkpoint reopened, the whole catalog encoded, the outfit scored
    ev_model, _, _ = load_checkpoint(folder)
    ev_builder = InputBuilder.for_model(ev_model, catalog, training_features(ev_model.cfg, catalog))
    ev_vecs = model_evaluate.encode_catalog(ev_model, ev_builder, catalog.item_ids)  # (M, D)
    rows = [catalog.item_ids.index(i) for i in outfit]
    ev_score = prob(torch.from_numpy(model_evaluate.outfit_logits(ev_model, ev_vecs, [rows], 8)))
    np.testing.assert_allclose(ev_vecs[rows].numpy(), train_vecs, atol=ATOL)
    assert ev_score[0] == pytest.approx(train_score, abs=ATOL)

    # --- a Serve replica's state: the index it loads, its scoring, then requests
    state = load_state(str(folder), data_dir, device="cpu", catalog=catalog)
    np.testing.assert_allclose(state.index.vectors_of(outfit), train_vecs, atol=ATOL)
    backend = RecordingBackend(state)
    app = create_app(CatalogService(catalog, backend, Limits()), Limits(), static_dir=None)
    client = TestClient(app, raise_server_exceptions=False)
    r = client.post("/v1/compatibility", json={"items": [{"item_id": i} for i in outfit]})
    assert r.status_code == 200, r.text
    assert r.json()["score"] == pytest.approx(train_score, abs=ATOL)

    # --- the probed item uploaded as a new item: its own image file and its own text
    item = catalog.items[probe]
    upload = {
        "title": item.title,
        "description": item.description,
        "image_b64": base64.b64encode(catalog.image_path(probe).read_bytes()).decode(),
    }
    assert item_text(upload["title"], upload["description"]) == item.text
    r = client.post(
        "/v1/compatibility", json={"items": [upload, *({"item_id": i} for i in outfit[1:])]}
    )
    assert r.status_code == 200, r.text
    (new_vector,) = backend.new_vectors[-1]
    np.testing.assert_allclose(new_vector, train_vecs[0], atol=ATOL)
    assert r.json()["score"] == pytest.approx(train_score, abs=ATOL)


def test_a_batch_of_images_gets_the_pixels_of_each_image_alone(catalog):
    """`Towers.pixel_batch` (catalog embedding, CLIP pre-training) gives exactly the tensors of
    `Towers.pixels` one image at a time (a request's upload): sizes and modes mixed."""
    from outfitter.data.images import load_image

    towers = create_towers(load_config("hybrid-tiny").clip)
    rng = np.random.default_rng(1)
    images = [load_image(catalog.image_path(i)) for i in catalog.item_ids[:5]]
    images += [
        Image.fromarray(rng.integers(0, 256, (80, 101, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (30, 200), dtype=np.uint8)),  # grey, wide
        Image.fromarray(rng.integers(0, 256, (64, 64, 4), dtype=np.uint8), "RGBA"),
    ]
    batch = towers.pixel_batch(images)
    assert batch.shape == (len(images), 3, towers.image_size, towers.image_size)
    assert torch.equal(batch, torch.stack([towers.pixels(image) for image in images]))
