"""The keyword baseline of retrieval: TF-IDF over catalog titles (scikit-learn), outfit ignored.

What a user would use instead of the model to find "black leather ankle boots": every metric of
description-conditioned retrieval is reported beside it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class KeywordSearch:
    """Cosine similarity of TF-IDF vectors (unigrams, sublinear tf) of descriptions and titles."""

    def __init__(self, titles: Sequence[str]):
        # imported here: a training run's validation leaves the baselines out (75 MB a worker)
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer = TfidfVectorizer(
            sublinear_tf=True, token_pattern=r"(?u)\b\w+\b", dtype=np.float32
        )
        self.matrix = self.vectorizer.fit_transform(list(titles))  # (M, V), rows L2-normalised

    def scores(self, queries: Sequence[str], items=None) -> np.ndarray:
        """Scores (Q, M) of every title for each query; (Q, len(items)) of the titles at rows
        `items` when given."""
        q = self.vectorizer.transform(list(queries))  # (Q, V)
        titles = self.matrix if items is None else self.matrix[np.asarray(items)]
        return (q @ titles.T).toarray()  # float32 throughout: a 200k catalog's block is big
