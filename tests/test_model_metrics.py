"""Metrics against scikit-learn and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from outfitter.model.metrics import compatibility_auc, fitb_accuracy, recall_at_k


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.normal(size=200) + labels * 0.5, 1)  # rounded: many ties
    assert compatibility_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))


def test_auc_hand_cases():
    assert compatibility_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert compatibility_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert compatibility_auc([0, 1], [0.5, 0.5]) == 0.5
    # 2 positives x 2 negatives: (0.9 > 0.2, 0.9 > 0.6, 0.4 > 0.2, 0.4 < 0.6) = 3/4
    assert compatibility_auc([1, 0, 1, 0], [0.9, 0.2, 0.4, 0.6]) == 0.75
    with pytest.raises(ValueError, match="both classes"):
        compatibility_auc([1, 1], [0.1, 0.2])


def test_fitb_hand_cases_and_ties():
    scores = [[0.9, 0.1, 0.2, 0.3], [0.1, 0.2, 0.8, 0.3], [0.5, 0.5, 0.1, 0.1]]
    # right, wrong (answer 1 but 2 is highest), tie of two -> 1/2 credit
    assert fitb_accuracy(scores, [0, 1, 0]) == pytest.approx((1 + 0 + 0.5) / 3)
    assert fitb_accuracy(np.zeros((4, 4)), [0, 1, 2, 3]) == pytest.approx(0.25)  # chance


def test_recall_at_k_hand_cases():
    scores = np.array([[0.9, 0.8, 0.7, 0.1], [0.1, 0.2, 0.3, 0.4]])
    target = np.array([2, 0])
    assert recall_at_k(scores, target, 1) == 0.0
    assert recall_at_k(scores, target, 3) == 0.5  # row 0: rank 2 (< 3); row 0 of row 1: rank 3
    assert recall_at_k(scores, target, 4) == 1.0
    valid = np.array([[False, False, True, True], [True, False, False, True]])
    assert recall_at_k(scores, target, 1, valid) == 0.5  # row 0 now ranks first
    assert recall_at_k(np.zeros((1, 5)), [0], 4) == 0.0  # ties never help


def test_auc_ranks_infinite_scores_and_refuses_nan():
    import numpy as np

    from outfitter.model.metrics import compatibility_auc

    labels = [1, 1, 0, 0]
    assert compatibility_auc(labels, [np.inf, 2.0, 1.0, -np.inf]) == 1.0
    assert compatibility_auc(labels, [np.inf, np.inf, np.inf, 0.0]) == 0.75  # ties count half
    with pytest.raises(ValueError, match="NaN"):
        compatibility_auc(labels, [np.nan, 2.0, 1.0, 0.0])
