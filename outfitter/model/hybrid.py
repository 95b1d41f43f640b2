"""The hybrid multimodal model (Kalashi & Teimourpour): CLIP item features + an outfit transformer.

An item is its CLIP image and text features fused into one L2-normalised vector (`ItemEncoder`).
A transformer encoder reads an outfit's item vectors with two learned special inputs in front:
the outfit token, whose output gives the compatibility logit, and the target item token (built
from the CLIP text embedding of the wanted item's description and/or its category), whose
output is a query vector in the item space: complementary items are retrieved by inner product.
No positional embedding: an outfit is a set.

With `words.buckets > 0` a learned bag of hashed words (`model/words.py`) reads the item texts and
the target descriptions too: frozen CLIP text features of a tiny tower tell "boots" from "sneakers"
only weakly, and the description must decide *what* is retrieved. With `target.infer_category` a
head infers the category of a description (`category_logits`), and the category input of the
target token has one more row, "unknown", for targets given without one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from outfitter.data.types import CATEGORIES
from outfitter.model.config import ModelConfig


def _mlp(d_in: int, hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(d_in),
        nn.Linear(d_in, hidden),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, d_out),
    )


class WordBag(nn.Module):
    """Sum of learned embeddings of hashed word ids (`model.words.word_ids`) over sqrt(count).

    Random unit-scale embeddings, so from the first step two texts' bags meet by the words they
    share (the same words: inner product ~1; unrelated words: ~0), as a keyword search does;
    training then learns which words count. 0 = padding.
    """

    def __init__(self, buckets: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(buckets, dim, padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=dim**-0.5)
        with torch.no_grad():
            self.embedding.weight[0].zero_()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        emb = self.embedding(ids)  # (N, L, W)
        count = (ids != 0).sum(dim=1, keepdim=True).clamp(min=1)  # (N, 1)
        return emb.sum(dim=1) / count.to(emb.dtype).sqrt()  # (N, W)


def _lexical(d_in: int, d_out: int, scale: float = 2.0) -> nn.Linear:
    """The word bag into the item/query space: `scale` x identity at first (an exact match
    dominates the inner product of a new model), trained from there."""
    layer = nn.Linear(d_in, d_out, bias=False)
    with torch.no_grad():
        layer.weight.zero_()
        n = min(d_in, d_out)
        layer.weight[:n, :n] = scale * torch.eye(n)
    return layer


class ItemEncoder(nn.Module):
    """Fuses CLIP image and text features of items into item vectors (concat | sum | gated)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        item, d_in = cfg.item, cfg.clip.embed_dim
        self.modalities = tuple(m for m in ("image", "text") if m in item.modalities)
        self.fusion = item.fusion if len(self.modalities) == 2 else "concat"
        # CLIP features of one catalog share a large common direction (cosine ~0.97 between
        # items for random-init towers): standardise each feature with running batch statistics.
        self.standardize = nn.ModuleDict({m: nn.BatchNorm1d(d_in) for m in self.modalities})
        if self.fusion == "concat":
            self.proj = _mlp(d_in * len(self.modalities), item.hidden, item.dim, item.dropout)
        else:
            self.proj = nn.ModuleDict(
                {m: _mlp(d_in, item.hidden, item.dim, item.dropout) for m in self.modalities}
            )
        if self.fusion == "gated":
            self.gate = nn.Linear(2 * d_in, item.dim)
        self.uses_words = cfg.words.buckets > 0 and "text" in self.modalities
        if self.uses_words:  # the item text's word bag, added to the fused vector
            self.words_proj = _lexical(cfg.words.dim, item.dim)

    def forward(
        self,
        image_feat: torch.Tensor | None,
        text_feat: torch.Tensor | None,
        words_feat: torch.Tensor | None = None,
    ):
        """Item vectors (U, D), L2-normalised, from features (U, Di), (U, Dt) and the word bag
        of the item texts (U, W)."""
        feats = {"image": image_feat, "text": text_feat}
        for m in self.modalities:
            if feats[m] is None:
                raise ValueError(f"the item encoder uses {m} features but the inputs have none")
            feats[m] = self.standardize[m](feats[m])
        image_feat, text_feat = feats["image"], feats["text"]
        if self.fusion == "concat":
            x = self.proj(torch.cat([feats[m] for m in self.modalities], dim=-1))  # (U, D)
        elif self.fusion == "sum":
            x = self.proj["image"](image_feat) + self.proj["text"](text_feat)  # (U, D)
        else:
            g = torch.sigmoid(self.gate(torch.cat([image_feat, text_feat], dim=-1)))  # (U, D)
            x = g * self.proj["image"](image_feat) + (1 - g) * self.proj["text"](text_feat)
        if self.uses_words:
            if words_feat is None:
                raise ValueError("the item encoder reads the items' words but the inputs have none")
            x = x + self.words_proj(words_feat)  # (U, D)
        return F.normalize(x, dim=-1)


class HybridModel(nn.Module):
    """Item encoder + outfit transformer with an outfit token and a target item token.

    With both towers frozen (`input_kind == "features"`) the model reads cached CLIP features;
    otherwise it holds the open_clip model (`self.clip`) and reads pixels and/or tokens for the
    fine-tuned tower (cached features still serve a frozen one).
    """

    def __init__(self, cfg: ModelConfig, towers=None):
        super().__init__()
        self.cfg = cfg
        self.input_kind = cfg.input_kind
        dim, tr, tg = cfg.item.dim, cfg.transformer, cfg.target
        self.clip = None
        if self.input_kind == "raw":
            if towers is None:
                raise ValueError("a model with fine-tuned towers needs `towers` (create_towers)")
            from outfitter.model.towers import set_trainable

            set_trainable(towers, cfg.clip)
            self.clip = towers.model
        self.item_encoder = ItemEncoder(cfg)
        self.outfit_token = nn.Parameter(torch.randn(dim) * 0.02)
        self.target_token = nn.Parameter(torch.randn(dim) * 0.02)
        self.target_text = nn.Linear(cfg.clip.embed_dim, dim) if tg.use_text else None
        uses_words = self.item_encoder.uses_words or tg.use_text
        self.word_bag = WordBag(cfg.words.buckets, cfg.words.dim) if cfg.words.buckets and (
            uses_words) else None  # fmt: skip
        use_words = self.word_bag is not None and tg.use_text
        self.target_words = nn.Linear(cfg.words.dim, dim) if use_words else None
        self.query_words = _lexical(cfg.words.dim, dim) if use_words else None
        n_cat = len(CATEGORIES) + (1 if tg.infer_category else 0)  # + "unknown"
        self.category = nn.Embedding(n_cat, dim) if tg.use_category else None
        self.category_head = None
        if tg.infer_category:  # the category of a description, from its CLIP text + words
            d_in = cfg.clip.embed_dim + (cfg.words.dim if use_words else 0)
            self.category_head = _mlp(d_in, cfg.item.hidden, len(CATEGORIES), cfg.item.dropout)
        layer = nn.TransformerEncoderLayer(
            dim, tr.heads, tr.ff_dim, tr.dropout, activation="gelu", batch_first=True,
            norm_first=True,
        )  # fmt: skip
        self.encoder = nn.TransformerEncoder(layer, tr.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.compat_head = nn.Linear(dim, 1)
        self.query_head = nn.Linear(dim, dim)

    # ------------------------------------------------------------ items

    def _clip_text(self, tokens: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.clip.freeze_text):
            return self.clip.encode_text(tokens, normalize=True)  # (U, Dt)

    def _clip_image(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.clip.freeze_image):
            return self.clip.encode_image(pixels, normalize=True)  # (U, Di)

    def encode_items(self, inputs: dict) -> torch.Tensor:
        """L2-normalised item vectors (U, D) from `image_feat`/`text_feat` or `pixels`/`tokens`."""
        image, text = inputs.get("image_feat"), inputs.get("text_feat")
        if image is None and "pixels" in inputs:
            image = self._clip_image(inputs["pixels"])
        if text is None and "tokens" in inputs:
            text = self._clip_text(inputs["tokens"])
        words = None
        if self.item_encoder.uses_words:
            if "words" not in inputs:
                raise ValueError("this model reads the items' words; the inputs have no `words`")
            words = self.word_bag(inputs["words"])  # (U, W)
        return self.item_encoder(image, text, words)

    # ------------------------------------------------------------ outfits

    def _check_items(self, item_vecs: torch.Tensor, mask: torch.Tensor) -> None:
        n, max_items = item_vecs.shape[1], self.cfg.transformer.max_items
        if n > max_items:
            raise ValueError(f"outfit has {n} items; the model takes 1..{max_items}")

    def _encode(self, special: torch.Tensor, item_vecs: torch.Tensor, mask: torch.Tensor):
        """Transformer outputs (B, S, D) of the S special tokens in front of the items."""
        self._check_items(item_vecs, mask)
        b, s = special.shape[:2]
        x = torch.cat([special, item_vecs], dim=1)  # (B, S+N, D)
        keep = torch.cat([mask.new_ones(b, s), mask.bool()], dim=1)  # (B, S+N)
        h = self.encoder(x, src_key_padding_mask=~keep)  # (B, S+N, D)
        return self.norm(h[:, :s])  # (B, S, D)

    def compatibility_logits(self, item_vecs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Compatibility logit (B,) of outfits (B, N, D) with padding mask (B, N), True = item."""
        token = self.outfit_token.expand(item_vecs.shape[0], 1, -1)  # (B, 1, D)
        return self.compat_head(self._encode(token, item_vecs, mask)[:, 0]).squeeze(-1)  # (B,)

    def _description(self, target_text: dict | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """CLIP text features (B, Dt) and word bag (B, W) of target descriptions."""
        if not target_text:
            raise ValueError("this model's target token reads text; pass target_text")
        feat = target_text.get("text_feat")
        if feat is None:
            feat = self._clip_text(target_text["tokens"])  # (B, Dt)
        words = None
        if self.target_words is not None:
            if "words" not in target_text:
                raise ValueError("this model reads the description's words; pass target_text words")
            words = self.word_bag(target_text["words"])  # (B, W)
        return feat, words

    def category_logits(self, target_text: dict) -> torch.Tensor:
        """Logits (B, C) of the category a description names (`target.infer_category` models)."""
        if self.category_head is None:
            raise ValueError(
                f"model {self.cfg.name!r} has no category head (target.infer_category)"
            )
        feat, words = self._description(target_text)
        x = feat if words is None else torch.cat([feat, words.to(feat.dtype)], dim=-1)
        return self.category_head(x)  # (B, C)

    def target_tokens(
        self, description: tuple | None, target_category: torch.Tensor | None
    ) -> torch.Tensor:
        """Target item token inputs (B, D): learned token + text projection + category embedding.

        Args:
            description: `_description(target_text)`, or None for a model without target text.
            target_category: (B,) category indices, or `len(CATEGORIES)` ("unknown") for models
                with `target.infer_category`.
        """
        parts = []
        if self.target_text is not None:
            feat, words = description
            parts.append(self.target_text(feat))
            if words is not None:
                parts.append(self.target_words(words))
        if self.category is not None:
            if target_category is None:
                raise ValueError("this model's target token reads the category; pass it")
            parts.append(self.category(target_category))
        return self.target_token + torch.stack(parts).sum(0)  # (B, D)

    def query(
        self,
        context_vecs: torch.Tensor,
        mask: torch.Tensor,
        target_text: dict | None,
        target_category: torch.Tensor | None,
    ) -> torch.Tensor:
        """L2-normalised query vectors (B, D) for the wanted item of each outfit context.

        The description's words also reach the query directly (`query_words`), past the
        transformer: they name *what* is wanted, the outfit decides the order among matches.
        """
        description = self._description(target_text) if self.target_text is not None else None
        token = self.target_tokens(description, target_category).unsqueeze(1)  # (B, 1, D)
        out = self.query_head(self._encode(token, context_vecs, mask)[:, 0])  # (B, D)
        if self.query_words is not None:
            out = out + self.query_words(description[1].to(out.dtype))  # (B, D)
        return F.normalize(out, dim=-1)
