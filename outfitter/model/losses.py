"""Training objectives: compatibility (BCE or focal), retrieval InfoNCE, weighted triplets."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def compatibility_loss(
    logits: torch.Tensor, labels: torch.Tensor, kind: str = "bce", gamma: float = 2.0
) -> torch.Tensor:
    """Binary loss of compatibility logits (B,) against labels (B,) in {0, 1}.

    `focal` down-weights easy outfits by (1 - p_t)^gamma (Lin et al. 2017).
    """
    labels = labels.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")  # (B,)
    if kind == "bce":
        return bce.mean()
    if kind == "focal":
        p_t = torch.exp(-bce)  # probability given to the true label
        return ((1 - p_t) ** gamma * bce).mean()
    raise ValueError(f"compatibility loss {kind!r}: must be bce or focal")


def retrieval_loss(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    positives: torch.Tensor,
    temperature: float,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE: each query (B, D) must pick its positive among candidate vectors (C, D).

    Args:
        positives: (B,) index of each query's positive in `candidates`.
        valid: optional (B, C) bool, False = not a candidate for that query (e.g. context items).
    """
    logits = queries @ candidates.T / temperature  # (B, C)
    if valid is not None:
        keep = valid.clone()
        keep[torch.arange(len(positives)), positives] = True
        logits = logits.masked_fill(~keep, float("-inf"))
    return F.cross_entropy(logits, positives)


def weighted_triplet_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    weight: torch.Tensor,
    margin: float,
) -> torch.Tensor:
    """Triplet ranking loss on cosine similarity with a margin scaled by the pair's weight.

    `max(0, margin * w - cos(a, p) + cos(a, n))` over (T, D) vectors and (T,) weights: a pair
    known to be more compatible (higher w, e.g. bought together vs also viewed) must be
    separated from the negative by a wider margin (Sun et al. 2020).
    """
    # fp32 whatever the autocast: CUDA autocast sums in fp32 but CPU autocast keeps bf16, and a
    # bf16 margin (8 mantissa bits) rounds away differences of similarities near 1.
    anchor, positive, negative = anchor.float(), positive.float(), negative.float()
    s_pos = (anchor * positive).sum(-1)  # (T,)
    s_neg = (anchor * negative).sum(-1)  # (T,)
    return F.relu(margin * weight - s_pos + s_neg).mean()
