"""Settings of a training run: a frozen, validated dataclass (the model config is separate).

The CLI and Tune override single fields with `TrainSettings.with_overrides`; the resolved settings
are logged to MLflow and saved in every checkpoint beside the model config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

VERSIONS = ("nondisjoint", "disjoint")
MONITORS = (
    "valid_compatibility_auc",
    "valid_fitb_accuracy",
    "valid_fitb_accuracy_compat",
    "valid_recall_at_10",
    "valid_loss",
)


@dataclass(frozen=True)
class TrainSettings:
    """How to train: optimisation, data version, scale-out, checkpoints, early stopping."""

    # None: take the model config's `optim` value (its architecture's recommended default)
    epochs: int | None = None  # maximum epochs; early stopping may end sooner
    batch_size: int | None = None  # outfits per worker per step, for each task
    lr: float | None = None  # peak learning rate of the heads (AdamW), reached after warm-up
    weight_decay: float | None = None  # AdamW decoupled weight decay
    grad_clip: float | None = None  # max global gradient norm; 0 disables clipping
    warmup_frac: float = 0.05  # share of steps with linear warm-up, then cosine decay to 0
    amp: bool = True  # bf16 autocast on GPU (ignored on CPU)
    seed: int = 0  # seeds sampling, negatives and initialisation
    version: str = "nondisjoint"  # Polyvore version to train on: nondisjoint or disjoint
    workers: int = 1  # Ray Train workers (DDP processes)
    use_gpu: bool = False  # one GPU per worker
    cpus_per_worker: float = 1.0  # CPU reservation of a CPU worker
    storage_path: str = "outfitter-work/ray_results"  # local folder or s3://, gs://, ... URI
    run_name: str = "outfitter-train"  # stable name: re-running the same command resumes
    checkpoints_to_keep: int = 2  # kept by Ray Train, best by `monitor`
    max_failures: int = 2  # worker-group restarts from the last checkpoint before giving up
    monitor: str = "valid_compatibility_auc"  # metric for best checkpoint and early stopping
    monitor_mode: str = "max"  # max or min
    patience: int = 3  # epochs without improvement before stopping; 0 disables early stopping
    max_steps_per_epoch: int = 0  # cap on steps per epoch (0 = a full pass); for smoke runs

    def __post_init__(self) -> None:
        checks = [
            (self.epochs is None or self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (
                self.batch_size is None or self.batch_size >= 2,
                f"batch_size must be >= 2 (in-batch negatives), got {self.batch_size}",
            ),
            (self.lr is None or self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (0 <= self.warmup_frac < 1, f"warmup_frac must be in [0, 1), got {self.warmup_frac}"),
            (self.version in VERSIONS, f"version must be one of {VERSIONS}, got {self.version!r}"),
            (self.workers >= 1, f"workers must be >= 1, got {self.workers}"),
            (self.monitor in MONITORS, f"monitor must be one of {MONITORS}, got {self.monitor!r}"),
            (
                self.monitor_mode in ("max", "min"),
                f"monitor_mode must be max or min, got {self.monitor_mode!r}",
            ),
            (self.patience >= 0, f"patience must be >= 0, got {self.patience}"),
            (self.max_failures >= 0, f"max_failures must be >= 0, got {self.max_failures}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training settings {unknown}; known: {sorted(known)}")
        return cls(**values)

    def resolve(self, model_cfg) -> TrainSettings:
        """Fill the optimisation fields left to None from the model config's `optim` defaults."""
        optim = model_cfg.optim
        return replace(
            self,
            epochs=self.epochs if self.epochs is not None else optim.epochs,
            batch_size=self.batch_size if self.batch_size is not None else optim.batch_size,
            lr=self.lr if self.lr is not None else optim.lr,
            weight_decay=self.weight_decay if self.weight_decay is not None else optim.weight_decay,
            grad_clip=self.grad_clip if self.grad_clip is not None else optim.grad_clip,
        )

    def with_overrides(self, **overrides) -> TrainSettings:
        """A copy with the given non-None fields replaced (and validated)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        TrainSettings.from_dict({**self.to_dict(), **given})
        return replace(self, **given)
