"""The synthetic catalog: determinism, the disjoint property, and that it is a fair benchmark
(rules followed by positives, broken by negatives, modalities carrying different signals)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from typer.testing import CliRunner

from outfitter.cli import app
from outfitter.data import (
    DatasetError,
    check_dataset,
    load_catalog,
    load_split,
    synth_render,
    validate_dataset,
)
from outfitter.data.synth import sample_world, synthesize
from outfitter.data.synth_outfits import SplitTasks, split_members
from outfitter.data.synth_render import render_batch
from outfitter.data.synth_world import (
    COLOUR_FAMILY,
    COLOURS,
    NEUTRAL,
    STYLE_ADJECTIVES,
    STYLE_MATERIALS,
    STYLE_OCCASIONS,
)


def _digest(root) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(synth_render, "CHUNK", 64)  # several chunks, so the pool path runs
    a = _digest(synthesize(tmp_path / "a", n_outfits=40, seed=3, image_size=32, workers=1))
    b = _digest(synthesize(tmp_path / "b", n_outfits=40, seed=3, image_size=32, workers=2))
    c = _digest(synthesize(tmp_path / "c", n_outfits=40, seed=4, image_size=32))
    assert len(a) > 3 * 64 and a == b
    assert a["polyvore_item_metadata.json"] != c["polyvore_item_metadata.json"]
    assert a["nondisjoint/fill_in_blank_test.json"] != c["nondisjoint/fill_in_blank_test.json"]


def test_refuses_non_empty_folder(tmp_path):
    synthesize(tmp_path, n_outfits=20, image_size=16)
    with pytest.raises(DatasetError, match="not empty"):
        synthesize(tmp_path, n_outfits=20, image_size=16)
    synthesize(tmp_path, n_outfits=20, seed=1, image_size=16, overwrite=True)
    assert len(list((tmp_path / "images").iterdir())) == len(load_catalog(tmp_path).items)


def test_disjoint_shares_no_item(synth_dir):
    items = {
        s: {i for o in load_split(synth_dir, "disjoint", s).outfits for i in o.item_ids}
        for s in ("train", "valid", "test")
    }
    assert not items["train"] & items["test"] and not items["train"] & items["valid"]
    assert not items["valid"] & items["test"]
    nd = {
        s: {i for o in load_split(synth_dir, "nondisjoint", s).outfits for i in o.item_ids}
        for s in ("train", "test")
    }
    assert nd["train"] & nd["test"], "nondisjoint reuses items across splits, like Polyvore"


def test_fitb_answers_share_category(synth_dir):
    catalog = load_catalog(synth_dir)
    fitb = load_split(synth_dir, "nondisjoint", "test", catalog).fitb
    same = [len({catalog.items[a].category for a in q.answers}) == 1 for q in fitb]
    assert np.mean(same) > 0.95
    assert len({q.correct for q in fitb}) == 4  # the right answer is at any position


def test_text_hides_colour_and_shows_style():
    world = sample_world(300, seed=0)
    texts = [f"{t.title}. {t.description}".lower() for t in world.texts]
    colours = [COLOURS[c][0] for c in world.table.colour]
    colour_hidden = np.mean([c not in t for c, t in zip(colours, texts, strict=True)])
    assert 0.5 < colour_hidden < 0.8
    style_words = {
        w for words in (*STYLE_ADJECTIVES.values(), *STYLE_MATERIALS.values()) for w in words
    }
    style_words |= {s.lower() for occ in STYLE_OCCASIONS.values() for s in occ}
    has_style = np.mean([any(w in t for w in style_words) for t in texts])
    assert has_style > 0.85
    # the colour is in the image: the centre of a solid item's image has the item's colour
    t = world.table
    solid = [i for i in range(len(t)) if t.pattern[i] == 0 and t.category[i] in (3, 10)][:50]
    images = render_batch(
        np.array([t.category[i] for i in solid]),
        np.array([t.colour[i] for i in solid]),
        np.zeros(len(solid), dtype=int),
        32,
        seed=0,
    )
    centre = images[:, 16, 18].astype(float)
    expected = np.array([COLOURS[t.colour[i]][1] for i in solid], dtype=float)
    assert np.median(np.abs(centre - expected).max(axis=1)) < 50


def _breaks_a_rule(t, items) -> bool:
    styles = {t.style[i] for i in items}
    families = {int(COLOUR_FAMILY[t.colour[i]]) for i in items} - {NEUTRAL}
    patterned = sum(t.pattern[i] > 0 for i in items)
    return len(styles) > 1 or len(families) > 1 or patterned > 1


def test_positives_obey_and_negatives_break_the_rules():
    world = sample_world(600, seed=1)
    members = split_members(world.outfits, np.random.default_rng(0))["nondisjoint"]["train"]
    lines, fitb = SplitTasks(world.table, world.outfits, members, seed=0).build()
    item_of = {
        f"{o.set_id}_{idx}": i
        for o in world.outfits
        for i, idx in zip(o.items, o.indices, strict=True)
    }
    broken = {0: [], 1: []}
    for line in lines:
        label, *refs = line.split()
        broken[int(label)].append(_breaks_a_rule(world.table, [item_of[r] for r in refs]))
    assert 0.02 < np.mean(broken[1]) < 0.12  # label noise, but mostly clean
    assert np.mean(broken[0]) > 0.85  # hard negatives really clash
    wrong_clash = [
        _breaks_a_rule(world.table, [item_of[r] for r in q["question"]] + [item_of[a]])
        for q in fitb
        for a in q["answers"]
        if a.rsplit("_", 1)[0] != q["question"][0].rsplit("_", 1)[0]
    ]
    assert np.mean(wrong_clash) > 0.85


def test_amazon_format(tmp_path):
    from outfitter.data.amazon import read_amazon

    synthesize(tmp_path, n_outfits=60, seed=0, image_size=16, fmt="amazon")
    data = read_amazon(tmp_path)
    assert data.skipped["no fashion category"]
    assert all(data.catalog.image_path(i).is_file() for i in data.catalog.items)
    positives = [p for p in data.pairs if p.label == 1]
    assert positives and len(data.pairs) == 2 * len(positives)
    assert all(
        data.catalog.items[p.a].category != data.catalog.items[p.b].category for p in positives
    )
    assert check_dataset(tmp_path).counts["items"] == len(data.catalog.items)
    next((tmp_path / "images").iterdir()).unlink()
    assert validate_dataset(tmp_path).errors["missing_image"].count == 1


def test_cli_synth(tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["data", "synth", "--out", str(tmp_path / "c"), "--outfits", "20", "--image-size", "16"],
    )
    assert result.exit_code == 0, result.output
    assert "wrote polyvore catalog" in result.output
    again = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "c"), "--outfits", "20"])
    assert again.exit_code == 2 and "not empty" in again.output
