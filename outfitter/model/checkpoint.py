"""Self-describing checkpoints: `config.json` + `model.safetensors` + `meta.json` (no pickles).

Optional files: `vocab.json` (the sun2020 word vocabulary) and `towers.safetensors` (the frozen
CLIP towers that made the features, so serving can encode new items and free-text queries without
the original `clip.pretrained` file; on load, `clip.pretrained` points at it). Shared (tied)
tensors are handled by `safetensors.torch.save_model`/`load_model`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_model, save_file, save_model
from torch import nn

from outfitter.model.config import ModelConfig
from outfitter.model.factory import build_model

CONFIG, WEIGHTS, META, VOCAB, TOWERS = (
    "config.json",
    "model.safetensors",
    "meta.json",
    "vocab.json",
    "towers.safetensors",
)


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    cfg: ModelConfig,
    meta: dict[str, Any] | None = None,
    *,
    towers=None,
) -> Path:
    """Write the checkpoint files into `directory` (created); returns it.

    Args:
        towers: the frozen CLIP towers of a features-mode model, saved as `towers.safetensors`.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG).write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
    save_model(model, str(directory / WEIGHTS))
    (directory / META).write_text(json.dumps(meta or {}, indent=2, sort_keys=True, default=str))
    vocab = getattr(model, "vocab", None)
    if vocab is not None:
        (directory / VOCAB).write_text(vocab.to_json())
    if towers is not None and getattr(model, "clip", None) is None:
        state = {k: v.detach().contiguous() for k, v in towers.model.state_dict().items()}
        save_file(state, str(directory / TOWERS))
    return directory


def load_checkpoint(directory: str | Path, map_location="cpu"):
    """Rebuild `(model, cfg, meta)` from a checkpoint folder; the model is in eval mode."""
    directory = Path(directory)
    missing = [f for f in (CONFIG, WEIGHTS) if not (directory / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{directory} is not an outfitter checkpoint (missing {', '.join(missing)})"
        )
    cfg = ModelConfig.from_dict(json.loads((directory / CONFIG).read_text()))
    if (directory / TOWERS).is_file():
        cfg = cfg.replace({"clip.pretrained": str((directory / TOWERS).resolve())})
    vocab = None
    if (directory / VOCAB).is_file():
        from outfitter.model.sun2020 import WordVocab

        vocab = WordVocab.from_json((directory / VOCAB).read_text())
    model = build_model(cfg, vocab=vocab, load_pretrained=False)
    missing_keys, unexpected = load_model(model, str(directory / WEIGHTS), strict=False,
                                          device=str(map_location))  # fmt: skip
    if missing_keys or unexpected:
        raise ValueError(
            f"{directory / WEIGHTS} does not match config {cfg.name!r}: "
            f"missing {sorted(missing_keys)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    model.to(map_location).eval()
    meta = json.loads((directory / META).read_text()) if (directory / META).is_file() else {}
    return model, cfg, meta
