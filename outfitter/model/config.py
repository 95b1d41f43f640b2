"""Model configs: frozen, validated dataclasses, one per part, loaded from named YAML files.

`load_config("hybrid-tiny", {"transformer.layers": 1})` reads `configs/hybrid-tiny.yaml` (or a
YAML path), applies dotted overrides, and validates every field; errors name the field and value.
`ModelConfig.kind` picks the architecture (`hybrid` or `sun2020`); nothing looks at names.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

KINDS = ("hybrid", "sun2020")
MODALITIES = ("image", "text")
FUSIONS = ("concat", "sum", "gated")
COMPAT_LOSSES = ("bce", "focal")
TARGET_SOURCES = ("title", "text")
CNNS = ("small", "resnet18")


class ConfigError(ValueError):
    """A model config that cannot be used; the message names the field and the rule."""


@dataclass(frozen=True)
class ClipCfg:
    """The CLIP towers (open_clip) that turn item images and texts into features."""

    arch: str = "outfitter-tiny"  # open_clip architecture (also `hf-hub:org/repo`, `local-dir:/p`)
    pretrained: str | None = (
        None  # open_clip tag (e.g. "openai") or local weights file; None=random
    )
    embed_dim: int = 64  # output width of each tower; checked against the tower when built
    freeze_image: bool = True  # frozen: image features are computed once and cached
    freeze_text: bool = True  # frozen: text features are computed once and cached


@dataclass(frozen=True)
class ItemCfg:
    """The hybrid item encoder: fuses one item's CLIP image and text features into a vector."""

    modalities: tuple[str, ...] = ("image", "text")  # which features to use (ablations)
    fusion: str = "concat"  # concat (+projection, the paper) | sum | gated
    dim: int = 64  # item vector width; also the transformer width
    hidden: int = 128  # hidden width of the projection MLP
    dropout: float = 0.1  # dropout inside the projection


@dataclass(frozen=True)
class TransformerCfg:
    """The outfit transformer encoder over item vectors plus the outfit and target tokens."""

    layers: int = 2  # encoder layers
    heads: int = 4  # attention heads; must divide item.dim
    ff_dim: int = 128  # feed-forward width
    dropout: float = 0.1  # dropout in attention and feed-forward
    max_items: int = 20  # longest outfit accepted (Polyvore outfits have up to 19 items)


@dataclass(frozen=True)
class TargetCfg:
    """How the target item token (retrieval query) is built."""

    use_text: bool = True  # add the CLIP text embedding of the wanted item's description
    use_category: bool = True  # add a learned embedding of the wanted item's category
    source: str = "title"  # training description of the target: its title | its full text
    prompt_prob: float = 0.5  # probability of replacing the description by the category prompt
    prompt_template: str = "a photo of {category}"  # category prompt; {category} = e.g. "shoes"
    subset_prob: float = 0.0  # training: share of descriptions cut to a random subset of words
    infer_category: bool = False  # a head infers the category of a description given without one
    category_drop: float = 0.0  # training: share of targets whose category input is hidden
    category_threshold: float = 0.5  # inferred category's probability above which search keeps
    #                                  to that category (below: the whole catalog)


@dataclass(frozen=True)
class WordsCfg:
    """A learned bag of hashed words over item texts and target descriptions: the lexical channel
    that frozen CLIP text features carry only weakly (the words a user types to name an item)."""

    buckets: int = 0  # hash buckets of the word vocabulary (`model.words`); 0 = no word bag
    dim: int = 64  # word embedding width
    source: str = "title"  # what of an item the bag reads: its title | its full text


@dataclass(frozen=True)
class LossCfg:
    """Training objectives and their weights (total loss = weighted sum)."""

    compatibility: str = "bce"  # bce | focal
    focal_gamma: float = 2.0  # focal loss exponent (compatibility == focal)
    compatibility_weight: float = 1.0  # weight of compatibility_loss
    retrieval_weight: float = 1.0  # weight of retrieval_loss (InfoNCE)
    temperature: float = 0.07  # InfoNCE softmax temperature
    category_negatives: int = 4  # extra same-category negatives sampled per retrieval target
    category_weight: float = 1.0  # weight of category_loss (target.infer_category's head)
    triplet_margin: float = 0.2  # sun2020: margin, scaled by the positive pair's weight
    triplet_weight: float = 1.0  # sun2020: weight of triplet_loss
    triplet_weighted: bool = True  # sun2020: scale the margin by the pair's weight; false = plain


@dataclass(frozen=True)
class Sun2020Cfg:
    """The Sun et al. 2020 baseline: CNN + LSTM item embeddings fused into one latent space."""

    cnn: str = "small"  # small (4 conv blocks) | resnet18 (torchvision)
    cnn_weights: str | None = None  # local torchvision state dict for the CNN; None = random init
    image_size: int = 32  # side the images are resized to
    cnn_width: int = 32  # channels of the first conv block of the small CNN (doubles per block)
    word_dim: int = 64  # word embedding width
    lstm_layers: int = 2  # stacked LSTM layers over the title words
    lstm_hidden: int = 64  # LSTM hidden width
    dim: int = 64  # latent (item vector) width
    max_words: int = 16  # title words read (the rest is cut)
    min_word_count: int = 1  # words rarer than this in the catalog map to <unk>
    pair_temperature: float = 0.1  # pairwise compatibility = sigmoid(cosine / pair_temperature)


@dataclass(frozen=True)
class OptimCfg:
    """Optimiser and schedule defaults (run configs may override them)."""

    lr: float = 1e-3  # AdamW learning rate of the heads
    tower_lr: float = 1e-5  # learning rate of fine-tuned (unfrozen) CLIP towers / sun2020 CNN
    weight_decay: float = 0.01  # AdamW weight decay
    batch_size: int = 64  # outfits per batch (per task)
    epochs: int = 10  # default number of epochs
    grad_clip: float = 1.0  # gradient norm clip; 0 disables


@dataclass(frozen=True)
class ModelConfig:
    """A whole model: which architecture (`kind`) and the config of every part."""

    name: str = "custom"  # registry name or file stem, for humans and run names
    kind: str = "hybrid"  # hybrid | sun2020
    clip: ClipCfg = field(default_factory=ClipCfg)
    item: ItemCfg = field(default_factory=ItemCfg)
    transformer: TransformerCfg = field(default_factory=TransformerCfg)
    target: TargetCfg = field(default_factory=TargetCfg)
    words: WordsCfg = field(default_factory=WordsCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    sun2020: Sun2020Cfg = field(default_factory=Sun2020Cfg)
    optim: OptimCfg = field(default_factory=OptimCfg)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        cfg = _build(cls, data, prefix="")
        validate(cfg)
        return cfg

    def replace(self, overrides: dict[str, Any]) -> ModelConfig:
        """A copy with dotted overrides applied, e.g. {"transformer.layers": 1}."""
        data = self.to_dict()
        for key, value in overrides.items():
            _set_dotted(data, key, value)
        return ModelConfig.from_dict(data)

    @property
    def input_kind(self) -> str:
        """`features`: both towers frozen, the model reads cached features only; `raw`: the
        model holds the towers and reads pixels/tokens for a fine-tuned tower (and cached
        features for a frozen one)."""
        if self.kind == "hybrid" and self.clip.freeze_image and self.clip.freeze_text:
            return "features"
        return "raw"


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"override {key!r}: {where!r} is not a config section")
        node = child
    if parts[-1] not in node:
        raise ConfigError(f"override {key!r}: unknown field; known: {sorted(node)}")
    node[parts[-1]] = value


def _coerce(name: str, hint: Any, value: Any) -> Any:
    """Coerce YAML/CLI values (often strings) to the field's type, or raise naming the field."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{name}: null is not allowed")
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if isinstance(value, str) and value.lower() in ("null", "none") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, inner[0], value)
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        return tuple(_coerce(name, args[0], v) for v in items)
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected true/false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        try:
            out = hint(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected {hint.__name__}, got {value!r}") from None
        if hint is int and float(value) != out:
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return out
    if hint is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return str(value)
    return value


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{prefix}{unknown[0]}: unknown field; {cls.__name__} has {sorted(names)}"
        )
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value or {}, prefix=f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(f"{prefix}{key}", hint, value)
    return cls(**kwargs)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: ModelConfig) -> None:
    """Check cross-field rules; raise ConfigError naming the field, the value and the rule."""
    _check(cfg.kind in KINDS, f"kind={cfg.kind!r}: must be one of {KINDS}")
    item, tr, tg, loss, sun = cfg.item, cfg.transformer, cfg.target, cfg.loss, cfg.sun2020
    _check(
        len(item.modalities) > 0 and set(item.modalities) <= set(MODALITIES),
        f"item.modalities={list(item.modalities)}: must be a non-empty subset of {MODALITIES}",
    )
    _check(item.fusion in FUSIONS, f"item.fusion={item.fusion!r}: must be one of {FUSIONS}")
    for name, value in [
        ("clip.embed_dim", cfg.clip.embed_dim),
        ("item.dim", item.dim),
        ("item.hidden", item.hidden),
        ("transformer.heads", tr.heads),
        ("transformer.ff_dim", tr.ff_dim),
        ("sun2020.image_size", sun.image_size),
        ("sun2020.dim", sun.dim),
        ("sun2020.lstm_layers", sun.lstm_layers),
        ("optim.batch_size", cfg.optim.batch_size),
    ]:
        _check(value > 0, f"{name}={value}: must be > 0")
    _check(tr.layers >= 0, f"transformer.layers={tr.layers}: must be >= 0")
    _check(tr.max_items >= 2, f"transformer.max_items={tr.max_items}: must be >= 2")
    _check(
        item.dim % tr.heads == 0,
        f"transformer.heads={tr.heads} must divide item.dim={item.dim}",
    )
    for name, p in [("item.dropout", item.dropout), ("transformer.dropout", tr.dropout)]:
        _check(0.0 <= p < 1.0, f"{name}={p}: must be in [0, 1)")
    _check(0.0 <= tg.prompt_prob <= 1.0, f"target.prompt_prob={tg.prompt_prob}: must be in [0, 1]")
    _check(tg.source in TARGET_SOURCES, f"target.source={tg.source!r}: one of {TARGET_SOURCES}")
    _check(
        "{category}" in tg.prompt_template,
        f"target.prompt_template={tg.prompt_template!r}: must contain {{category}}",
    )
    _check(tg.use_text or tg.use_category, "target: use_text and use_category are both false")
    for name, p in [("target.subset_prob", tg.subset_prob), ("target.category_drop",
                    tg.category_drop), ("target.category_threshold", tg.category_threshold)]:
        _check(0.0 <= p <= 1.0, f"{name}={p}: must be in [0, 1]")
    _check(
        not tg.infer_category or tg.use_text,
        "target.infer_category=true needs target.use_text=true (it reads the description)",
    )
    _check(
        tg.category_drop == 0 or tg.infer_category,
        f"target.category_drop={tg.category_drop} needs target.infer_category=true",
    )
    _check(
        cfg.words.buckets == 0 or cfg.words.buckets >= 2,
        f"words.buckets={cfg.words.buckets}: must be 0 (off) or >= 2",
    )
    _check(cfg.words.dim > 0, f"words.dim={cfg.words.dim}: must be > 0")
    _check(
        cfg.words.source in TARGET_SOURCES,
        f"words.source={cfg.words.source!r}: one of {TARGET_SOURCES}",
    )
    _check(
        loss.compatibility in COMPAT_LOSSES,
        f"loss.compatibility={loss.compatibility!r}: must be one of {COMPAT_LOSSES}",
    )
    _check(loss.temperature > 0, f"loss.temperature={loss.temperature}: must be > 0")
    _check(loss.category_negatives >= 0, "loss.category_negatives: must be >= 0")
    _check(sun.cnn in CNNS, f"sun2020.cnn={sun.cnn!r}: must be one of {CNNS}")
    _check(sun.pair_temperature > 0, "sun2020.pair_temperature: must be > 0")
    _check(cfg.optim.lr > 0, f"optim.lr={cfg.optim.lr}: must be > 0")


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
        _set_dotted_create(data, key, value)
    return ModelConfig.from_dict(data)


def _set_dotted_create(data: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key in raw YAML data (sections may be absent there); unknown keys are caught
    by `from_dict` with the field's full name."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a config section")
    node[parts[-1]] = value
