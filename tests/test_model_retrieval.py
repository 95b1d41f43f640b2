"""Description-conditioned retrieval: hashed words, the target plan, the keyword baseline, metrics.

The behavioural test (the description decides what is retrieved) reads the model trained once in
tests/test_model_training.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from outfitter.data import load_catalog
from outfitter.data.types import CATEGORIES
from outfitter.model import load_config
from outfitter.model.evaluate import search_blocks, short_description
from outfitter.model.factory import build_model
from outfitter.model.inputs import UNKNOWN_CATEGORY, InputBuilder
from outfitter.model.keyword import KeywordSearch
from outfitter.model.metrics import ranked_retrieval, recall_at_k
from outfitter.model.retrieval import plan_targets
from outfitter.model.words import word_ids, words


def test_word_ids_are_stable_case_blind_and_padded():
    ids = word_ids(["Black LEATHER boots", "boots", ""], 1024)
    assert ids.shape == (3, 3) and ids.dtype == torch.long
    assert ids[0, 2] == ids[1, 0]  # "boots" hashes the same in every text
    assert (ids[1, 1:] == 0).all() and (ids[2] == 0).all()  # 0 = padding
    assert ((ids[0] >= 1) & (ids[0] < 1024)).all()
    assert torch.equal(word_ids(["black leather boots"], 1024)[0], ids[0])
    assert words("Polka-dot, 2-pack") == ["polka", "dot", "2", "pack"]
    with pytest.raises(ValueError, match="buckets"):
        word_ids(["x"], 1)


def test_short_description_keeps_the_last_word():
    rng = np.random.default_rng(0)
    for title in ("red tailored silk blouse", "tote bag", "boots"):
        short = short_description(title, rng)
        assert short.split()[-1] == title.split()[-1] and len(short.split()) <= 2


def test_ranked_retrieval_misses_a_target_outside_the_search():
    scores = np.array([[0.9, 0.8, 0.1, 0.0]])
    groups = np.array([0, 0, 1, 1])
    everywhere = np.ones((1, 4), bool)
    assert ranked_retrieval(scores, [2], 3, everywhere, [1], groups) == (1.0, pytest.approx(1 / 3))
    assert ranked_retrieval(scores, [2], 2, everywhere, [1], groups)[0] == 0.0
    wrong_category = groups[None] == 0  # the search keeps to category 0: never finds item 2
    assert ranked_retrieval(scores, [2], 3, wrong_category, [1], groups)[0] == 0.0
    right_category = groups[None] == 1
    assert ranked_retrieval(scores, [2], 1, right_category, [1], groups) == (1.0, 1.0)


def _full_search(scores, searched, targets, contexts, item_cat, k):
    """The metrics of a search over every catalog column, the rest masked (the reference)."""
    valid = np.array(
        [item_cat == s if s is not None else np.ones_like(item_cat, bool) for s in searched]
    )
    for q, outfit in enumerate(contexts):
        valid[q, outfit] = False
    ranked = ranked_retrieval(scores, targets, k, valid, item_cat[targets], item_cat)
    return ranked, recall_at_k(scores, targets, k, valid)


def test_search_blocks_give_the_metrics_of_a_full_search():
    """Scoring each query against its search's items alone (`search_blocks`) gives the metrics of
    ranking the whole catalog with the rest masked, targets outside the search included."""
    rng = np.random.default_rng(0)
    n_items, n_queries, k = 300, 90, 5
    item_cat = rng.integers(0, 4, n_items)
    scores = rng.normal(size=(n_queries, n_items)).astype(np.float32)
    scores[:, :30] = 0.5  # ties
    targets = rng.integers(0, n_items, n_queries)
    contexts = [list(rng.choice(n_items, 3, replace=False)) for _ in range(n_queries)]
    contexts = [[c for c in outfit if c != t] for outfit, t in zip(contexts, targets, strict=True)]
    right = [int(item_cat[t]) for t in targets]
    wrong = [int((item_cat[t] + 1) % 4) for t in targets]
    mixed = [[None, r, w][q % 3] for q, (r, w) in enumerate(zip(right, wrong, strict=True))]
    for searched in (right, mixed, [None] * n_queries):
        (want_hit, want_share), want_recall = _full_search(
            scores, searched, targets, contexts, item_cat, k
        )
        hits = share = recall = 0.0
        seen = []
        for rows, block, valid, target_col in search_blocks(
            searched, targets, contexts, item_cat, budget=2_000
        ):
            assert (block[target_col] == targets[rows]).all()
            sub = scores[np.ix_(rows, block)]
            h, s = ranked_retrieval(
                sub, target_col, k, valid, item_cat[targets[rows]], item_cat[block]
            )
            hits, share = hits + h * len(rows), share + s * len(rows)
            if searched is right:
                recall += recall_at_k(sub, target_col, k, valid) * len(rows)
            seen.extend(rows.tolist())
        assert sorted(seen) == list(range(n_queries))
        assert hits / n_queries == pytest.approx(want_hit)
        assert share / n_queries == pytest.approx(want_share)
        if searched is right:
            assert recall / n_queries == pytest.approx(want_recall)
    assert want_hit > 0  # the test searches find some targets


def test_keyword_search_finds_the_title_with_the_words():
    search = KeywordSearch(["black leather boots", "white canvas sneakers", "red silk scarf"])
    assert search.scores(["canvas sneakers"]).argmax() == 1
    assert search.scores(["leather boots"]).argmax() == 0


def test_keyword_blocks_are_kept_and_score_as_slicing_the_catalog_does(monkeypatch):
    """An evaluation asks for each category's titles many times: the sliced, transposed block is
    kept (a bounded number of them) and scores exactly as the catalog's rows do."""
    titles = [f"{c} {m} {k}" for c in ("black", "white", "red") for m in ("leather", "silk")
              for k in ("boots", "scarf", "bag")]  # fmt: skip
    search = KeywordSearch(titles)
    queries = ["black boots", "silk scarf", "red leather bag"]
    whole = search.scores(queries)  # (3, 18)
    block = np.array([17, 3, 5, 0])
    assert np.array_equal(search.scores(queries, block), whole[:, block])
    encoded = search.encode(queries)
    assert np.array_equal(search.scores_of(encoded[[1, 2]], block), whole[[1, 2]][:, block])
    sliced = []
    monkeypatch.setattr(search, "BLOCKS_KEPT", 2)
    real = type(search.matrix).__getitem__
    monkeypatch.setattr(
        type(search.matrix), "__getitem__", lambda m, rows: sliced.append(1) or real(m, rows)
    )
    search.scores_of(encoded, block)  # kept
    assert sliced == []
    for other in (np.array([1, 2]), np.array([4]), block):  # [4] evicts `block`: sliced again
        assert np.array_equal(search.scores_of(encoded, other), whole[:, other])
    assert len(sliced) == 3 and len(search._blocks) == 2


class _Head(torch.nn.Module):
    """A stand-in model whose category head returns fixed logits."""

    def __init__(self, logits):
        super().__init__()
        self.cfg = load_config("hybrid-tiny")
        self.category_head = torch.nn.Identity()
        self.logits = torch.tensor(logits)
        self.param = torch.nn.Parameter(torch.zeros(1))

    def category_logits(self, target_text):
        return self.logits[: len(target_text["words"])]


def test_plan_follows_a_sure_inferred_category_and_searches_everywhere_when_unsure():
    sure, unsure = [0.0] * len(CATEGORIES), [0.0] * len(CATEGORIES)
    sure[4] = 10.0  # ~1.0 probability
    model = _Head([sure, unsure])
    texts = ["boots", "something nice", "x"]
    target_text = {"words": word_ids(texts[:2], 64)}
    plan = plan_targets(model, None, texts[:2], [None, None], target_text)
    assert plan.inferred[0] == 4 and plan.confidence[0] > 0.99
    assert plan.search[0] == 4 and plan.category_input[0] == 4
    assert plan.search[1] is None and plan.category_input[1] == UNKNOWN_CATEGORY
    assert plan.confidence[1] == pytest.approx(1 / len(CATEGORIES))
    given = plan_targets(model, None, texts[:1], [7], {"words": word_ids(texts[:1], 64)})
    assert given.search == [7] and given.category_input == [7] and given.inferred == [None]


def test_words_reach_items_targets_and_new_items(synth_dir):
    catalog = load_catalog(synth_dir)
    cfg = load_config("hybrid-tiny")
    model = build_model(cfg)
    builder = InputBuilder.for_model(model, catalog)
    item = catalog.items[catalog.item_ids[0]]
    inputs = builder.item_inputs([item.item_id])
    assert torch.equal(inputs["words"], word_ids([item.title], cfg.words.buckets))
    new = builder.encode_new_item(item.title, item.description, catalog.image_path(item.item_id))
    assert torch.equal(new["words"], inputs["words"])
    model.eval()
    with torch.no_grad():
        a = model.encode_items({k: v for k, v in inputs.items()})
        b = model.encode_items({**new, "image_feat": inputs["image_feat"]})
    assert torch.allclose(a, b, atol=1e-5)
    text = builder.encode_texts(["black leather boots"])
    assert set(text) == {"text_feat", "words"}
    assert model.category_logits(text).shape == (1, len(CATEGORIES))
