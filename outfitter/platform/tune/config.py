"""The YAML schema of a Ray Tune search (`tune_configs/*.yaml`), validated before anything starts.

A search names a base model config and base training settings, then a search space whose keys are
dotted paths: `settings.<field>` overrides a `TrainSettings` field, `model.<path>` a field of the
model config (e.g. `model.transformer.layers`). Each value is one sampler:
`{loguniform: [lo, hi]}`, `{uniform: [lo, hi]}`, `{quniform: [lo, hi, q]}`, `{randint: [lo, hi]}`,
`{choice: [a, b, ...]}` or `{grid: [a, b, ...]}`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from outfitter.model.config import FrozenConfig
from outfitter.platform.train.settings import MONITORS, TrainSettings

SAMPLERS = ("loguniform", "uniform", "quniform", "randint", "choice", "grid")


class TuneConfigError(ValueError):
    """A search config that cannot run, with the file and the rule it breaks."""


class SchedulerConfig(FrozenConfig):
    type: Literal["asha", "none"] = "asha"
    grace_period: int = Field(
        1, ge=1, description="epochs every trial runs before it can be stopped"
    )
    max_t: int = Field(10, ge=1, description="epochs at most per trial")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA keeps 1/reduction_factor per rung")

    @model_validator(mode="after")
    def _bounds(self):
        if self.grace_period > self.max_t:
            raise ValueError(f"grace_period ({self.grace_period}) must be <= max_t ({self.max_t})")
        return self


class SearcherConfig(FrozenConfig):
    type: Literal["random", "optuna"] = "random"
    seed: int | None = None  # seeds the searcher (TPE) for reproducible suggestions


class TrialResources(FrozenConfig):
    workers: int = Field(1, ge=1, description="Ray Train workers per trial")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    driver_cpus: float = Field(
        1.0,
        gt=0,
        description="CPUs reserved for the trial's driver (the Tune function that starts the "
        "trial's Ray Train run and waits on it; its workers hold their own CPUs). Ray's default "
        "is 1; a small share lets trials of 1-CPU workers run side by side on a small machine",
    )


class SearchConfig(FrozenConfig):
    name: str = Field(..., pattern=r"^[\w.-]+$")
    model_config_name: str = Field(..., alias="model_config")
    settings: dict[str, Any] = Field(default_factory=dict)
    search_space: dict[str, dict[str, list]] = Field(..., min_length=1)
    metric: str = "valid_compatibility_auc"
    mode: Literal["max", "min"] = "max"
    num_samples: int = Field(4, ge=1)
    scheduler: SchedulerConfig = SchedulerConfig()
    searcher: SearcherConfig = SearcherConfig()
    max_concurrent_trials: int = Field(1, ge=1)
    resources_per_trial: TrialResources = TrialResources()
    time_budget_s: float | None = Field(None, gt=0)
    register_best: bool = True  # register the best trial's checkpoint as `challenger`

    model_config = ConfigDict(populate_by_name=True)  # frozen, extra="forbid": FrozenConfig's

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        if value not in MONITORS:
            raise ValueError(f"metric must be one of {MONITORS}, got {value!r}")
        return value

    @field_validator("settings")
    @classmethod
    def _settings(cls, value: dict) -> dict:
        TrainSettings.from_dict(value)  # unknown fields and bad values fail here
        return value

    @field_validator("search_space")
    @classmethod
    def _space(cls, space: dict) -> dict:
        for key, spec in space.items():
            _check_param(key, spec)
        return space

    @model_validator(mode="after")
    def _grid_needs_random(self):
        has_grid = any("grid" in spec for spec in self.search_space.values())
        if has_grid and self.searcher.type != "random":
            raise ValueError(
                "grid parameters need searcher type 'random' (Optuna samples, it does not grid)"
            )
        return self


def _check_param(key: str, spec: dict) -> None:
    scope, _, path = key.partition(".")
    if scope not in ("settings", "model") or not path:
        raise ValueError(f"search_space key {key!r} must start with 'settings.' or 'model.'")
    if scope == "settings" and path not in TrainSettings().to_dict():
        raise ValueError(
            f"search_space key {key!r}: {path!r} is not a training setting; "
            f"known: {sorted(TrainSettings().to_dict())}"
        )
    if len(spec) != 1:
        raise ValueError(
            f"search_space[{key!r}] must have exactly one sampler of {SAMPLERS}, got {sorted(spec)}"
        )
    ((kind, args),) = spec.items()
    if kind not in SAMPLERS:
        raise ValueError(f"search_space[{key!r}]: unknown sampler {kind!r}; use one of {SAMPLERS}")
    if kind in ("choice", "grid"):
        if len(args) < 1:
            raise ValueError(f"search_space[{key!r}].{kind} needs at least one value")
        return
    want = 3 if kind == "quniform" else 2
    if len(args) != want or not all(isinstance(a, (int, float)) for a in args):
        raise ValueError(f"search_space[{key!r}].{kind} takes {want} numbers, got {args!r}")
    lo, hi = args[0], args[1]
    if not lo < hi:
        raise ValueError(
            f"search_space[{key!r}].{kind}: lower bound {lo} must be < upper bound {hi}"
        )
    if kind == "loguniform" and lo <= 0:
        raise ValueError(f"search_space[{key!r}].loguniform: bounds must be > 0, got {lo}")


def load_search_config(path: Path | str) -> SearchConfig:
    """Read and validate a search YAML; errors name the file and the offending field."""
    path = Path(path)
    if not path.exists():
        raise TuneConfigError(
            f"search config {path} does not exist; see tune_configs/ for examples"
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise TuneConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise TuneConfigError(f"{path} must hold a mapping at the top level")
    try:
        return SearchConfig.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<top>'}: {e['msg']}" for e in err.errors()
        )
        raise TuneConfigError(f"{path}: {problems}") from err


def to_param_space(space: dict[str, dict[str, list]]) -> dict:
    """The Ray Tune param_space of a validated search space (keys stay dotted)."""
    from ray import tune

    makers = {
        "loguniform": lambda a: tune.loguniform(a[0], a[1]),
        "uniform": lambda a: tune.uniform(a[0], a[1]),
        "quniform": lambda a: tune.quniform(a[0], a[1], a[2]),
        "randint": lambda a: tune.randint(int(a[0]), int(a[1])),
        "choice": lambda a: tune.choice(a),
        "grid": lambda a: tune.grid_search(a),
    }
    out = {}
    for key, spec in space.items():
        ((kind, args),) = spec.items()
        out[key] = makers[kind](args)
    return out


def split_params(params: dict) -> tuple[dict, dict]:
    """Sampled dotted params → (settings overrides, model config overrides)."""
    settings, model = {}, {}
    for key, value in params.items():
        scope, _, path = key.partition(".")
        (settings if scope == "settings" else model)[path] = value
    return settings, model
