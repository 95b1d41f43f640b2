"""Amazon co-purchase splits: deterministic, leak-free, fixed negatives and ranking questions;
format detection of dataset folders."""

from __future__ import annotations

import gzip
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outfitter.data import DatasetError, detect_format, load_catalog, load_split
from outfitter.data.amazon import read_amazon
from outfitter.data.amazon_splits import RANK_CANDIDATES, SPLITS
from outfitter.data.datasets import PairDataset
from outfitter.data.synth import synthesize


@pytest.fixture(scope="module")
def amazon_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("amazon")
    synthesize(root, 120, 3, 32, "amazon")
    return root


def _key(item_ids):
    return tuple(sorted(item_ids))


@pytest.mark.parametrize("version", ["nondisjoint", "disjoint"])
def test_splits_are_deterministic_and_leak_free(amazon_dir, version):
    catalog = load_catalog(amazon_dir)
    splits = {s: load_split(amazon_dir, version, s, catalog) for s in SPLITS}
    again = load_split(amazon_dir, version, "test", load_catalog(amazon_dir))
    assert again.compatibility == splits["test"].compatibility and again.fitb == splits["test"].fitb
    pairs = {s: {_key(o.item_ids) for o in sp.outfits} for s, sp in splits.items()}
    assert all(pairs.values())
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not pairs[a] & pairs[b], f"a pair is in both {a} and {b}"
    items = {s: {i for o in sp.outfits for i in o.item_ids} for s, sp in splits.items()}
    if version == "disjoint":
        assert not items["train"] & (items["valid"] | items["test"])
    else:  # the common protocol: products are shared, pairs are not
        assert items["train"] & items["test"]
    positives = [p for p in read_amazon(amazon_dir).pairs if p.label == 1]
    n_kept = sum(len(v) for v in pairs.values())
    if version == "nondisjoint":
        assert n_kept == len(positives)  # every pair lands in exactly one split
    assert splits["train"].pairs and not splits["train"].compatibility


def test_negatives_and_ranking_follow_the_protocol(amazon_dir):
    catalog = load_catalog(amazon_dir)
    positives = [p for p in read_amazon(amazon_dir).pairs if p.label == 1]
    linked = {(p.a, p.b) for p in positives} | {(p.b, p.a) for p in positives}
    test = load_split(amazon_dir, "nondisjoint", "test", catalog)
    split_items = {i for o in test.outfits for i in o.item_ids}
    by_anchor = {}
    for q in test.compatibility:
        if q.label == 1:
            by_anchor[q.item_ids[0]] = q.item_ids[1]
        else:
            anchor, negative = q.item_ids
            assert (anchor, negative) not in linked
            assert negative in split_items
    labels = [q.label for q in test.compatibility]
    assert labels.count(0) > 0.9 * labels.count(1)
    cat = {i: catalog.items[i].category for i in catalog.items}
    for o, q in zip(test.outfits, test.fitb, strict=True):
        anchor, complement = o.item_ids
        assert q.question == (anchor,) and q.answers[q.correct] == complement
        available = [
            c
            for c in catalog.items
            if cat[c] == cat[complement] and c not in o.item_ids and (anchor, c) not in linked
        ]  # a small catalog may have fewer than RANK_CANDIDATES of a category
        assert len(q.answers) == min(RANK_CANDIDATES, 1 + len(available)) == len(set(q.answers))
        assert {cat[a] for a in q.answers} == {cat[complement]}
        assert not any((anchor, a) in linked for a in q.answers if a != complement)
    assert len({q.correct for q in test.fitb}) > 5  # the true item is not always first


def test_pair_dataset_reads_copurchase_weights(amazon_dir):
    catalog = load_catalog(amazon_dir)
    train = load_split(amazon_dir, "disjoint", "train", catalog)
    ds = PairDataset.from_split(train, catalog, seed=0)
    weights = {s["weight"] for s in (ds[i] for i in range(len(ds)))}
    assert {0.5, 1.0} <= weights  # also_bought and bought_together, not outfit fractions
    train_items = {i for o in train.outfits for i in o.item_ids}
    assert all(ds[i]["negative_id"] in train_items for i in range(0, len(ds), 7))


def test_format_detection(amazon_dir, tmp_path, polyvore_mini):
    assert detect_format(amazon_dir) == "amazon"
    assert detect_format(polyvore_mini) == "polyvore"
    with pytest.raises(DatasetError, match="neither a Polyvore Outfits nor an Amazon"):
        detect_format(tmp_path)
    both = tmp_path / "both"
    shutil.copytree(polyvore_mini, both)
    shutil.copy(next(amazon_dir.glob("meta*.json")), both)
    with pytest.raises(DatasetError, match="pass --format"):
        load_catalog(both)
    assert len(load_catalog(both, "amazon").items) == len(load_catalog(amazon_dir).items)
    assert load_catalog(both, "polyvore").items == load_catalog(polyvore_mini).items
    with pytest.raises(ValueError, match="one of"):
        detect_format(both, "csv")


# ---------------------------------------------------------------- fuzz: the split reader

_ROOT = ["Clothing, Shoes & Jewelry", "Women"]
_ASINS = [f"B{i:03d}" for i in range(12)]
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
_record = st.fixed_dictionaries(
    {
        "asin": st.sampled_from(_ASINS) | _json,
        "categories": st.sampled_from(
            [
                [[*_ROOT, "Clothing", "Tops"]],
                [[*_ROOT, "Shoes", "Boots"]],
                [[*_ROOT, "Pants"]],
                [[*_ROOT, "Handbags"]],
                [["Costumes"]],
            ]
        )
        | _json,  # fmt: skip
    },
    optional={
        "title": st.text(max_size=20) | _json,
        "related": st.fixed_dictionaries(
            {},
            optional={
                "bought_together": st.lists(st.sampled_from(_ASINS), max_size=4) | _json,
                "also_bought": st.lists(st.sampled_from(_ASINS), max_size=6),
            },
        )
        | _json,
    },
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(records=st.lists(_record, min_size=1, max_size=12), literal=st.booleans(), gz=st.booleans())
def test_split_reader_loads_or_names_the_problem(tmp_path, records, literal, gz):
    """Any small McAuley file: every split loads with its invariants, or one DatasetError."""
    folder = Path(tempfile.mkdtemp(dir=tmp_path))  # one folder per example
    text = "".join((repr(r) if literal else json.dumps(r)) + "\n" for r in records)
    name = "meta_Clothing.json" + (".gz" if gz else "")
    (folder / name).write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    try:
        catalog = load_catalog(folder)
        splits = {
            (v, s): load_split(folder, v, s, catalog)
            for v in ("nondisjoint", "disjoint")
            for s in SPLITS
        }
    except DatasetError as e:
        assert "\n" not in str(e) and str(folder) in str(e)
        return
    for split in splits.values():
        outfits = {o.item_ids for o in split.outfits}
        for q in split.compatibility:
            assert all(i in catalog.items for i in q.item_ids)
            assert q.label == 0 or q.item_ids in outfits
        for q in split.fitb:  # the blank's answer is the pair's complement, among distinct items
            assert (*q.question, q.answers[q.correct]) in outfits
            assert len(set(q.answers)) == len(q.answers)
    for v in ("nondisjoint", "disjoint"):
        seen = [_key(o.item_ids) for s in SPLITS for o in splits[(v, s)].outfits]
        assert len(seen) == len(set(seen))  # no pair in two splits
