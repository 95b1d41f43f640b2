"""Plain-PyTorch models of outfit compatibility and complementary-item retrieval (no Ray/MLflow).

`load_config` / `list_configs` name the architectures, `build_model` builds the hybrid model
(Kalashi & Teimourpour) or the Sun et al. 2020 baseline, `InputBuilder` turns id-level batches
into tensors, `build_task` wraps a model with its losses, `outfitter.model.evaluate.evaluate`
measures AUC / FITB / recall.
The torch-backed names are imported on first use, so `outfitter models` stays instant.
"""

from __future__ import annotations

import importlib

from outfitter.model.config import ConfigError, ModelConfig, list_configs, load_config

_LAZY = {
    "build_model": "outfitter.model.factory",
    "build_vocab": "outfitter.model.factory",
    "InputBuilder": "outfitter.model.inputs",
    "OutfitTask": "outfitter.model.task",
    "build_task": "outfitter.model.task",
    "make_optimizer": "outfitter.model.task",
    "train_step": "outfitter.model.task",
    "save_checkpoint": "outfitter.model.checkpoint",
    "load_checkpoint": "outfitter.model.checkpoint",
    "create_towers": "outfitter.model.towers",
    "TowerWeightsError": "outfitter.model.towers",
}

__all__ = ["ConfigError", "ModelConfig", "list_configs", "load_config", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'outfitter.model' has no attribute {name!r}")
