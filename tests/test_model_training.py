"""Behavioural tests after a short training on the small synthetic catalog, checkpoints, builder.

One hybrid-tiny model (random-init tiny towers, cached features) and one sun2020-tiny model are
trained once per module; every test reads them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from outfitter.data import load_catalog, load_split
from outfitter.model import load_config
from outfitter.model.checkpoint import load_checkpoint, save_checkpoint
from outfitter.model.evaluate import encode_catalog, evaluate
from outfitter.model.inputs import InputBuilder
from outfitter.model.train_local import fit


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread; two spinning OpenMP threads on a busy 2-core machine
    make a step ~100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def catalog(synth_dir):
    return load_catalog(synth_dir)


@pytest.fixture(scope="module")
def hybrid(synth_dir, catalog):
    cfg = load_config("hybrid-tiny", {"optim.batch_size": 16})
    return fit(cfg, synth_dir, epochs=40, catalog=catalog)


@pytest.fixture(scope="module")
def sun(synth_dir, catalog):
    cfg = load_config("sun2020-tiny", {"optim.batch_size": 32})
    return fit(cfg, synth_dir, epochs=1, catalog=catalog)


def _eval_splits(synth_dir, catalog):
    return [load_split(synth_dir, "nondisjoint", s, catalog) for s in ("valid", "test")]


@torch.no_grad()
def test_compatible_outfit_beats_the_same_outfit_with_a_clash(hybrid, synth_dir, catalog):
    """Negatives of the synthetic task files are positives with one item swapped for a clash."""
    model, vecs = hybrid.model, encode_catalog(hybrid.model, hybrid.builder, catalog.item_ids)
    row = {i: r for r, i in enumerate(catalog.item_ids)}

    def score(items):
        outfit = vecs[torch.tensor([[row[i] for i in items]])]
        return float(
            model.compatibility_logits(outfit, torch.ones(1, len(items), dtype=torch.bool))
        )

    wins = []
    for split in _eval_splits(synth_dir, catalog):
        positives = [q.item_ids for q in split.compatibility if q.label == 1]
        for q in split.compatibility:
            for p in positives:
                if (
                    q.label == 0
                    and len(p) == len(q.item_ids)
                    and len(set(p) - set(q.item_ids)) == 1
                ):
                    wins.append(score(p) > score(q.item_ids))
    assert len(wins) >= 30
    assert np.mean(wins) >= 0.65, f"compatible outfit won only {np.mean(wins):.2f} of {len(wins)}"


@torch.no_grad()
def test_retrieval_ranks_true_item_above_random_same_category_items(hybrid, synth_dir, catalog):
    model, builder = hybrid.model, hybrid.builder
    ids = catalog.item_ids
    vecs, row = encode_catalog(model, builder, ids), {i: r for r, i in enumerate(ids)}
    rng = np.random.default_rng(0)
    above = {True: [], False: []}  # by description (title) / by category prompt only
    for split in _eval_splits(synth_dir, catalog):
        for outfit in split.outfits:
            *context, target = outfit.item_ids
            cat = catalog.items[target].category_index
            same = [i for i in ids if catalog.items[i].category_index == cat and i != target]
            negatives = vecs[[row[i] for i in rng.choice(same, 20)]]  # (20, D)
            ctx = vecs[torch.tensor([[row[i] for i in context]])]
            mask = torch.ones(1, len(context), dtype=torch.bool)
            for use_title in (True, False):
                text = builder.target_text([target], [cat], [not use_title])
                q = model.query(ctx, mask, text, torch.tensor([cat]))[0]
                above[use_title].append(
                    float((q @ vecs[row[target]] > negatives @ q).float().mean())
                )
    by_title, by_prompt = np.mean(above[True]), np.mean(above[False])
    # chance is 0.5; the standard error of these means is ~0.035
    assert by_title >= 0.6, f"true item above {by_title:.2f} of same-category items (title query)"
    assert by_prompt >= 0.55, f"true item above {by_prompt:.2f} of same-category items (prompt)"


def test_the_description_decides_what_is_retrieved(hybrid, synth_dir, catalog):
    """A test item's own title finds it across the whole catalog with no category given, a
    short description ("leather boots") still does far more often than the category prompt
    alone, and the category of a description is inferred."""
    from outfitter.model.evaluate import description_retrieval, holdouts

    model, builder = hybrid.model, hybrid.builder
    held = holdouts(load_split(synth_dir, "nondisjoint", "test", catalog), 0)
    vecs = encode_catalog(model, builder, catalog.item_ids)
    m = description_retrieval(model, builder, catalog, vecs, held)
    assert m["retrieval_title_in_category"] >= 0.9, m
    assert m["retrieval_title_recall_at_10"] >= 0.8, m
    assert m["retrieval_short_recall_at_10"] >= 0.5, m
    titles = [catalog.items[t].title for _, t in held]
    with torch.no_grad():
        probs = model.category_logits(builder.encode_texts(titles)).softmax(-1)
    truth = torch.tensor([catalog.items[t].category_index for _, t in held])
    assert (probs.argmax(-1) == truth).float().mean() >= 0.9


def test_evaluate_reports_every_metric(hybrid, synth_dir, catalog):
    split = load_split(synth_dir, "nondisjoint", "test", catalog)
    result = evaluate(hybrid.model, hybrid.builder, split, catalog)
    assert result["n_compat"] == len(split.compatibility) and result["n_fitb"] == len(split.fitb)
    assert 0.55 < result["compatibility_auc"] <= 1.0
    for key in ("fitb_accuracy", "fitb_accuracy_compat", "recall_at_10"):
        assert 0.0 <= result[key] <= 1.0
    assert result["fitb_accuracy_compat"] > 0.25  # chance with 4 answers


def test_retrieval_metrics_use_a_seeded_sample_of_at_most_max_queries(hybrid, synth_dir, catalog):
    """Retrieval ranks the whole catalog per query: `max_queries` caps the held-out items (the
    same sample each time, in split order); AUC and FITB keep the whole split. Without the
    baselines, no `keyword_*` metric is computed."""
    from outfitter.model.evaluate import holdouts

    split = load_split(synth_dir, "nondisjoint", "test", catalog)
    every = holdouts(split, 0)
    sample = holdouts(split, 0, limit=10)
    assert len(every) > 10 and len(sample) == 10 and sample == holdouts(split, 0, limit=10)
    assert [every.index(h) for h in sample] == sorted(every.index(h) for h in sample)
    assert holdouts(split, 0, limit=len(every)) == every
    capped = evaluate(hybrid.model, hybrid.builder, split, catalog, max_queries=10)
    full = evaluate(hybrid.model, hybrid.builder, split, catalog, baselines=False)
    assert capped["n_recall"] == 10 and full["n_recall"] == len(every)
    assert capped["compatibility_auc"] == full["compatibility_auc"]
    assert capped["fitb_accuracy"] == full["fitb_accuracy"]
    assert any(k.startswith("keyword_") for k in capped)
    assert not any(k.startswith("keyword_") for k in full)
    assert {k for k in capped if not k.startswith("keyword_")} == set(full)


def test_an_evaluation_encodes_each_description_once(hybrid, synth_dir, catalog, monkeypatch):
    """Every description is asked with and without its category, and FITB and recall@10 ask by
    category prompts: the frozen text tower encodes each distinct text once per evaluation."""
    from collections import Counter

    towers = hybrid.builder.towers
    # a builder of its own: the module's has every text of earlier evaluations cached already
    builder = InputBuilder.for_model(hybrid.model, catalog, hybrid.builder.features, towers)
    encoded: Counter = Counter()
    real = towers.encode_texts
    monkeypatch.setattr(
        towers, "encode_texts", lambda texts, **kw: encoded.update(texts) or real(texts, **kw)
    )
    split = load_split(synth_dir, "nondisjoint", "test", catalog)
    result = evaluate(hybrid.model, builder, split, catalog, baselines=False)
    assert result["n_recall"] > 0
    assert encoded and max(encoded.values()) == 1, encoded.most_common(3)


def test_hybrid_checkpoint_round_trip(hybrid, synth_dir, catalog, tmp_path):
    save_checkpoint(
        tmp_path, hybrid.model, hybrid.cfg, {"epochs": 40}, towers=hybrid.builder.towers
    )
    assert {p.name for p in tmp_path.iterdir()} >= {"config.json", "model.safetensors", "meta.json"}
    model, cfg, meta = load_checkpoint(tmp_path)
    assert meta == {"epochs": 40}
    assert cfg.transformer == hybrid.cfg.transformer and cfg.item == hybrid.cfg.item
    assert cfg.clip.pretrained.endswith("towers.safetensors")
    builder = InputBuilder.for_model(model, catalog)  # towers rebuilt from the checkpoint file
    ids = catalog.item_ids[:50]
    before = encode_catalog(hybrid.model, hybrid.builder, ids)
    assert torch.allclose(encode_catalog(model, builder, ids), before, atol=1e-5)
    text = builder.encode_texts(["a photo of shoes"])["text_feat"]
    assert torch.allclose(
        text, hybrid.builder.encode_texts(["a photo of shoes"])["text_feat"], atol=1e-5
    )
    split = load_split(synth_dir, "nondisjoint", "valid", catalog)
    a, b = (
        evaluate(model, builder, split, catalog),
        evaluate(hybrid.model, hybrid.builder, split, catalog),
    )
    assert a["compatibility_auc"] == pytest.approx(b["compatibility_auc"])
    assert a["fitb_accuracy"] == pytest.approx(b["fitb_accuracy"])


def test_sun2020_trains_evaluates_and_round_trips(sun, synth_dir, catalog, tmp_path):
    assert sun.history[0]["triplet_loss"] > 0
    split = load_split(synth_dir, "nondisjoint", "valid", catalog)
    result = evaluate(sun.model, sun.builder, split, catalog)
    assert 0.0 <= result["compatibility_auc"] <= 1.0
    save_checkpoint(tmp_path, sun.model, sun.cfg, {})
    model, cfg, _ = load_checkpoint(tmp_path)
    assert cfg.kind == "sun2020" and model.vocab.words == sun.model.vocab.words
    builder = InputBuilder.for_model(model, catalog)
    ids = catalog.item_ids[:20]
    assert torch.allclose(
        encode_catalog(model, builder, ids), encode_catalog(sun.model, sun.builder, ids), atol=1e-5
    )


def test_builder_negatives_targets_and_new_items(hybrid, synth_dir, catalog):
    from outfitter.data.datasets import RetrievalDataset, collate_retrieval

    builder, cfg = hybrid.builder, hybrid.cfg
    dataset = RetrievalDataset(load_split(synth_dir, "nondisjoint", "train", catalog), catalog)
    batch = builder.retrieval(collate_retrieval([dataset[i] for i in range(8)]), train=True)
    assert batch["negatives"].shape == (8, cfg.loss.category_negatives)
    cats = [
        [catalog.items[batch["ids"][p]].category_index for p in row]
        for row in batch["negatives"].tolist()
    ]
    assert all(set(c) == {int(t)} for c, t in zip(cats, batch["target_category"], strict=True))
    assert batch["inputs"]["image_feat"].shape == (len(batch["ids"]), 64)
    prompts = builder.retrieval(collate_retrieval([dataset[0]]), train=False, prompt=True)
    cat = int(prompts["target_category"][0])
    expected = builder.encode_texts([builder.prompt(cat)])["text_feat"]
    assert torch.allclose(prompts["target_text"]["text_feat"], expected, atol=1e-5)
    item = catalog.items[catalog.item_ids[0]]
    new = builder.encode_new_item(item.title, item.description, catalog.image_path(item.item_id))
    cached = builder.item_inputs([item.item_id])
    assert torch.allclose(new["text_feat"], cached["text_feat"], atol=1e-5)
    assert torch.allclose(new["image_feat"], cached["image_feat"], atol=1e-4)
