"""From an outfit and a description of the missing piece to a query and the items it searches.

The one rule that evaluation and serving share (a second copy would be train/serve skew):

- A target given with a category searches that category, and the target token reads it.
- A target given without one: a model with a category head (`target.infer_category`) infers it
  from the description. Where the inferred category's probability reaches
  `target.category_threshold`, the target token reads it and the search keeps to it; below, the
  token reads "unknown" and the whole catalog is searched. Older models without the head take the
  category whose prompt ("a photo of shoes") is nearest the description, and search everywhere.

The description decides *what* is retrieved (category, colour, material, style: the head and
the words the query reads); the outfit decides the order among the items that match.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from outfitter.data.types import CATEGORIES
from outfitter.model.inputs import UNKNOWN_CATEGORY


@dataclass(frozen=True)
class TargetPlan:
    """How each target (B,) is queried and searched."""

    category_input: list[int]  # what the target token reads (a category, or "unknown")
    search: list[int | None]  # the category searched; None = the whole catalog
    inferred: list[int | None]  # the category inferred for a target given without one
    confidence: list[float | None]  # the inferred category's probability (head models)


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def prompt_guess(builder, texts: Sequence[str]) -> list[int]:
    """The category whose prompt is nearest each text in CLIP text space (models without a head)."""
    prompts = builder.towers.encode_texts([builder.prompt(c) for c in range(len(CATEGORIES))])
    feats = builder.towers.encode_texts(list(texts))  # (T, Dt)
    return (feats @ prompts.T).argmax(1).tolist()


@torch.no_grad()
def plan_targets(
    model, builder, texts: Sequence[str], given: Sequence[int | None], target_text: dict
) -> TargetPlan:
    """The plan (see the module docstring) for targets with descriptions `texts`, categories
    `given` (None or a negative number = not given) and their encoded `target_text`."""
    given = [None if c is None or int(c) < 0 else int(c) for c in given]
    category_input = [0 if c is None else c for c in given]
    search, inferred = list(given), [None] * len(given)
    confidence: list[float | None] = [None] * len(given)
    missing = [i for i, c in enumerate(given) if c is None]
    cfg = model.cfg
    if not missing or cfg.kind != "hybrid":
        return TargetPlan(category_input, search, inferred, confidence)
    if getattr(model, "category_head", None) is not None:
        rows = torch.tensor(missing)
        sub = {k: v[rows].to(_device(model)) for k, v in target_text.items()}
        prob, cat = torch.softmax(model.category_logits(sub).float(), dim=-1).max(dim=-1)
        for j, i in enumerate(missing):
            inferred[i], confidence[i] = int(cat[j]), float(prob[j])
            sure = confidence[i] >= cfg.target.category_threshold
            category_input[i] = inferred[i] if sure else UNKNOWN_CATEGORY
            search[i] = inferred[i] if sure else None
    elif cfg.target.use_category:
        for i, c in zip(missing, prompt_guess(builder, [texts[i] for i in missing]), strict=True):
            category_input[i] = inferred[i] = int(c)
    return TargetPlan(category_input, search, inferred, confidence)


@torch.no_grad()
def query_vectors(
    model, builder, context_vecs: torch.Tensor, mask: torch.Tensor, texts: Sequence[str],
    given: Sequence[int | None], *, cache: bool = False,
) -> tuple[torch.Tensor, TargetPlan]:  # fmt: skip
    """L2-normalised queries (B, D) for contexts (B, N, D) + mask (B, N), and their plan.

    `cache`: keep each text's tower features in the builder (an evaluation asks for the same
    descriptions and category prompts many times; a server's requests do not repeat).
    """
    device = context_vecs.device
    target_text = builder.encode_texts(list(texts), cache=cache)
    plan = plan_targets(model, builder, texts, given, target_text)
    target_text = {k: v.to(device) for k, v in target_text.items()}
    category = torch.tensor(plan.category_input, dtype=torch.long, device=device)
    return model.query(context_vecs, mask, target_text or None, category), plan
