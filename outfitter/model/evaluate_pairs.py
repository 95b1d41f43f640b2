"""Evaluate a model on a pair split (Amazon co-purchase, `data.amazon_splits`): the paper's metrics.

- `compatibility_auc`: ROC AUC of the pair compatibility score over the split's positive pairs
  and their fixed negatives (one random item of the positive's category not linked to the
  anchor per positive): Sun et al.'s pairwise compatibility AUC.
- `hit_at_{k}` and `mrr`: each held-out pair's true complement ranked by the same pair score
  among `n_candidates` items of its category (itself and items not linked to the anchor), for
  k in `HIT_KS`. A candidate that ties with the true one counts as ranked above it, so a model
  that scores everything alike gets no hits.

Both models score a pair the way they score an outfit of two items (`compatibility_logits`):
sun2020 by the cosine of the two item vectors, hybrid by its outfit token. The result has
NaN for a task the split lacks, like `evaluate.evaluate`, and `n_*` counts.
"""

from __future__ import annotations

import numpy as np

from outfitter.data.types import Catalog, Split
from outfitter.model import metrics
from outfitter.model.evaluate import outfit_logits, vectors_or_encode

HIT_KS = (1, 5, 10)


def ranks(scores: list[np.ndarray], correct: list[int]) -> np.ndarray:
    """1-based rank of each question's correct candidate; others scoring >= it rank above."""
    return np.array([int((s >= s[c]).sum()) for s, c in zip(scores, correct, strict=True)])


def evaluate_pairs(
    model, builder, split: Split, catalog: Catalog, *, batch_size: int = 1024, vecs=None
) -> dict:
    """Pair AUC, hit@k and MRR of `model` on a pair split (module docstring); `vecs`: the
    catalog's item vectors when already computed."""
    model.eval()
    ids = catalog.item_ids
    row = {item_id: r for r, item_id in enumerate(ids)}
    vecs = vectors_or_encode(model, builder, ids, vecs)  # (M, D)
    result: dict = {
        "n_pairs": sum(q.label for q in split.compatibility),
        "n_negatives": sum(1 - q.label for q in split.compatibility),
        "n_ranking": len(split.fitb),
        "compatibility_auc": float("nan"),
        "mrr": float("nan"),
        **{f"hit_at_{k}": float("nan") for k in HIT_KS},
    }
    labels = [q.label for q in split.compatibility]
    if len(set(labels)) == 2:
        pairs = np.array([[row[i] for i in q.item_ids] for q in split.compatibility])
        result["compatibility_auc"] = metrics.compatibility_auc(
            labels, outfit_logits(model, vecs, pairs.tolist(), batch_size)
        )
    if split.fitb:
        flat = np.array(
            [[row[q.question[0]], row[a]] for q in split.fitb for a in q.answers]
        )  # (sum of candidates, 2): (anchor, candidate)
        scores = outfit_logits(model, vecs, flat.tolist(), batch_size)
        cuts = np.cumsum([len(q.answers) for q in split.fitb])[:-1]
        rank = ranks(np.split(scores, cuts), [q.correct for q in split.fitb])
        result["n_candidates"] = float(np.mean([len(q.answers) for q in split.fitb]))
        result["mrr"] = float(np.mean(1.0 / rank))
        for k in HIT_KS:
            result[f"hit_at_{k}"] = float(np.mean(rank <= k))
    return result


def evaluate_split(
    model, builder, split: Split, catalog: Catalog, *, vecs=None, baselines: bool = True
) -> dict:
    """The metrics of the split's kind: pair metrics for a pair split (it carries `pairs`),
    outfit metrics (`evaluate.evaluate`: AUC, FITB, retrieval) otherwise. `vecs`: the catalog's
    item vectors (M, D) when already computed (encoded here otherwise); `baselines=False`: no
    model-independent keyword baselines."""
    if split.pairs:
        return evaluate_pairs(model, builder, split, catalog, vecs=vecs)
    from outfitter.model.evaluate import evaluate

    return evaluate(model, builder, split, catalog, vecs=vecs, baselines=baselines)
