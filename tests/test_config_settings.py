"""Train settings (the same pydantic base as the model configs): validation, Tune's and the CLI's
overrides, settings saved by the dataclass version, and one-line CLI errors for bad configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from outfitter.cli import app
from outfitter.model import ConfigError, load_config
from outfitter.platform.train.settings import MONITORS, TrainSettings

SAVED = json.loads((Path(__file__).parent / "fixtures" / "saved_configs.json").read_text())


def test_settings_saved_by_the_dataclass_version_load_unchanged():
    old = SAVED["settings"]
    settings = TrainSettings.from_dict(old)
    assert json.dumps(settings.to_dict(), sort_keys=True) == json.dumps(old, sort_keys=True)
    # the defaults of then, but patience (3 then, 10 since the demo stopped on a plateau)
    fresh = TrainSettings(epochs=2, storage_path="/tmp/r", run_name="x", patience=3)
    assert fresh.resolve(load_config("hybrid-tiny")) == settings


def test_resolve_fills_only_what_is_left_to_the_model_config():
    cfg = load_config("hybrid-tiny")
    settings = TrainSettings(lr=0.01).resolve(cfg)
    assert settings.lr == 0.01 and settings.epochs == cfg.optim.epochs
    assert settings.batch_size == cfg.optim.batch_size and settings.grad_clip == cfg.optim.grad_clip


def test_overrides_are_typed_and_none_keeps_the_value():
    base = TrainSettings(epochs=4)
    # Tune samples numpy scalars and quniform floats; the CLI passes None for flags not given
    settings = base.with_overrides(epochs=None, lr=np.float64(1e-3), batch_size=32.0, seed="7")
    assert settings.epochs == 4 and settings.lr == 1e-3 and settings.seed == 7
    assert type(settings.batch_size) is int and settings.batch_size == 32
    assert base.epochs == 4 and base.lr is None  # a copy
    assert TrainSettings.from_dict({"epochs": "none"}).epochs is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epochs": 0}, "epochs must be >= 1, got 0"),
        ({"batch_size": 1}, "batch_size must be >= 2 (in-batch negatives), got 1"),
        ({"lr": 0}, "lr must be > 0, got 0"),
        ({"lr": "fast"}, "lr must be a number, got 'fast'"),
        ({"warmup_frac": 1.0}, "warmup_frac must be < 1, got 1.0"),
        ({"version": "v2"}, "version must be 'nondisjoint' or 'disjoint', got 'v2'"),
        ({"monitor_mode": "up"}, "monitor_mode must be 'max' or 'min', got 'up'"),
        ({"workers": 0}, "workers must be >= 1, got 0"),
        ({"patience": -1}, "patience must be >= 0, got -1"),
        ({"use_gpu": "sometimes"}, "use_gpu must be true or false, got 'sometimes'"),
        ({"epoch": 3}, "epoch: unknown field; did you mean 'epochs'? TrainSettings has ['amp'"),
    ],
)
def test_bad_settings_name_the_setting_the_rule_and_the_value(overrides, message):
    with pytest.raises(ConfigError) as err:
        TrainSettings().with_overrides(**overrides)
    assert message in str(err.value)
    assert isinstance(err.value, ValueError)  # callers catch ValueError


def test_monitors_are_the_fields_choices():
    assert MONITORS[0] == TrainSettings().monitor and "valid_loss" in MONITORS
    with pytest.raises(ConfigError, match="monitor must be 'valid_compatibility_auc'"):
        TrainSettings.from_dict({"monitor": "accuracy"})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["embed", "--set", "transformer.layrs=1"], "did you mean 'layers'"),
        (["embed", "--set", "clip.freeze_text=maybe"], "clip.freeze_text must be true or false"),
        (["train", "--epochs", "0"], "epochs must be >= 1, got 0"),
        (["train", "--version", "v3"], "version must be 'nondisjoint' or 'disjoint'"),
        (["clip-pretrain", "--embed-dim", "0", "--out", "t.safetensors"], "embed_dim must be > 0"),
    ],
)
def test_cli_config_errors_are_one_line(args, message, tmp_path):
    result = CliRunner().invoke(app, [*args, "--data", str(tmp_path / "none")])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
