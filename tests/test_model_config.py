"""Model configs: the named registry, dotted overrides, validation errors that name the field."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from outfitter.model import ConfigError, ModelConfig, list_configs, load_config

REQUIRED = {
    "hybrid-tiny",
    "hybrid-vit-b32",
    "hybrid-fashionclip",
    "image-only",
    "text-only",
    "sun2020-tiny",
    "sun2020",
}


def test_registry_lists_the_named_configs_and_each_loads():
    names = list_configs()
    assert set(names) >= REQUIRED
    for name in names:
        cfg = load_config(name)
        assert cfg.name == name
        assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_kind_and_input_kind_come_from_fields():
    assert load_config("hybrid-tiny").kind == "hybrid"
    assert load_config("hybrid-tiny").input_kind == "features"
    assert load_config("sun2020-tiny").kind == "sun2020"
    assert load_config("sun2020-tiny").input_kind == "raw"
    tuned = load_config("hybrid-tiny", {"clip.freeze_text": False})
    assert tuned.input_kind == "raw"
    assert load_config("image-only").item.modalities == ("image",)
    assert load_config("text-only").item.modalities == ("text",)
    fashion = load_config("hybrid-fashionclip")
    assert fashion.clip.arch == "hf-hub:patrickjohncyh/fashion-clip"
    assert fashion.clip.embed_dim == 512 and fashion.clip.freeze_image and fashion.clip.freeze_text
    assert load_config("hybrid-vit-b32").clip.pretrained in ("laion2b_s34b_b79k", "openai")


def test_dotted_overrides_are_typed():
    cfg = load_config(
        "hybrid-tiny",
        {
            "clip.pretrained": "/path.pt",
            "transformer.layers": "1",
            "loss.temperature": "0.1",
            "item.modalities": "image",
            "clip.freeze_image": "false",
        },
    )
    assert cfg.clip.pretrained == "/path.pt"
    assert cfg.transformer.layers == 1
    assert cfg.loss.temperature == pytest.approx(0.1)
    assert cfg.item.modalities == ("image",)
    assert cfg.clip.freeze_image is False
    assert load_config("hybrid-tiny", {"clip.pretrained": "null"}).clip.pretrained is None
    assert cfg.replace({"transformer.layers": 2}).transformer.layers == 2


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"transformer.heads": 3}, "transformer.heads"),
        ({"item.fusion": "mean"}, "item.fusion"),
        ({"transformer.bogus": 1}, "transformer.bogus"),
        ({"transformer.layers": "two"}, "transformer.layers"),
        ({"item.modalities": ["audio"]}, "item.modalities"),
        ({"kind": "gpt"}, "kind"),
        ({"target.prompt_prob": 1.5}, "target.prompt_prob"),
        ({"loss.compatibility": "hinge"}, "loss.compatibility"),
    ],
)
def test_invalid_values_name_the_field(overrides, names):
    with pytest.raises(ConfigError, match=names.replace(".", r"\.")):
        load_config("hybrid-tiny", overrides)


def test_unknown_name_lists_the_registry(tmp_path):
    with pytest.raises(ConfigError, match="hybrid-tiny"):
        load_config("no-such-model")
    path = tmp_path / "mine.yaml"
    path.write_text("kind: hybrid\ntransformer: {layers: 1}\n")
    cfg = load_config(path)
    assert cfg.name == "mine" and cfg.transformer.layers == 1


# ---------------------------------------------------------------- the pydantic move (issue 19)

SAVED = json.loads((Path(__file__).parent / "fixtures" / "saved_configs.json").read_text())


@pytest.mark.parametrize("name", sorted(SAVED["model_configs"]))
def test_config_json_written_by_the_dataclass_configs_still_loads(name):
    old = SAVED["model_configs"][name]
    cfg = ModelConfig.from_dict(old)
    assert cfg == load_config(name)
    # the same checkpoint file, byte for byte: config.json is `json.dumps(..., sort_keys=True)`
    assert json.dumps(cfg.to_dict(), sort_keys=True) == json.dumps(old, sort_keys=True)


def test_a_checkpoint_with_an_old_config_json_loads(tmp_path):
    from outfitter.model.checkpoint import CONFIG, load_checkpoint, save_checkpoint
    from outfitter.model.factory import build_model

    old = SAVED["custom"]
    cfg = ModelConfig.from_dict({**old, "clip": {**old["clip"], "pretrained": None}})
    save_checkpoint(tmp_path, build_model(cfg, load_pretrained=False), cfg)
    (tmp_path / CONFIG).write_text(json.dumps({**old, "clip": {**old["clip"], "pretrained": None}}))
    _, loaded_cfg, _ = load_checkpoint(tmp_path)
    assert loaded_cfg == cfg and loaded_cfg.item.modalities == ("image",)
    assert loaded_cfg.clip.freeze_text is False and loaded_cfg.input_kind == "raw"


def test_cli_strings_take_the_fields_types():
    cfg = load_config(
        "sun2020-tiny",
        {
            "sun2020.cnn_weights": "None",
            "sun2020.image_size": "48",
            "sun2020.pair_temperature": "1e-1",
            "sun2020.max_words": 12.0,  # a Tune sample of quniform
            "item.modalities": "image, text",
            "clip.freeze_image": "0",
            "clip.freeze_text": "true",
            "clip.arch": 123,  # YAML reads a bare number
            "optim.epochs": np.int64(3),  # a Tune sample of randint
        },
    )
    assert cfg.sun2020.cnn_weights is None
    assert cfg.sun2020.image_size == 48 and type(cfg.sun2020.image_size) is int
    assert cfg.sun2020.pair_temperature == pytest.approx(0.1)
    assert cfg.sun2020.max_words == 12 and type(cfg.sun2020.max_words) is int
    assert cfg.item.modalities == ("image", "text")
    assert cfg.clip.freeze_image is False and cfg.clip.freeze_text is True
    assert cfg.clip.arch == "123" and type(cfg.optim.epochs) is int
    assert load_config("hybrid-tiny", {"clip.pretrained": "NULL"}).clip.pretrained is None
    assert (
        load_config("hybrid-tiny", {"loss.temperature": 1}).to_dict()["loss"]["temperature"] == 1.0
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"transformer.layers": "two"}, "transformer.layers must be an integer, got 'two'"),
        ({"transformer.layers": 1.5}, "transformer.layers must be an integer, got 1.5"),
        ({"transformer.layers": True}, "transformer.layers must be a number, got True"),
        ({"clip.embed_dim": None}, "clip.embed_dim must be an integer, got None"),
        ({"loss.temperature": "warm"}, "loss.temperature must be a number, got 'warm'"),
        ({"clip.freeze_image": "maybe"}, "clip.freeze_image must be true or false, got 'maybe'"),
        ({"clip.arch": ["a"]}, "clip.arch must be a string, got ['a']"),
        ({"item.fusion": "mean"}, "item.fusion must be 'concat', 'sum' or 'gated', got 'mean'"),
        ({"item.modalities": "image,audio"}, "item.modalities[1] must be 'image' or 'text'"),
        ({"item.modalities": []}, "item.modalities must name at least one of 'image', 'text'"),
        ({"target.prompt_prob": 1.5}, "target.prompt_prob must be <= 1, got 1.5"),
        ({"transformer.max_items": 1}, "transformer.max_items must be >= 2, got 1"),
        ({"words.buckets": 1}, "words.buckets must be 0 (off) or >= 2, got 1"),
        ({"clip": "big"}, "clip must be a mapping (a config section), got 'big'"),
        ({"clip.arch.name": "x"}, "override 'clip.arch.name': 'clip.arch' is not a config section"),
        ({"transformer.heads": 3}, "transformer.heads=3 must divide item.dim=64"),
        ({"target.use_text": False}, "target.infer_category=true needs target.use_text=true"),
    ],
)
def test_bad_values_name_the_key_the_rule_and_the_value(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config("hybrid-tiny", overrides)
    assert message in str(err.value)


def test_unknown_keys_name_the_nearest_and_list_the_section():
    with pytest.raises(ConfigError) as err:
        load_config("hybrid-tiny", {"transformer.layrs": 1})
    assert str(err.value) == (
        "transformer.layrs: unknown field; did you mean 'layers'? "
        "TransformerCfg has ['dropout', 'ff_dim', 'heads', 'layers', 'max_items']"
    )
    with pytest.raises(ConfigError, match=r"^bogus: unknown field; ModelConfig has \['clip'"):
        load_config("hybrid-tiny", {"bogus": 1})
    with pytest.raises(ConfigError, match=r"'transformer\.layrs': unknown field; did you mean"):
        load_config("hybrid-tiny").replace({"transformer.layrs": 1})
    # every problem at once, each with its key
    with pytest.raises(ConfigError, match=r"item\.dim must be > 0, got 0; optim\.lr must be > 0"):
        load_config("hybrid-tiny", {"item.dim": 0, "optim.lr": 0})


def test_configs_are_frozen_hashable_values():
    cfg = load_config("hybrid-tiny")
    with pytest.raises(ValidationError, match="frozen"):
        cfg.transformer.layers = 3
    assert cfg == load_config("hybrid-tiny") and hash(cfg) == hash(load_config("hybrid-tiny"))
    assert cfg != cfg.replace({"transformer.layers": 1})
    assert pickle.loads(pickle.dumps(cfg)) == cfg
