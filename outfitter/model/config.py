"""Model configs: frozen pydantic models, one per part, loaded from named YAML files.

`load_config("hybrid-tiny", {"transformer.layers": 1})` reads `configs/hybrid-tiny.yaml` (or a
YAML path), applies dotted overrides, and validates every field; errors name the field and value.
`ModelConfig.kind` picks the architecture (`hybrid` or `sun2020`); nothing looks at names.
`FrozenConfig` is the base of the model configs, of the train settings (`platform.train.settings`)
and of Tune's search configs: strings from the CLI become the field's type, and an error names the
field, the rule and the value.
"""

from __future__ import annotations

import difflib
import types
import typing
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

if TYPE_CHECKING:
    from typing_extensions import Self


class ConfigError(ValueError):
    """A config that cannot be used; the message names the field and the rule."""


class FrozenConfig(BaseModel):
    """Frozen, unknown fields refused; CLI strings are typed by the field ("1", "false", "null",
    "image,text"). `from_dict` raises `ConfigError` naming the dotted field, the rule and the value
    (the constructor raises pydantic's `ValidationError`, also a `ValueError`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", coerce_numbers_to_str=True)

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        """Validate a plain mapping (YAML, JSON, a checkpoint's config.json)."""
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(describe(err, cls)) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples as lists): the form saved in checkpoints and logged."""
        return self.model_dump(mode="json")

    @field_validator("*", mode="before")
    @classmethod
    def _from_text(cls, value: Any, info) -> Any:
        return _coerce(cls.model_fields[info.field_name].annotation, value)


def _coerce(hint: Any, value: Any) -> Any:
    """What pydantic's own conversions leave out: "null"/"none" for an optional field, a comma
    list for a tuple, an empty YAML section; a bool is not a number (pydantic would take it)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if isinstance(value, str) and value.lower() in ("null", "none") and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return {} if value is None else value
    if typing.get_origin(hint) is tuple and isinstance(value, str):
        return tuple(v.strip() for v in value.split(","))
    if hint in (int, float) and isinstance(value, bool):
        raise ValueError(f"must be a number, got {value!r}")
    return value


_RULES = {  # pydantic error type -> the rule, as a user reads it after the field's name
    "int_parsing": "must be an integer",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "model_type": "must be a mapping (a config section)",
    "dict_type": "must be a mapping",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
}
_BOUNDS = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt",
           "less_than_equal": "le"}  # fmt: skip
_SIGNS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def describe(err: ValidationError, cls: type[BaseModel]) -> str:
    """One line per problem: `transformer.layers must be an integer, got 'two'`."""
    return "; ".join(_describe_one(e, cls) for e in err.errors())


def _describe_one(error: dict, cls: type[BaseModel]) -> str:
    loc, kind, value = error["loc"], error["type"], error.get("input")
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
    where = path.lstrip(".") or cls.__name__
    if kind == "extra_forbidden":
        section = _section(cls, loc[:-1])
        names = sorted(section.model_fields)
        close = difflib.get_close_matches(str(loc[-1]), names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"{where}: unknown field; {hint}{section.__name__} has {names}"
    if kind in ("value_error", "assertion_error"):
        message = str(error["ctx"]["error"])
        # a rule across fields (a section's validator) names its fields itself
        return message if _section(cls, loc) is not None else f"{where} {message}"
    if kind in _BOUNDS:
        bound = _BOUNDS[kind]
        limit = error["ctx"][bound]  # the field's type: 0.0 for a float, written as 0
        return f"{where} must be {_SIGNS[bound]} {limit:g}, got {value!r}"
    if kind == "literal_error":
        return f"{where} must be {error['ctx']['expected']}, got {value!r}"
    return f"{where} {_RULES.get(kind, error['msg'])}, got {value!r}"


def _section(cls: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The config class at `loc` (a path of section names), or None where `loc` is a field."""
    for part in loc:
        field = cls.model_fields.get(str(part))
        hint = field.annotation if field is not None else None
        if not (isinstance(hint, type) and issubclass(hint, BaseModel)):
            return None
        cls = hint
    return cls


class ClipCfg(FrozenConfig):
    """The CLIP towers (open_clip) that turn item images and texts into features."""

    arch: str = "outfitter-tiny"  # open_clip architecture (also `hf-hub:org/repo`, `local-dir:/p`)
    # open_clip tag (e.g. "openai") or local weights file; None = random initialisation
    pretrained: str | None = None
    embed_dim: int = Field(64, gt=0)  # output width of each tower; checked against the tower
    freeze_image: bool = True  # frozen: image features are computed once and cached
    freeze_text: bool = True  # frozen: text features are computed once and cached


class ItemCfg(FrozenConfig):
    """The hybrid item encoder: fuses one item's CLIP image and text features into a vector."""

    # which features to use (ablations)
    modalities: tuple[Literal["image", "text"], ...] = ("image", "text")
    fusion: Literal["concat", "sum", "gated"] = "concat"  # concat (+projection, the paper)
    dim: int = Field(64, gt=0)  # item vector width; also the transformer width
    hidden: int = Field(128, gt=0)  # hidden width of the projection MLP
    dropout: float = Field(0.1, ge=0.0, lt=1.0)  # dropout inside the projection

    @field_validator("modalities")
    @classmethod
    def _some(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("must name at least one of 'image', 'text'")
        return value


class TransformerCfg(FrozenConfig):
    """The outfit transformer encoder over item vectors plus the outfit and target tokens."""

    layers: int = Field(2, ge=0)  # encoder layers
    heads: int = Field(4, gt=0)  # attention heads; must divide item.dim
    ff_dim: int = Field(128, gt=0)  # feed-forward width
    dropout: float = Field(0.1, ge=0.0, lt=1.0)  # dropout in attention and feed-forward
    max_items: int = Field(20, ge=2)  # longest outfit accepted (Polyvore outfits: up to 19 items)


class TargetCfg(FrozenConfig):
    """How the target item token (retrieval query) is built."""

    use_text: bool = True  # add the CLIP text embedding of the wanted item's description
    use_category: bool = True  # add a learned embedding of the wanted item's category
    source: Literal["title", "text"] = "title"  # training description of the target
    prompt_prob: float = Field(0.5, ge=0.0, le=1.0)  # share replaced by the category prompt
    prompt_template: str = "a photo of {category}"  # category prompt; {category} = e.g. "shoes"
    subset_prob: float = Field(0.0, ge=0.0, le=1.0)  # training: descriptions cut to a word subset
    infer_category: bool = False  # a head infers the category of a description given without one
    category_drop: float = Field(0.0, ge=0.0, le=1.0)  # training: targets whose category is hidden
    category_threshold: float = Field(0.5, ge=0.0, le=1.0)  # inferred category's probability
    #                         above which search keeps to that category (below: the whole catalog)

    @field_validator("prompt_template")
    @classmethod
    def _names_the_category(cls, value: str) -> str:
        if "{category}" not in value:
            raise ValueError(f"must contain {{category}}, got {value!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TargetCfg:
        if not (self.use_text or self.use_category):
            raise ValueError("target: use_text and use_category are both false")
        if self.infer_category and not self.use_text:
            raise ValueError(
                "target.infer_category=true needs target.use_text=true (it reads the description)"
            )
        if self.category_drop and not self.infer_category:
            raise ValueError(
                f"target.category_drop={self.category_drop} needs target.infer_category=true"
            )
        return self


class WordsCfg(FrozenConfig):
    """A learned bag of hashed words over item texts and target descriptions: the lexical channel
    that frozen CLIP text features carry only weakly (the words a user types to name an item)."""

    buckets: int = 0  # hash buckets of the word vocabulary (`model.words`); 0 = no word bag
    dim: int = Field(64, gt=0)  # word embedding width
    source: Literal["title", "text"] = "title"  # what of an item the bag reads

    @field_validator("buckets")
    @classmethod
    def _off_or_two(cls, value: int) -> int:
        if value != 0 and value < 2:
            raise ValueError(f"must be 0 (off) or >= 2, got {value}")
        return value


class LossCfg(FrozenConfig):
    """Training objectives and their weights (total loss = weighted sum)."""

    compatibility: Literal["bce", "focal"] = "bce"  # compatibility loss
    focal_gamma: float = 2.0  # focal loss exponent (compatibility == focal)
    compatibility_weight: float = 1.0  # weight of compatibility_loss
    retrieval_weight: float = 1.0  # weight of retrieval_loss (InfoNCE)
    temperature: float = Field(0.07, gt=0)  # InfoNCE softmax temperature
    category_negatives: int = Field(4, ge=0)  # extra same-category negatives per retrieval target
    category_weight: float = 1.0  # weight of category_loss (target.infer_category's head)
    triplet_margin: float = 0.2  # sun2020: margin, scaled by the positive pair's weight
    triplet_weight: float = 1.0  # sun2020: weight of triplet_loss
    triplet_weighted: bool = True  # sun2020: scale the margin by the pair's weight; false = plain


class Sun2020Cfg(FrozenConfig):
    """The Sun et al. 2020 baseline: CNN + LSTM item embeddings fused into one latent space."""

    cnn: Literal["small", "resnet18"] = "small"  # small (4 conv blocks) | resnet18 (torchvision)
    cnn_weights: str | None = None  # local torchvision state dict for the CNN; None = random init
    image_size: int = Field(32, gt=0)  # side the images are resized to
    cnn_width: int = 32  # channels of the first conv block of the small CNN (doubles per block)
    word_dim: int = 64  # word embedding width
    lstm_layers: int = Field(2, gt=0)  # stacked LSTM layers over the title words
    lstm_hidden: int = 64  # LSTM hidden width
    dim: int = Field(64, gt=0)  # latent (item vector) width
    max_words: int = 16  # title words read (the rest is cut)
    min_word_count: int = 1  # words rarer than this in the catalog map to <unk>
    pair_temperature: float = Field(0.1, gt=0)  # pairwise compatibility = sigmoid(cos / this)


class OptimCfg(FrozenConfig):
    """Optimiser and schedule defaults (run configs may override them)."""

    lr: float = Field(1e-3, gt=0)  # AdamW learning rate of the heads
    tower_lr: float = 1e-5  # learning rate of fine-tuned (unfrozen) CLIP towers / sun2020 CNN
    weight_decay: float = 0.01  # AdamW weight decay
    batch_size: int = Field(64, gt=0)  # outfits per batch (per task)
    epochs: int = 10  # default number of epochs
    grad_clip: float = 1.0  # gradient norm clip; 0 disables


class ModelConfig(FrozenConfig):
    """A whole model: which architecture (`kind`) and the config of every part."""

    name: str = "custom"  # registry name or file stem, for humans and run names
    kind: Literal["hybrid", "sun2020"] = "hybrid"  # the architecture
    clip: ClipCfg = ClipCfg()
    item: ItemCfg = ItemCfg()
    transformer: TransformerCfg = TransformerCfg()
    target: TargetCfg = TargetCfg()
    words: WordsCfg = WordsCfg()
    loss: LossCfg = LossCfg()
    sun2020: Sun2020Cfg = Sun2020Cfg()
    optim: OptimCfg = OptimCfg()

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.item.dim % self.transformer.heads:
            raise ValueError(
                f"transformer.heads={self.transformer.heads} must divide item.dim={self.item.dim}"
            )
        return self

    def replace(self, overrides: dict[str, Any]) -> ModelConfig:
        """A copy with dotted overrides applied, e.g. {"transformer.layers": 1}."""
        data = self.to_dict()
        for key, value in overrides.items():
            _set_dotted(data, key, value, create=False)
        return ModelConfig.from_dict(data)

    @property
    def input_kind(self) -> str:
        """`features`: both towers frozen, the model reads cached features only; `raw`: the
        model holds the towers and reads pixels/tokens for a fine-tuned tower (and cached
        features for a frozen one)."""
        if self.kind == "hybrid" and self.clip.freeze_image and self.clip.freeze_text:
            return "features"
        return "raw"


def untrained_frozen_towers(cfg) -> list[str]:
    """The CLIP towers (`"image"`, `"text"`) a model config reads but would never train: frozen,
    and with no weights to load (`clip.pretrained` unset, an architecture open_clip does not
    fetch weights for), so they stay at their random initialisation and hand the model noise.

    `cfg`: a `ModelConfig`; empty for the Sun et al. baseline (no CLIP towers). Reads the
    config only: the training CLI checks it without importing torch.
    """
    clip = cfg.clip
    if cfg.kind != "hybrid" or clip.pretrained or clip.arch.startswith(("hf-hub:", "local-dir:")):
        return []
    reads_text = "text" in cfg.item.modalities or cfg.target.use_text
    return [
        name
        for name, frozen, read in (
            ("image", clip.freeze_image, "image" in cfg.item.modalities),
            ("text", clip.freeze_text, reads_text),
        )
        if frozen and read
    ]


def _set_dotted(data: dict[str, Any], key: str, value: Any, *, create: bool) -> None:
    """Set a dotted key in plain config data. `create`: raw YAML, where sections may be absent
    (an unknown name is then refused by validation, with the section's fields)."""
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {}) if create else node.get(part)
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"override {key!r}: {where!r} is not a config section")
        node = child
    if not create and parts[-1] not in node:
        close = difflib.get_close_matches(parts[-1], list(node), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"override {key!r}: unknown field; {hint}known: {sorted(node)}")
    node[parts[-1]] = value


# ---------------------------------------------------------------- registry


def _config_dir():
    return resources.files("outfitter.model") / "configs"


def list_configs() -> list[str]:
    """Names of the model configs shipped in `outfitter/model/configs/`."""
    return sorted(p.name[:-5] for p in _config_dir().iterdir() if p.name.endswith(".yaml"))


def load_config(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> ModelConfig:
    """A named config (see `list_configs()`) or a YAML file, with dotted overrides applied."""
    path = Path(name_or_path)
    if str(name_or_path) in list_configs():
        text = (_config_dir() / f"{name_or_path}.yaml").read_text()
        default_name = str(name_or_path)
    elif path.suffix in (".yaml", ".yml", ".json") and path.is_file():
        text = path.read_text()
        default_name = path.stem
    else:
        raise ConfigError(
            f"model config {str(name_or_path)!r} is neither a named config ({list_configs()}) "
            "nor an existing .yaml/.json file"
        )
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{name_or_path}: the file must hold a mapping, got {type(data).__name__}"
        )
    data.setdefault("name", default_name)
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value, create=True)
    return ModelConfig.from_dict(data)
