"""`build_model(cfg)`: the architecture that `cfg.kind` names, with its towers or vocabulary."""

from __future__ import annotations

from torch import nn

from outfitter.model.config import ModelConfig


def build_vocab(cfg: ModelConfig, catalog, item_ids=None):
    """The sun2020 word vocabulary of the titles of `item_ids` (default: the whole catalog)."""
    from outfitter.model.sun2020 import WordVocab

    ids = catalog.item_ids if item_ids is None else item_ids
    return WordVocab.build((catalog.items[i].title for i in ids), cfg.sun2020.min_word_count)


def build_model(cfg: ModelConfig, *, towers=None, vocab=None, load_pretrained: bool = True):
    """Build the model of `cfg` (an `OutfitModel`: `input_kind`, `encode_items`,
    `compatibility_logits`, `query`).

    Args:
        towers: CLIP towers for hybrid models with fine-tuned towers (created from `cfg.clip`
            when not given); frozen-tower hybrids read cached features and hold no towers.
        vocab: the sun2020 word vocabulary (`build_vocab`); required for `kind: sun2020`.
        load_pretrained: False skips pretrained tower/CNN weights (restored from a checkpoint).
    """
    if cfg.kind == "hybrid":
        from outfitter.model.hybrid import HybridModel

        if cfg.input_kind == "raw" and towers is None:
            from outfitter.model.towers import create_towers

            towers = create_towers(cfg.clip, load_pretrained=load_pretrained)
        model: nn.Module = HybridModel(cfg, towers if cfg.input_kind == "raw" else None)
        if cfg.input_kind == "raw":
            model.towers = towers  # plain attribute: the builder shares the fine-tuned towers
        return model
    if cfg.kind == "sun2020":
        from outfitter.model.sun2020 import Sun2020Model

        if vocab is None:
            raise ValueError(
                "a sun2020 model needs a word vocabulary: "
                "build_model(cfg, vocab=build_vocab(cfg, catalog))"
            )
        return Sun2020Model(cfg, vocab, load_pretrained=load_pretrained)
    raise ValueError(f"kind={cfg.kind!r}: must be hybrid or sun2020")
