"""Plain-PyTorch models of outfit compatibility and complementary-item retrieval (no Ray/MLflow).

`load_config` / `list_configs` name the architectures; the torch-backed parts live in their own
modules, imported where used (so `outfitter models` stays instant): `factory.build_model` builds
the hybrid model (Kalashi & Teimourpour) or the Sun et al. 2020 baseline, `inputs.InputBuilder`
turns id-level batches into tensors, `task.build_task` wraps a model with its losses,
`evaluate.evaluate` measures AUC / FITB / recall.
"""

from __future__ import annotations

from outfitter.model.config import ConfigError, ModelConfig, list_configs, load_config

__all__ = ["ConfigError", "ModelConfig", "list_configs", "load_config"]
