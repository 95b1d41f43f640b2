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
    out = torch.zeros(len(rows), max([1] + [len(r) for r in rows]), dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out
