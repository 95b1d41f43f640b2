"""Evaluate a model on a split: compatibility AUC, FITB (both ways) and retrieval recall@k.

- `compatibility_auc`: ROC AUC of the compatibility logits over `compatibility_{split}.txt`.
- `fitb_accuracy`: the target-token query (built from the blank's category prompt: the answers'
  majority category, since the blank's own description is unknown) against the 4 candidates.
- `fitb_accuracy_compat`: the compatibility score of each completed outfit.
- `recall_at_10`: one item held out of each outfit (a fixed seeded choice), queried by its
  category prompt and ranked against every catalog item of its category (context items excluded).
- Description-conditioned retrieval, as a user asks for the held-out item (`retrieval_*`): its
  description is its own title (`title`) or its last word and one other (`short`, e.g. "leather
  boots"), with the category given (`*_cat`) or not, searched as `model.retrieval` plans it (the
  inferred category, or the whole catalog); `*_recall_at_10` of the held-out item and
  `*_in_category`, the share of the top 10 in its category. `keyword_*`: the same queries through
  a TF-IDF search over titles (`model.keyword`), which ignores the outfit.

Every retrieval query ranks what it searches (its category's items, or the whole catalog; scored
against those alone, `search_blocks`), so these metrics cost (queries x items): they use a seeded
sample of at most `MAX_RETRIEVAL_QUERIES` held-out items (`n_recall` says how many; a
recall near 0.5 is then known to about ±0.011). AUC and FITB always use the whole split.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import torch

from outfitter.data.types import Catalog, Split
from outfitter.model import metrics
from outfitter.model.keyword import KeywordSearch
from outfitter.model.retrieval import query_vectors

# Held-out items whose retrieval is measured, at most: at Polyvore size (200k items, ~15k test
# outfits) ranking all of them against the catalog nine ways took longer than the training.
MAX_RETRIEVAL_QUERIES = 2000


@torch.no_grad()
def encode_catalog(
    model,
    builder,
    ids: Sequence[str],
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Item vectors (M, D) of `ids`, float32 on the model's device, in eval mode.

    The one definition of encoding catalog items: evaluation, plots, the index and serving all
    read vectors made here (`platform.vectors` caches them per model version and catalog).

    Args:
        progress: called with the number of items of each encoded batch (a progress bar).
    """
    model.eval()
    device = next(model.parameters()).device
    if not len(ids):
        raise ValueError("no items to encode")
    out = None  # (M, D), filled batch by batch: no list of batches to concatenate (a 2nd copy)
    for i in range(0, len(ids), batch_size):
        chunk = list(ids[i : i + batch_size])
        inputs = {k: v.to(device) for k, v in builder.item_inputs(chunk).items()}
        vecs = model.encode_items(inputs).float()  # (b, D)
        if out is None:
            out = torch.empty((len(ids), vecs.shape[1]), dtype=torch.float32, device=vecs.device)
        out[i : i + len(chunk)] = vecs
        if progress is not None:
            progress(len(chunk))
    return out


def vectors_or_encode(model, builder, ids: Sequence[str], vecs) -> torch.Tensor:
    """`vecs` (the catalog's item vectors, computed once elsewhere) on the model's device, else
    the catalog encoded now."""
    if vecs is None:
        return encode_catalog(model, builder, ids)
    vecs = torch.as_tensor(vecs, dtype=torch.float32)
    if vecs.ndim != 2 or len(vecs) != len(ids):
        raise ValueError(f"item vectors {tuple(vecs.shape)} for a catalog of {len(ids)} items")
    return vecs.to(next(model.parameters()).device)


def _pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(r) for r in rows)
    items = torch.zeros(len(rows), n, dtype=torch.long)
    mask = torch.zeros(len(rows), n, dtype=torch.bool)
    for b, r in enumerate(rows):
        items[b, : len(r)] = torch.tensor(r)
        mask[b, : len(r)] = True
    return items, mask  # (B, N)


@torch.no_grad()
def outfit_logits(model, vecs, outfits: list[list[int]], batch_size: int) -> np.ndarray:
    """Compatibility logits (B,) of outfits given as rows of the item vectors `vecs` (M, D): the
    one definition of scoring outfits for evaluation, pair metrics, plots and the pyfunc model."""
    scores = []
    for i in range(0, len(outfits), batch_size):
        items, mask = _pad(outfits[i : i + batch_size])
        mask = mask.to(vecs.device)
        scores.append(model.compatibility_logits(vecs[items.to(vecs.device)], mask).float().cpu())
    return torch.cat(scores).numpy() if scores else np.zeros(0)


@torch.no_grad()
def _queries(model, builder, vecs, contexts, categories, batch_size, texts=None):
    """Query vectors (Q, D) for outfit contexts and descriptions `texts` (default: the category
    prompts of `categories`), and the categories searched (Q,) (None = whole catalog)."""
    if texts is None:
        texts = [builder.prompt(int(c)) for c in categories]
    out, search = [], []
    for i in range(0, len(contexts), batch_size):
        items, mask = _pad(contexts[i : i + batch_size])
        q, plan = query_vectors(
            model, builder, vecs[items.to(vecs.device)], mask.to(vecs.device),
            texts[i : i + batch_size], categories[i : i + batch_size], cache=True,
        )  # fmt: skip
        out.append(q)
        search.extend(plan.search)
    return torch.cat(out), search


def short_description(title: str, rng: np.random.Generator) -> str:
    """A title as a user shortens it: its last word (a product title's noun) and one other."""
    words = title.split()
    if len(words) <= 2:
        return title
    return f"{words[int(rng.integers(len(words) - 1))]} {words[-1]}"


def holdouts(split: Split, seed: int, limit: int | None = None) -> list[tuple[list[str], str]]:
    """(context, held-out item) of each outfit of 2+ items, the item a seeded choice; `limit`:
    a seeded sample of at most that many (in split order), the same for the same split."""
    rng = np.random.default_rng(seed)
    out = []
    for outfit in split.outfits:
        if len(outfit.item_ids) >= 2:
            k = int(rng.integers(len(outfit.item_ids)))
            context = [i for j, i in enumerate(outfit.item_ids) if j != k]
            out.append((context, outfit.item_ids[k]))
    if limit is not None and len(out) > limit:
        keep = np.random.default_rng([seed, 1]).choice(len(out), size=limit, replace=False)
        out = [out[i] for i in sorted(keep)]
    return out


def evaluate(
    model,
    builder,
    split: Split,
    catalog: Catalog,
    *,
    batch_size: int = 64,
    recall_k: int = 10,
    seed: int = 0,
    vecs=None,
    baselines: bool = True,
    max_queries: int | None = MAX_RETRIEVAL_QUERIES,
) -> dict:
    """Metrics of `model` on `split` (see the module docstring); NaN where a task is absent.

    `vecs`: the catalog's item vectors (M, D) in `catalog.item_ids` order, when already computed.
    `baselines=False` leaves out the `keyword_*` metrics: they do not depend on the model (the
    per-epoch validation of training skips them; at 200k items they were half its time).
    `max_queries`: held-out items in the retrieval metrics at most (None: all).
    """
    model.eval()
    ids = catalog.item_ids
    row = {item_id: r for r, item_id in enumerate(ids)}
    vecs = vectors_or_encode(model, builder, ids, vecs)  # (M, D)
    result: dict = {"n_compat": len(split.compatibility), "n_fitb": len(split.fitb)}

    result["compatibility_auc"] = float("nan")
    if split.compatibility:
        outfits = [[row[i] for i in q.item_ids] for q in split.compatibility]
        scores = outfit_logits(model, vecs, outfits, batch_size)
        labels = [q.label for q in split.compatibility]
        if len(set(labels)) == 2:
            result["compatibility_auc"] = metrics.compatibility_auc(labels, scores)

    result["fitb_accuracy"] = result["fitb_accuracy_compat"] = float("nan")
    if split.fitb:
        questions = [[row[i] for i in q.question] for q in split.fitb]
        answers = torch.tensor([[row[i] for i in q.answers] for q in split.fitb])  # (Q, C)
        correct = [q.correct for q in split.fitb]
        completed = [
            qs + [a] for qs, ans in zip(questions, answers.tolist(), strict=True) for a in ans
        ]
        compat = outfit_logits(model, vecs, completed, batch_size).reshape(answers.shape)
        result["fitb_accuracy_compat"] = metrics.fitb_accuracy(compat, correct)
        cats = [
            Counter(catalog.items[i].category_index for i in q.answers).most_common(1)[0][0]
            for q in split.fitb
        ]
        query, _ = _queries(model, builder, vecs, questions, cats, batch_size)  # (Q, D)
        by_query = torch.einsum("qd,qcd->qc", query, vecs[answers.to(vecs.device)])
        result["fitb_accuracy"] = metrics.fitb_accuracy(by_query.float().cpu().numpy(), correct)

    held = holdouts(split, seed, max_queries)
    result["n_recall"] = len(held)
    result[f"recall_at_{recall_k}"] = float("nan")
    if held:
        item_cat = np.array([catalog.items[i].category_index for i in ids])
        contexts = [[row[i] for i in c] for c, _ in held]
        targets = np.array([row[t] for _, t in held])
        cats = [int(item_cat[t]) for t in targets]
        query, _ = _queries(model, builder, vecs, contexts, cats, batch_size)  # (Q, D)
        hits = 0.0
        for rows, block, valid, target_col in search_blocks(cats, targets, contexts, item_cat):
            scores = (query[rows] @ vecs[block].T).float().cpu().numpy()  # (q, c)
            hits += metrics.recall_at_k(scores, target_col, recall_k, valid) * len(rows)
        result[f"recall_at_{recall_k}"] = hits / len(held)
        result.update(
            description_retrieval(
                model, builder, catalog, vecs, held, batch_size, recall_k, seed, baselines
            )
        )
    return result


def search_blocks(searched, targets, contexts, item_cat, budget: int = 2**22):
    """Retrieval queries grouped by what they search, each group scored against its search only.

    A search is a category (int) or the whole catalog (None); at Polyvore size a category is a
    tenth of the catalog, so scoring a query against its category's items alone is ~10x less
    work than scoring it against every item and masking the rest.

    Args:
        searched: (Q,) each query's search. targets: (Q,) each query's wanted item (catalog row).
        contexts: (Q,) each query's outfit (catalog rows), never a candidate.
        item_cat: (M,) each catalog item's category.
        budget: scores a block holds at most (rows x columns): 16 MB of float32 (a 200k-item
            evaluation peaked 120 MB higher at 4x that, no faster).

    Yields (rows, block, valid, target_col): query indices (q,), catalog rows of the block's
    columns (c,), valid (q, c) (False: the query's own outfit items, and targets outside the
    search, appended as columns no query may return, which is how a full search misses them),
    and each query's target column (q,).
    """
    targets, n_items = np.asarray(targets), len(item_cat)
    groups: dict = {}
    for q, s in enumerate(searched):
        groups.setdefault(None if s is None else int(s), []).append(q)
    col = np.full(n_items, -1)  # catalog row -> column in the current block
    for s, rows in groups.items():
        rows = np.asarray(rows)
        inside = np.arange(n_items) if s is None else np.flatnonzero(item_cat == s)
        block = np.concatenate([inside, np.setdiff1d(targets[rows], inside)])
        col[block] = np.arange(len(block))
        step = max(1, budget // len(block))
        for i in range(0, len(rows), step):
            chunk = rows[i : i + step]
            valid = np.ones((len(chunk), len(block)), dtype=bool)
            valid[:, len(inside) :] = False
            for j, q in enumerate(chunk):
                outfit = col[np.asarray(contexts[q], dtype=np.int64)]
                valid[j, outfit[outfit >= 0]] = False
            yield chunk, block, valid, col[targets[chunk]]
        col[block] = -1


class Descriptions:
    """The description-conditioned queries of held-out (context, item): each item's title and a
    short description of it (`short_description`), each asked without and with the category.

    Shared by the model's `retrieval_*` and the keyword baseline's `keyword_*` metrics, so both
    answer the same queries (the keyword baseline needs the catalog only, not the model).
    """

    def __init__(self, catalog: Catalog, held, seed: int = 0):
        ids = catalog.item_ids
        row = {item_id: r for r, item_id in enumerate(ids)}
        self.item_cat = np.array([catalog.items[i].category_index for i in ids])  # (M,)
        titles = [catalog.items[t].title for _, t in held]
        rng = np.random.default_rng(seed)
        self.texts = {"title": titles, "short": [short_description(t, rng) for t in titles]}
        self.contexts = [[row[i] for i in c] for c, _ in held]  # (Q,) catalog rows
        self.targets = np.array([row[t] for _, t in held], dtype=np.int64)  # (Q,)
        self.target_cat = self.item_cat[self.targets]  # (Q,)

    def variants(self):
        """(metric key, texts, given category or None per query) of every way a query is asked."""
        for name, texts in self.texts.items():
            yield name, texts, [None] * len(texts)
            yield f"{name}_cat", texts, [int(c) for c in self.target_cat]

    def ranked(self, score, searched, k: int) -> tuple[float, float]:
        """Summed recall@k and in-category share over the queries, each query searching
        `searched` (its category, or None: the whole catalog) and scored by `score(rows, block)`."""
        hits = share = 0.0
        for rows, block, valid, target_col in search_blocks(
            searched, self.targets, self.contexts, self.item_cat
        ):
            recall, in_category = metrics.ranked_retrieval(
                score(rows, block), target_col, k, valid, self.target_cat[rows],
                self.item_cat[block],
            )  # fmt: skip
            hits, share = hits + recall * len(rows), share + in_category * len(rows)
        return hits, share


@torch.no_grad()
def description_retrieval(
    model, builder, catalog: Catalog, vecs, held, batch_size: int = 64, k: int = 10,
    seed: int = 0, baselines: bool = True,
) -> dict[str, float]:  # fmt: skip
    """`retrieval_*` and (`baselines`) `keyword_*` metrics (module docstring) of held-out
    (context, item). The model searches as it plans (inferred category or whole catalog)."""
    asked = Descriptions(catalog, held, seed)
    sums: dict[str, float] = {}  # metric -> sum over queries
    for key, texts, given in asked.variants():
        query, search = _queries(model, builder, vecs, asked.contexts, given, batch_size, texts)

        def by_model(rows, block, query=query):
            return (query[rows] @ vecs[block].T).float().cpu().numpy()

        hits, share = asked.ranked(by_model, search, k)
        sums[f"retrieval_{key}_recall_at_{k}"] = hits
        sums[f"retrieval_{key}_in_category"] = share
    result = {metric: total / len(held) for metric, total in sums.items()}
    if baselines:
        result.update(keyword_retrieval(catalog, asked, k))
    return result


def keyword_retrieval(catalog: Catalog, asked: Descriptions, k: int = 10) -> dict[str, float]:
    """`keyword_*` metrics of the queries `asked`, the model's, through a TF-IDF search over the
    catalog's titles, in the given category or the whole catalog (no model)."""
    keyword = KeywordSearch([catalog.items[i].title for i in catalog.item_ids])
    sums: dict[str, float] = {}
    for key, texts, given in asked.variants():
        encoded = keyword.encode(texts)  # (Q, V)

        def by_keyword(rows, block, encoded=encoded):
            return keyword.scores_of(encoded[rows], block)

        hits, share = asked.ranked(by_keyword, given, k)
        sums[f"keyword_{key}_recall_at_{k}"] = hits
        sums[f"keyword_{key}_in_category"] = share
    return {metric: total / len(asked.targets) for metric, total in sums.items()}
