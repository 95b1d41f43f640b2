"""Id-level datasets and their collates (shapes, masks, positions, per-epoch resampling), and
the feature table."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from outfitter.data import DatasetError, load_catalog, load_split
from outfitter.data.amazon import ItemPair
from outfitter.data.datasets import (
    CompatibilityDataset,
    PairDataset,
    RetrievalDataset,
    collate_compatibility,
    collate_pairs,
    collate_retrieval,
)
from outfitter.data.features import FeatureTable


@pytest.fixture(scope="module")
def data(synth_dir):
    catalog = load_catalog(synth_dir)
    return catalog, {s: load_split(synth_dir, "disjoint", s, catalog) for s in ("train", "test")}


def _check_positions(batch, lists):
    ids, items, mask = batch["ids"], batch["items"], batch["mask"]
    assert items.shape == mask.shape == (len(lists), max(map(len, lists)))
    assert len(set(ids)) == len(ids)
    for b, x in enumerate(lists):
        assert mask[b].sum() == len(x) and mask[b, : len(x)].all()
        assert [ids[p] for p in items[b, : len(x)]] == list(x)
        assert (items[b, len(x) :] == 0).all()


def test_compatibility_from_task_file(data):
    catalog, splits = data
    ds = CompatibilityDataset(splits["test"], catalog)
    assert len(ds) == len(splits["test"].compatibility)
    samples = [ds[i] for i in range(8)]
    batch = collate_compatibility(samples)
    _check_positions(batch, [s["item_ids"] for s in samples])
    assert batch["label"].dtype == torch.float32 and batch["label"].tolist() == [
        s["label"] for s in samples
    ]


def test_compatibility_built_from_outfits(data):
    catalog, splits = data
    train = splits["train"]
    assert not train.compatibility  # disjoint/train has no task file
    ds = CompatibilityDataset(train, catalog, negatives_per_positive=2, seed=1)
    assert len(ds) == 3 * len(train.outfits)
    pos, neg = ds[0], ds[1]
    assert pos == {"item_ids": list(train.outfits[0].item_ids), "label": 1} and neg["label"] == 0
    assert neg["item_ids"] != pos["item_ids"] and len(neg["item_ids"]) == len(pos["item_ids"])
    cats = [[catalog.items[i].category for i in s["item_ids"]] for s in (pos, neg)]
    assert cats[0] == cats[1]  # swaps keep the category
    train_items = {i for o in train.outfits for i in o.item_ids}
    assert set(neg["item_ids"]) <= train_items  # negatives never leak test items
    negatives = [ds[i]["item_ids"] for i in range(1, 60, 3)]
    assert negatives == [ds[i]["item_ids"] for i in range(1, 60, 3)]  # deterministic
    ds.set_epoch(1)
    assert negatives != [ds[i]["item_ids"] for i in range(1, 60, 3)]  # resampled per epoch


def test_retrieval(data):
    catalog, splits = data
    ds = RetrievalDataset(splits["train"], catalog, seed=0)
    loader = DataLoader(ds, batch_size=5, collate_fn=collate_retrieval)
    batch = next(iter(loader))
    samples = [ds[i] for i in range(5)]
    _check_positions(batch, [s["item_ids"] for s in samples])
    assert [batch["ids"][t] for t in batch["target"]] == [s["target_id"] for s in samples]
    for s, c in zip(samples, batch["target_category"], strict=True):
        assert catalog.items[s["target_id"]].category_index == c
        assert s["target_id"] not in s["item_ids"]
    held = [ds[i]["target_id"] for i in range(40)]
    ds.set_epoch(3)
    assert held != [ds[i]["target_id"] for i in range(40)]
    fixed = RetrievalDataset(splits["train"], catalog, train=False)
    before = [fixed[i]["target_id"] for i in range(40)]
    fixed.set_epoch(3)
    assert before == [fixed[i]["target_id"] for i in range(40)]


def test_pairs_from_outfits_and_amazon(data):
    catalog, splits = data
    ds = PairDataset.from_split(splits["train"], catalog, seed=0)
    weights = [w for _, _, w in ds.pairs]
    assert min(weights) > 0 and max(weights) == 1.0
    samples = [ds[i] for i in range(7)]
    batch = collate_pairs(samples)
    for key in ("anchor", "positive", "negative"):
        assert batch[key].shape == (7,)
        assert [batch["ids"][p] for p in batch[key]] == [s[f"{key}_id"] for s in samples]
    for s in samples:
        a, p, n = (catalog.items[s[k]] for k in ("anchor_id", "positive_id", "negative_id"))
        assert a.category != p.category and n.category == p.category and n.item_id != p.item_id
    ids = catalog.item_ids
    amazon = PairDataset(
        catalog, [ItemPair(ids[0], ids[1], 1, 0.5), ItemPair(ids[0], ids[2], 0, 1.0)]
    )
    assert len(amazon) == 2 and amazon[1]["anchor_id"] == ids[1] and amazon[0]["weight"] == 0.5
    with pytest.raises(DatasetError, match="not in the catalog"):
        PairDataset(catalog, [ItemPair("nope", ids[1], 1, 1.0)])


def test_feature_table(tmp_path):
    rng = np.random.default_rng(0)
    table = FeatureTable(
        ["a", "b", "c"], rng.random((3, 4)), rng.random((3, 2)), meta={"tower": "x"}
    )
    assert table.rows(["c", "a"]).tolist() == [2, 0] and table.rows([]).dtype == np.int64
    with pytest.raises(KeyError, match="2 item ids have no features: 'x', 'y'"):
        table.rows(["a", "x", "y"])
    loaded = FeatureTable.load(table.save(tmp_path / "f"))
    assert loaded.ids == table.ids and loaded.meta["tower"] == "x" and loaded.meta["image_dim"] == 4
    np.testing.assert_array_equal(loaded.image, table.image.astype(np.float32))
    assert loaded.text.dtype == np.float32
    with pytest.raises(ValueError, match="3 ids but 2 image rows"):
        FeatureTable(["a", "b", "c"], np.zeros((2, 4)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="duplicate item id 'a'"):
        FeatureTable(["a", "a"], np.zeros((2, 4)), np.zeros((2, 2)))
    with pytest.raises(DatasetError, match="not a feature table"):
        FeatureTable.load(tmp_path)
