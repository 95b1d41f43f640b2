"""The Sun et al. ablation switches and the pair metrics, without Ray: `item.modalities` cuts a
sun2020 branch, `loss.triplet_weighted=false` ignores the pair weights, and `evaluate_pairs`
gives a scorer no credit for ties and full credit for knowing the pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from outfitter.data.types import Catalog, CompatibilityQuestion, FITBQuestion, Item, Split
from outfitter.model import load_config
from outfitter.model.evaluate_pairs import evaluate_pairs, ranks
from outfitter.model.sun2020 import Sun2020Model, WordVocab
from outfitter.model.task import OutfitTask

SMALL = {"sun2020.cnn_width": 4, "sun2020.dim": 16, "sun2020.word_dim": 8,
         "sun2020.lstm_hidden": 8}  # fmt: skip


def _model(**overrides) -> Sun2020Model:
    torch.manual_seed(0)
    cfg = load_config("sun2020-tiny", {**SMALL, **overrides})
    return Sun2020Model(cfg, WordVocab.build(["red silk blouse", "blue wool trousers"])).eval()


def _inputs(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "pixels": torch.randn(3, 3, 32, 32, generator=g),
        "tokens": torch.randint(1, 8, (3, 4), generator=g),
    }


@pytest.mark.parametrize(("modality", "varied"), [("image", "tokens"), ("text", "pixels")])
def test_one_modality_ignores_the_other(modality, varied):
    model = _model(**{"item.modalities": [modality]})
    a, b = _inputs(0), _inputs(1)
    mixed = {**a, varied: b[varied]}
    with torch.no_grad():
        assert torch.allclose(model.encode_items(a), model.encode_items(mixed))
        kept = "pixels" if varied == "tokens" else "tokens"
        assert not torch.allclose(model.encode_items(a), model.encode_items({**a, kept: b[kept]}))


@pytest.mark.parametrize("weighted", [True, False])
def test_unweighted_triplet_loss_ignores_the_weights(weighted):
    model = _model(**{"loss.triplet_weighted": weighted})
    task = OutfitTask(model, model.cfg)
    batch = {"inputs": _inputs(0), "anchor": torch.tensor([0, 1]),
             "positive": torch.tensor([1, 2]), "negative": torch.tensor([2, 0])}  # fmt: skip
    with torch.no_grad():
        low = task._triplets({**batch, "weight": torch.tensor([0.1, 0.1])}, "t")["t"]
        high = task._triplets({**batch, "weight": torch.tensor([1.0, 1.0])}, "t")["t"]
    assert (low == high) != weighted


def test_ranks_count_ties_against_the_model():
    assert ranks([np.array([0.9, 0.1, 0.5]), np.array([1.0, 1.0, 1.0])], [0, 2]).tolist() == [1, 3]


class _Known(torch.nn.Module):
    """Scores a pair 1 when it is a known positive, else 0 (or a constant: `know=False`)."""

    def __init__(self, positives: set[tuple[int, int]], know: bool = True):
        super().__init__()
        self.positives, self.know = positives, know
        self.w = torch.nn.Parameter(torch.zeros(1))

    def encode_items(self, inputs):
        return inputs["rows"].float()[:, None]  # (U, 1): an item's vector is its row

    def compatibility_logits(self, vecs, mask):
        pairs = vecs[..., 0].long().tolist()  # (B, 2) rows
        return torch.tensor([float(self.know and tuple(p) in self.positives) for p in pairs])


class _Builder:
    def __init__(self, ids):
        self.row = {i: r for r, i in enumerate(ids)}

    def item_inputs(self, ids):
        return {"rows": torch.tensor([self.row[i] for i in ids])}


def test_pair_metrics_of_a_perfect_and_a_constant_scorer():
    items = {f"t{i}": Item(f"t{i}", "top", "", "tops") for i in range(6)}
    items |= {f"s{i}": Item(f"s{i}", "shoe", "", "shoes") for i in range(6)}
    catalog = Catalog(root=None, items=items, image_dir=None)
    row = {i: r for r, i in enumerate(catalog.item_ids)}
    pairs = [(f"t{i}", f"s{i}") for i in range(6)]
    compat = [CompatibilityQuestion(1, p) for p in pairs]
    compat += [CompatibilityQuestion(0, (a, f"s{(k + 1) % 6}")) for k, (a, _) in enumerate(pairs)]
    fitb = [FITBQuestion((a,), tuple(f"s{(k + j) % 6}" for j in range(5)), 0, 2)
            for k, (a, _) in enumerate(pairs)]  # fmt: skip
    split = Split("nondisjoint", "test", [], compat, fitb)
    known = {(row[a], row[b]) for a, b in pairs}
    builder = _Builder(catalog.item_ids)
    perfect = evaluate_pairs(_Known(known), builder, split, catalog)
    assert perfect["compatibility_auc"] == 1.0 and perfect["hit_at_1"] == 1.0
    assert perfect["mrr"] == 1.0 and perfect["n_candidates"] == 5
    constant = evaluate_pairs(_Known(known, know=False), builder, split, catalog)
    assert constant["compatibility_auc"] == 0.5 and constant["hit_at_1"] == 0.0
    assert constant["hit_at_5"] == 1.0 and constant["mrr"] == pytest.approx(0.2)
