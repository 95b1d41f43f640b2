"""The hybrid multimodal model (Kalashi & Teimourpour): CLIP item features + an outfit transformer.

An item is its CLIP image and text features fused into one L2-normalised vector (`ItemEncoder`).
A transformer encoder reads an outfit's item vectors with two learned special inputs in front:
the outfit token, whose output gives the compatibility logit, and the target item token (built
from the CLIP text embedding of the wanted item's description and/or its category), whose
output is a query vector in the item space: complementary items are retrieved by inner product.
No positional embedding: an outfit is a set.
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

    def forward(self, image_feat: torch.Tensor | None, text_feat: torch.Tensor | None):
        """Item vectors (U, D), L2-normalised, from features (U, Di) and (U, Dt)."""
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
        self.category = nn.Embedding(len(CATEGORIES), dim) if tg.use_category else None
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
        return self.item_encoder(image, text)

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

    def target_tokens(self, target_text: dict | None, target_category: torch.Tensor | None):
        """Target item token inputs (B, D): learned token + text projection + category embedding."""
        parts = []
        if self.target_text is not None:
            if not target_text:
                raise ValueError("this model's target token reads text; pass target_text")
            feat = target_text.get("text_feat")
            if feat is None:
                feat = self._clip_text(target_text["tokens"])  # (B, Dt)
            parts.append(self.target_text(feat))
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
        """L2-normalised query vectors (B, D) for the wanted item of each outfit context."""
        token = self.target_tokens(target_text, target_category).unsqueeze(1)  # (B, 1, D)
        out = self._encode(token, context_vecs, mask)[:, 0]  # (B, D)
        return F.normalize(self.query_head(out), dim=-1)
