"""Hashed words: the one definition of how a text becomes the word ids of the model's word bag.

A text is lower-cased and cut into runs of letters and digits; each word is hashed (CRC-32, the
same in every process, unlike Python's `hash`) into `buckets - 1` buckets, id 0 being padding.
Item texts and target descriptions go through this one function in training and in serving, so
"leather boots" typed by a user lands on the same ids as the catalog's "black leather boots".
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from functools import lru_cache
from itertools import chain

import numpy as np
import torch

_WORD = re.compile(r"[0-9a-z]+")
MAX_WORDS = 64  # words read per text (titles are short; long descriptions are cut)


def words(text: str) -> list[str]:
    """The words of `text`, lower-cased, in order."""
    return _WORD.findall(text.lower())


@lru_cache(maxsize=1 << 18)  # catalog texts repeat every batch and epoch
def _ids(text: str, buckets: int) -> tuple[int, ...]:
    return tuple(1 + zlib.crc32(w.encode()) % (buckets - 1) for w in words(text)[:MAX_WORDS])


def word_ids(texts: Sequence[str], buckets: int) -> torch.Tensor:
    """Word ids (N, L) of `texts`, zero-padded; L >= 1 even when every text is empty."""
    if buckets < 2:
        raise ValueError(f"buckets={buckets}: a word bag needs >= 2 buckets (0 is padding)")
    rows = [_ids(t, buckets) for t in texts]
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    out = np.zeros((len(rows), max(1, int(lengths.max(initial=0)))), dtype=np.int64)
    # every row's ids at once (a batch holds ~1,000 item texts: a tensor a row was 20 ms a step)
    out[np.arange(out.shape[1]) < lengths[:, None]] = np.fromiter(
        chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum())
    )
    return torch.from_numpy(out)
