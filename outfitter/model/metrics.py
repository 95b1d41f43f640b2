"""Evaluation metrics: compatibility ROC AUC, FITB accuracy, retrieval recall@k (numpy; the top k
of a (Q, M) block of a whole catalog is torch's `topk`: 25x numpy's `argpartition` at 200k items).

Ties never help a model: FITB gives 1/t credit when the right answer ties with t-1 others, and
recall@k counts every other candidate scoring >= the target as ranked above it, so a model that
scores everything equally gets chance FITB and (almost) no recall.
"""

from __future__ import annotations

import numpy as np


def compatibility_auc(labels, scores) -> float:
    """ROC AUC of scores against binary labels, ties counting half: the Mann-Whitney U of the
    positives' average ranks, which is what scikit-learn's `roc_auc_score` computes (tested).

    numpy only: rank 0 of a training run computes it at every validation, and importing
    scikit-learn for it held 75 MB in that worker through the rest of the run. +-inf (a
    low-precision logit overflowing) ranks like any score.
    """
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.shape[0]} labels but {scores.shape[0]} scores")
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes; got {n_pos} positives, {n_neg} negatives")
    if np.isnan(scores).any():
        raise ValueError(f"{int(np.isnan(scores).sum())} of {scores.size} scores are NaN")
    order = np.argsort(scores, kind="stable")
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    ranks = np.empty(len(scores))
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)  # 1-based, ties averaged
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fitb_accuracy(scores, correct) -> float:
    """Share of questions whose right answer scores highest.

    Args:
        scores: (Q, C) score of each candidate answer.
        correct: (Q,) index of the right answer.
    """
    scores = np.asarray(scores, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.int64)
    if scores.ndim != 2 or scores.shape[0] != correct.shape[0]:
        raise ValueError(
            f"scores {scores.shape} must be (Q, C) with Q = len(correct)={len(correct)}"
        )
    if len(correct) == 0:
        return float("nan")
    right = scores[np.arange(len(correct)), correct][:, None]  # (Q, 1)
    above = (scores > right).any(axis=1)
    ties = (scores == right).sum(axis=1)  # includes the right answer itself
    return float(np.where(above, 0.0, 1.0 / ties).mean())


def _floats(scores) -> np.ndarray:
    """Scores as they came if already floating point (a (Q, M) float32 block of a 200k-item
    catalog is 200 MB a chunk; widening it changes no ranking), else as float64."""
    scores = np.asarray(scores)
    return scores if scores.dtype.kind == "f" else scores.astype(np.float64)


def recall_at_k(scores, target, k: int, valid=None) -> float:
    """Share of queries whose target ranks in the top k among the valid candidates.

    Args:
        scores: (Q, M) score of each candidate item.
        target: (Q,) index of the target item in the candidates.
        valid: optional (Q, M) bool, False = not a candidate for that query (other categories,
            items already in the outfit); the target itself is always a candidate.
    """
    scores = _floats(scores)
    target = np.asarray(target, dtype=np.int64)
    if len(target) == 0:
        return float("nan")
    rows = np.arange(len(target))
    mask = np.ones_like(scores, dtype=bool) if valid is None else np.asarray(valid, bool).copy()
    mask[rows, target] = False  # the target does not outrank itself
    t = scores[rows, target][:, None]  # (Q, 1)
    rank = ((scores >= t) & mask).sum(axis=1)  # candidates ranked at or above the target
    return float((rank < k).mean())


def ranked_retrieval(
    scores, target, k: int, valid, target_group, item_group
) -> tuple[float, float]:
    """Recall@k of a search that can only return `valid` items, and the share of its top k that
    share the target's group (e.g. its category).

    Unlike `recall_at_k`, a target outside `valid` counts as missed: a search restricted to the
    wrong category never returns it.

    Args:
        scores: (Q, M) scores of catalog items.
        target: (Q,) index of the wanted item.
        valid: (Q, M) bool, True = the search may return that item.
        target_group: (Q,) group of each target; item_group: (M,) group of each item.
    """
    scores = np.where(valid, _floats(scores), -np.inf)
    target = np.asarray(target, dtype=np.int64)
    if len(target) == 0:
        return float("nan"), float("nan")
    rows = np.arange(len(target))
    t = scores[rows, target][:, None]  # (Q, 1)
    target_valid = valid[rows, target]
    # other valid items at or above the target (ties rank above it); items outside `valid` are
    # -inf, below any target that is inside it, and a target outside it is a miss anyway
    rank = (scores >= t).sum(axis=1) - target_valid
    hit = target_valid & (rank < k)
    k_eff = min(k, scores.shape[1])
    top = _top_k(scores, k_eff)  # (Q, k) unordered top k
    top_valid = np.take_along_axis(valid, top, axis=1)
    same = (np.asarray(item_group)[top] == np.asarray(target_group)[:, None]) & top_valid
    share = same.sum(axis=1) / np.maximum(top_valid.sum(axis=1), 1)
    return float(hit.mean()), float(share.mean())


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices (Q, k) of each row's k highest scores, in no particular order.

    torch's multithreaded `topk`: numpy's `argpartition` took 1.2 s a (256, 200k) block whose
    rows are mostly -inf (another category), which made it most of a 200k-item evaluation.
    """
    import torch

    return (
        torch.from_numpy(np.ascontiguousarray(scores)).topk(k, dim=1, sorted=False).indices.numpy()
    )
