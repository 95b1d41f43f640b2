"""Settings of a training run: a frozen, validated pydantic model (the model config is separate).

The CLI and Tune override single fields with `TrainSettings.with_overrides`; the resolved settings
are logged to MLflow and saved in every checkpoint beside the model config. Errors are
`ConfigError`s (a `ValueError`) naming the setting, the rule and the value.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import Field, field_validator

from outfitter.model.config import FrozenConfig

Version = Literal["nondisjoint", "disjoint"]
Monitor = Literal[
    "valid_compatibility_auc",
    "valid_fitb_accuracy",
    "valid_fitb_accuracy_compat",
    "valid_recall_at_10",
    "valid_loss",
]
VERSIONS = get_args(Version)
MONITORS = get_args(Monitor)


class TrainSettings(FrozenConfig):
    """How to train: optimisation, data version, scale-out, checkpoints, early stopping."""

    # None: take the model config's `optim` value (its architecture's recommended default)
    epochs: int | None = Field(None, ge=1)  # maximum epochs; early stopping may end sooner
    batch_size: int | None = None  # outfits per worker per step, for each task
    lr: float | None = Field(None, gt=0)  # peak learning rate of the heads (AdamW), after warm-up
    weight_decay: float | None = None  # AdamW decoupled weight decay
    grad_clip: float | None = None  # max global gradient norm; 0 disables clipping
    warmup_frac: float = Field(0.05, ge=0, lt=1)  # share of steps with linear warm-up, then cosine
    amp: bool = True  # bf16 autocast on GPU (ignored on CPU)
    seed: int = 0  # seeds sampling, negatives and initialisation
    version: Version = "nondisjoint"  # Polyvore version to train on
    workers: int = Field(1, ge=1)  # Ray Train workers (DDP processes)
    use_gpu: bool = False  # one GPU per worker
    cpus_per_worker: float = 1.0  # CPU reservation of a CPU worker
    storage_path: str = "outfitter-work/ray_results"  # local folder or s3://, gs://, ... URI
    run_name: str = "outfitter-train"  # stable name: re-running the same command resumes
    checkpoints_to_keep: int = 2  # kept by Ray Train, best by `monitor`
    max_failures: int = Field(2, ge=0)  # worker-group restarts from the last checkpoint
    monitor: Monitor = "valid_compatibility_auc"  # metric for best checkpoint and early stopping
    monitor_mode: Literal["max", "min"] = "max"  # max or min
    # epochs without improvement before stopping; 0 disables. Not 3: the hybrid model's valid
    # AUC plateaus for ~8 epochs before its second rise (demo catalog: 0.74 at epoch 19, 0.86
    # at 33), and a short patience stopped it on the plateau
    patience: int = Field(10, ge=0)
    max_steps_per_epoch: int = 0  # cap on steps per epoch (0 = a full pass); for smoke runs

    @field_validator("batch_size")
    @classmethod
    def _two_or_more(cls, value: int | None) -> int | None:
        if value is not None and value < 2:
            raise ValueError(f"must be >= 2 (in-batch negatives), got {value}")
        return value

    def resolve(self, model_cfg) -> TrainSettings:
        """Fill the optimisation fields left to None from the model config's `optim` defaults."""
        optim = model_cfg.optim
        names = ("epochs", "batch_size", "lr", "weight_decay", "grad_clip")
        return self.with_overrides(
            **{n: getattr(optim, n) for n in names if getattr(self, n) is None}
        )

    def with_overrides(self, **overrides: Any) -> TrainSettings:
        """A copy with the given non-None fields replaced (and validated)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return TrainSettings.from_dict({**self.to_dict(), **given})
