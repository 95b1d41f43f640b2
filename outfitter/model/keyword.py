"""The keyword baseline of retrieval: TF-IDF over catalog titles (scikit-learn), outfit ignored.

What a user would use instead of the model to find "black leather ankle boots": every metric of
description-conditioned retrieval is reported beside it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class KeywordSearch:
    """Cosine similarity of TF-IDF vectors (unigrams, sublinear tf) of descriptions and titles."""

    BLOCKS_KEPT = 32  # transposed title blocks kept (an evaluation asks for each category's often)

    def __init__(self, titles: Sequence[str]):
        # imported here: a training run's validation leaves the baselines out (75 MB a worker)
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer = TfidfVectorizer(
            sublinear_tf=True, token_pattern=r"(?u)\b\w+\b", dtype=np.float32
        )
        self.matrix = self.vectorizer.fit_transform(list(titles))  # (M, V), rows L2-normalised
        self._blocks: dict[bytes | None, object] = {}  # rows asked for -> their titles (V, c)

    def encode(self, queries: Sequence[str]):
        """TF-IDF vectors (Q, V) of queries, sparse: `scores_of` takes rows of them."""
        return self.vectorizer.transform(list(queries))

    def scores(self, queries: Sequence[str], items=None) -> np.ndarray:
        """Scores (Q, M) of every title for each query; (Q, len(items)) of the titles at rows
        `items` when given."""
        return self.scores_of(self.encode(queries), items)

    def scores_of(self, encoded, items=None) -> np.ndarray:
        """`scores` of queries already `encode`d (Q, V)."""
        return (encoded @ self._titles(items)).toarray()  # float32: a 200k catalog's block is big

    def _titles(self, items):
        """The titles at rows `items` (all when None), transposed (V, c) in CSR: what a product
        with CSR queries takes as it is. Kept per block: slicing and transposing the whole
        catalog's matrix for every 20 queries was most of an evaluation's keyword search."""
        key = None if items is None else np.asarray(items, dtype=np.int64).tobytes()
        block = self._blocks.pop(key, None)
        if block is None:
            rows = self.matrix if items is None else self.matrix[np.asarray(items)]
            block = rows.T.tocsr()
            if len(self._blocks) >= self.BLOCKS_KEPT:
                self._blocks.pop(next(iter(self._blocks)))  # the least recently used
        self._blocks[key] = block  # most recently used last
        return block
