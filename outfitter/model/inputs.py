"""InputBuilder: turns id-level batches (item ids + positions) into the tensors a model reads.

The data layer's collates produce batches of item *ids*; what an item becomes depends on the
model: cached CLIP features (`image_feat`/`text_feat`, the fast path), or pixels and tokens for
models with fine-tuned towers and for the Sun et al. baseline. The builder also makes the target
text of retrieval (the wanted item's title, or its category prompt with probability
`target.prompt_prob` during training) and samples same-category negatives for InfoNCE.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from outfitter.data.types import CATEGORIES, Catalog, item_text
from outfitter.model.config import ModelConfig
from outfitter.model.preprocess import normalise, squash_pixels
from outfitter.model.words import word_ids

UNKNOWN_CATEGORY = len(CATEGORIES)  # the target token's category input when none is known
TEXT_CACHE_MAX = 200_000  # training texts whose frozen features are kept


class InputBuilder:
    """Adds `inputs`, `target_text` (and retrieval `negatives`) to id-level batches.

    Args:
        features: cached tower features; computed here (once) when the model needs them and
            none are given.
        towers: CLIP towers for text prompts, titles and new items; created from `cfg.clip` on
            first use when not given.
        vocab: the Sun et al. baseline's word vocabulary (`model.vocab`).
        device: where towers created here run (the worker's device; `for_model`: the model's).
    """

    def __init__(
        self,
        cfg: ModelConfig,
        catalog: Catalog,
        features=None,
        towers=None,
        *,
        vocab=None,
        seed: int = 0,
        device=None,
    ):
        if cfg.kind == "sun2020" and vocab is None:
            raise ValueError(
                "a sun2020 model needs its vocabulary: InputBuilder(..., vocab=model.vocab)"
            )
        self.cfg, self.catalog, self.vocab = cfg, catalog, vocab
        self._features, self._towers = features, towers
        self.device = torch.device(device or "cpu")
        self.rng = np.random.default_rng(seed)
        self._text_feats: dict[str, np.ndarray] = {}
        self._pixels: dict[str, torch.Tensor] = {}
        self.set_negative_pool(catalog.item_ids)

    @classmethod
    def for_model(cls, model, catalog: Catalog, features=None, towers=None, seed: int = 0):
        """A builder for a built model (takes its config, vocabulary and fine-tuned towers); frozen
        towers it creates live on the model's device, so GPU workers encode texts on the GPU."""
        towers = towers if towers is not None else getattr(model, "towers", None)
        vocab = getattr(model, "vocab", None)
        device = next((p.device for p in model.parameters()), None)
        return cls(model.cfg, catalog, features, towers, vocab=vocab, seed=seed, device=device)

    # ------------------------------------------------------------ resources

    @property
    def towers(self):
        if self._towers is None:
            from outfitter.model.towers import create_towers

            self._towers = create_towers(self.cfg.clip, device=self.device)
        return self._towers

    @property
    def features(self):
        """The feature table (computed with the frozen towers on first use when not given)."""
        if self._features is None:
            from outfitter.model.towers import compute_features

            self._features = compute_features(self.towers, self.catalog)
        return self._features

    def set_negative_pool(self, ids: Sequence[str]) -> None:
        """Items that retrieval negatives are drawn from (e.g. the train split's items)."""
        by_cat: dict[int, list[str]] = {}
        for i in ids:
            by_cat.setdefault(self.catalog.items[i].category_index, []).append(i)
        self._pool = {c: np.array(v) for c, v in by_cat.items()}

    def prompt(self, category: int | str) -> str:
        name = CATEGORIES[category] if isinstance(category, (int, np.integer)) else category
        return self.cfg.target.prompt_template.format(category=name)

    # ------------------------------------------------------------ items

    def item_inputs(self, ids: Sequence[str]) -> dict[str, torch.Tensor]:
        """Per-item model inputs for `ids` (U items)."""
        ids = list(ids)
        if self.cfg.kind == "sun2020":
            return {"pixels": self._sun_pixels(ids), "tokens": self._sun_tokens(ids)}
        clip, out = self.cfg.clip, {}
        rows = self.features.rows(ids) if clip.freeze_image or clip.freeze_text else None
        if clip.freeze_image:  # frozen tower: its cached features (the fast path)
            out["image_feat"] = torch.from_numpy(np.asarray(self.features.image[rows]))  # (U, Di)
        else:
            paths = [self.catalog.image_path(i) for i in ids]
            out["pixels"] = self.towers.load_pixels(paths)  # (U, 3, H, W)
        if clip.freeze_text:
            out["text_feat"] = torch.from_numpy(np.asarray(self.features.text[rows]))  # (U, Dt)
        else:
            out["tokens"] = self.towers.tokenize([self.catalog.items[i].text for i in ids])
        if self.cfg.words.buckets and "text" in self.cfg.item.modalities:
            items = [self.catalog.items[i] for i in ids]
            out["words"] = self._item_words([(it.title, it.description) for it in items])
        return out

    def _item_words(self, items: list[tuple[str, str]]) -> torch.Tensor:
        """Word ids (U, L) of items (title, description): the title's, or the full text's."""
        texts = [
            title if self.cfg.words.source == "title" else item_text(title, description)
            for title, description in items
        ]
        return word_ids(texts, self.cfg.words.buckets)

    def _sun_pixels(self, ids: list[str]) -> torch.Tensor:
        from outfitter.data.images import load_image

        size = self.cfg.sun2020.image_size
        out = []
        for i in ids:
            if i not in self._pixels:  # decoded once, kept as uint8 (3 * size^2 bytes)
                self._pixels[i] = squash_pixels(load_image(self.catalog.image_path(i)), size)
            out.append(self._pixels[i])
        return normalise(torch.stack(out))  # (U, 3, H, W)

    def _sun_tokens(self, ids: list[str], texts: list[str] | None = None) -> torch.Tensor:
        texts = texts if texts is not None else [self.catalog.items[i].title for i in ids]
        encoded = [self.vocab.encode(t, self.cfg.sun2020.max_words) for t in texts]
        tokens = torch.zeros(len(encoded), max(len(e) for e in encoded), dtype=torch.long)
        for row, e in enumerate(encoded):
            tokens[row, : len(e)] = torch.tensor(e)
        return tokens  # (U, L), 0 = padding

    # ------------------------------------------------------------ target texts

    def encode_texts(self, texts: Sequence[str], *, cache: bool = False) -> dict[str, torch.Tensor]:
        """Target-text inputs for free texts: `text_feat` (frozen text tower) or `tokens`, and
        `words` (the word bag's ids) for models with one. `cache`: keep each text's features
        (training texts repeat every epoch; a server's requests do not)."""
        if self.cfg.kind == "sun2020" or not self.cfg.target.use_text:
            return {}
        texts = list(texts)
        out = {}
        if not self.cfg.clip.freeze_text:
            out["tokens"] = self.towers.tokenize(texts)
        elif cache:
            out["text_feat"] = torch.from_numpy(np.ascontiguousarray(self._text_features(texts)))
        else:
            out["text_feat"] = torch.from_numpy(self.towers.encode_texts(texts))
        if self.cfg.words.buckets:
            out["words"] = word_ids(texts, self.cfg.words.buckets)
        return out

    def _text_features(self, texts: list[str]) -> np.ndarray:
        """Frozen text-tower features (T, Dt) of training texts, each string encoded once."""
        new = sorted({t for t in texts if t not in self._text_feats})
        if new:
            if len(self._text_feats) + len(new) > TEXT_CACHE_MAX:  # word subsets are many
                self._text_feats.clear()
            feats = self.towers.encode_texts(new)
            self._text_feats.update(zip(new, feats, strict=True))
        return np.stack([self._text_feats[t] for t in texts])

    def _description(self, item_id: str) -> str:
        item = self.catalog.items[item_id]
        return item.title if self.cfg.target.source == "title" else item.text

    def _subset(self, text: str) -> str:
        """A description as people shorten it: the last word (the noun of a product title) and a
        random subset of the others, in order."""
        words = text.split()
        if len(words) <= 1:
            return text
        keep = self.rng.random(len(words) - 1) < 0.5
        return " ".join([w for w, k in zip(words[:-1], keep, strict=True) if k] + words[-1:])

    def target_texts(self, target_ids, categories, use_prompt, subset=None) -> list[str]:
        """The description of each target (B,): its category prompt where `use_prompt`, else its
        title (or full text, `target.source`), cut to a word subset where `subset`."""
        texts = []
        for row, cat in enumerate(categories):
            if use_prompt[row]:
                texts.append(self.prompt(int(cat)))
            else:
                text = self._description(target_ids[row])
                texts.append(self._subset(text) if subset is not None and subset[row] else text)
        return texts

    def target_text(self, target_ids: Sequence[str] | None, categories, use_prompt,
                    subset=None) -> dict:  # fmt: skip
        """Target-text inputs (B, ...): the target's description, or the category prompt where
        `use_prompt` (B,) is True (always when `target_ids` is None)."""
        if self.cfg.kind == "sun2020" or not self.cfg.target.use_text:
            return {}
        categories = [int(c) for c in categories]
        use_prompt = (
            np.ones(len(categories), bool) if target_ids is None else np.asarray(use_prompt)
        )
        texts = self.target_texts(target_ids, categories, use_prompt, subset)
        return self.encode_texts(texts, cache=True)

    # ------------------------------------------------------------ batches

    def compatibility(self, batch: dict) -> dict:
        return {**batch, "inputs": self.item_inputs(batch["ids"])}

    def retrieval(self, batch: dict, *, train: bool = True, prompt: bool | None = None) -> dict:
        """Adds negatives, inputs and the target text to a retrieval batch.

        Args:
            train: sample same-category negatives and mix titles/prompts (`target.prompt_prob`).
            prompt: force the category prompt (True) or the description (False) as target text.
        """
        ids = list(batch["ids"])
        targets = [ids[t] for t in batch["target"].tolist()]
        cats = batch["target_category"].tolist()
        out = dict(batch)
        k = self.cfg.loss.category_negatives if train else 0
        if k > 0:
            position = {i: p for p, i in enumerate(ids)}
            negatives = torch.zeros(len(targets), k, dtype=torch.long)
            for row, (target, cat) in enumerate(zip(targets, cats, strict=True)):
                pool = self._pool.get(cat, np.array([target]))
                for col, neg in enumerate(self.rng.choice(pool, size=k)):
                    neg = str(neg)
                    if neg not in position:
                        position[neg] = len(ids)
                        ids.append(neg)
                    negatives[row, col] = position[neg]
            out["ids"], out["negatives"] = ids, negatives  # (B, K) positions in ids
        tg = self.cfg.target
        if prompt is None:
            use_prompt = self.rng.random(len(targets)) < (tg.prompt_prob if train else 0.0)
        else:
            use_prompt = np.full(len(targets), bool(prompt))
        subset = self.rng.random(len(targets)) < (tg.subset_prob if train else 0.0)
        out["inputs"] = self.item_inputs(ids)
        out["target_text"] = self.target_text(targets, cats, use_prompt, subset)
        if tg.infer_category:  # the category input, hidden for some targets (taught "unknown")
            hide = self.rng.random(len(targets)) < (tg.category_drop if train else 0.0)
            out["query_category"] = torch.where(
                torch.from_numpy(hide), UNKNOWN_CATEGORY, batch["target_category"]
            )
        return out

    def __call__(self, batches: dict[str, dict], *, train: bool = True) -> dict[str, dict]:
        """Build a task batch `{"compatibility": ..., "retrieval": ..., "triplets": ...}`."""
        out = {}
        for name, batch in batches.items():
            if name == "retrieval":
                out[name] = self.retrieval(batch, train=train)
            else:
                out[name] = self.compatibility(batch)
        return out

    # ------------------------------------------------------------ new items

    def encode_new_item(self, title: str, description: str = "", image=None) -> dict:
        """Inputs (U=1) of an item that is not in the catalog; `image`: PIL image or path."""
        from PIL import Image

        from outfitter.data.images import load_image

        if image is not None and not isinstance(image, Image.Image):
            image = load_image(Path(image))
        text = item_text(title, description)
        if self.cfg.kind == "sun2020":
            if image is None:
                raise ValueError("the sun2020 model needs an image for every item")
            pixels = normalise(squash_pixels(image, self.cfg.sun2020.image_size)[None])
            return {"pixels": pixels, "tokens": self._sun_tokens([], [title])}  # U = 1
        needs_image = "image" in self.cfg.item.modalities
        if needs_image and image is None:
            raise ValueError(f"model {self.cfg.name!r} reads item images; pass an image")
        towers, clip, out = self.towers, self.cfg.clip, {}
        pixels = towers.pixels(image)[None] if image is not None else None  # (1, 3, H, W)
        with torch.no_grad():
            if pixels is not None:
                out["image_feat" if clip.freeze_image else "pixels"] = (
                    towers.encode_pixels(pixels).float().cpu() if clip.freeze_image else pixels
                )
            if clip.freeze_text:
                out["text_feat"] = torch.from_numpy(towers.encode_texts([text]))
            else:
                out["tokens"] = towers.tokenize([text])
        if self.cfg.words.buckets and "text" in self.cfg.item.modalities:
            out["words"] = self._item_words([(title, description)])  # (1, L)
        return out
