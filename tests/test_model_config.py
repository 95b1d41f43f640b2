"""Model configs: the named registry, dotted overrides, validation errors that name the field."""

from __future__ import annotations

import pytest

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
