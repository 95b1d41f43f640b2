"""CLIP image and text towers, built by open_clip from an architecture name and a pretrained source.

`create_towers(cfg.clip)` calls `open_clip.create_model_and_transforms(arch, pretrained=...)`,
where `pretrained` is an open_clip tag (downloaded from the hub) or a local weights file. The tiny
architecture `outfitter-tiny` (tests, demo) is registered with open_clip on first use.
`compute_features` runs frozen towers once over a catalog: the cached-feature fast path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from outfitter.model.config import ClipCfg

ARCH_DIR = Path(__file__).parent / "clip_archs"  # open_clip model configs of our own archs
_REGISTERED = False


class TowerWeightsError(RuntimeError):
    """Pretrained tower weights could not be loaded (hub unreachable, file missing, wrong arch)."""


def register_archs() -> None:
    """Register `outfitter-tiny` (and any JSON in clip_archs/) with open_clip's model registry."""
    global _REGISTERED
    if not _REGISTERED:
        import open_clip

        open_clip.add_model_config(ARCH_DIR)
        _REGISTERED = True


def _weights_error(cfg: ClipCfg, err: Exception) -> TowerWeightsError:
    return TowerWeightsError(
        f"cannot load CLIP tower weights clip.arch={cfg.arch!r} clip.pretrained={cfg.pretrained!r}"
        f" ({type(err).__name__}: {str(err)[:300]}). Without access to the model hub, download the"
        " weights elsewhere and pass a local file: clip.pretrained=/path/to/"
        "open_clip_pytorch_model.bin (with an architecture name such as clip.arch=ViT-B-32; for an"
        " hf-hub model use clip.arch=local-dir:/path/to/downloaded/repo), or pass"
        " clip.pretrained=null for randomly initialised towers."
    )


class Towers:
    """An open_clip model with its image transform and tokenizer; encodes images and texts."""

    def __init__(self, model: nn.Module, preprocess, tokenizer, cfg: ClipCfg):
        self.model = model
        self.preprocess = preprocess  # PIL image -> (3, H, W) normalised tensor
        self.tokenizer = tokenizer  # list[str] -> (N, L) token ids
        self.cfg = cfg
        size = model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.embed_dim = int(model.text_projection.shape[1]) if _has_proj(model) else cfg.embed_dim

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts))  # (N, L)

    def pixels(self, image) -> torch.Tensor:
        """The tower's input (3, H, W) of a PIL image: a catalog item's and a request's alike."""
        from outfitter.model.preprocess import rgb

        return self.preprocess(rgb(image))  # (3, H, W)

    def pixel_batch(self, images: Sequence) -> torch.Tensor:
        """`pixels` of many PIL images (N, 3, H, W), the same tensors, faster: the transform's
        image steps (resize, crop, mode) run per image, its ToTensor and Normalize once on the
        stacked batch (per image they were a third of embedding a catalog)."""
        from torchvision.transforms import Normalize, ToTensor
        from torchvision.transforms import functional as F

        from outfitter.model.preprocess import rgb

        steps = list(getattr(self.preprocess, "transforms", []))
        if (
            len(steps) < 2
            or not isinstance(steps[-2], ToTensor)
            or not isinstance(steps[-1], Normalize)
        ):  # another transform: image by image
            return torch.stack([self.pixels(image) for image in images])
        *image_steps, _, normalize = steps
        arrays = []
        for image in images:
            image = rgb(image)
            for step in image_steps:
                image = step(image)
            arrays.append(np.asarray(rgb(image)))  # (H, W, 3) uint8
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        # ToTensor, then Normalize: the same operations in the same order, in place on one
        # float copy (a copy per step was a third of this function)
        pixels = batch.to(torch.get_default_dtype(), memory_format=torch.contiguous_format)
        return F.normalize(pixels.div_(255), normalize.mean, normalize.std, inplace=True)

    def load_pixels(self, paths: Sequence[str | Path]) -> torch.Tensor:
        """`pixel_batch` of image files (N, 3, H, W)."""
        from outfitter.data.images import load_image

        return self.pixel_batch([load_image(path) for path in paths])

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels.to(self.device), normalize=True)  # (N, D)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens.to(self.device), normalize=True)  # (N, D)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """L2-normalised text features (N, D) float32, in eval mode."""
        self.model.eval()
        out = [
            self.encode_tokens(self.tokenize(texts[i : i + batch_size])).float().cpu()
            for i in range(0, len(texts), batch_size)
        ]
        return torch.cat(out).numpy() if out else np.zeros((0, self.embed_dim), np.float32)

    @torch.no_grad()
    def encode_images(self, paths: Sequence[str | Path], batch_size: int = 128) -> np.ndarray:
        """L2-normalised image features (N, D) float32 of image files, in eval mode."""
        self.model.eval()
        out = []
        for i in range(0, len(paths), batch_size):
            pixels = self.load_pixels(paths[i : i + batch_size])
            out.append(self.encode_pixels(pixels).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.embed_dim), np.float32)

    def fingerprint(self) -> dict:
        """What produced the features (saved in FeatureTable.meta, checked before reuse)."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes()[:4096])
        return {
            "arch": self.cfg.arch,
            "pretrained": self.cfg.pretrained,
            "embed_dim": self.embed_dim,
            "weights_sha256": digest.hexdigest()[:16],
        }


def _has_proj(model: nn.Module) -> bool:
    proj = getattr(model, "text_projection", None)
    return isinstance(proj, torch.Tensor) and proj.ndim == 2


def create_towers(cfg: ClipCfg, *, load_pretrained: bool = True, device="cpu") -> Towers:
    """Build the CLIP towers of `cfg` (open_clip arch + pretrained tag or local file).

    Args:
        load_pretrained: False builds the architecture only (weights restored from a checkpoint).

    Raises:
        TowerWeightsError: the weights cannot be loaded; the message says what to pass instead.
    """
    import open_clip

    register_archs()
    pretrained = cfg.pretrained if load_pretrained else None
    if pretrained and not Path(pretrained).exists() and ("/" in pretrained or "." in pretrained):
        err = FileNotFoundError(f"{pretrained} does not exist")
        raise _weights_error(cfg, err)
    schema_arch = cfg.arch.startswith(("hf-hub:", "local-dir:"))
    try:
        # Seeded: randomly initialised towers (pretrained=None) must be the same in every
        # process, or features cached by one process would not match another's text prompts.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model, _, preprocess = open_clip.create_model_and_transforms(
                cfg.arch,
                pretrained=None if schema_arch else pretrained,
                load_weights=load_pretrained or not schema_arch,
                device=device,
            )
        tokenizer = open_clip.get_tokenizer(cfg.arch)
    except Exception as err:  # hub errors, missing files, bad tags: one actionable message
        if cfg.arch not in open_clip.list_models() and not schema_arch:
            raise TowerWeightsError(
                f"clip.arch={cfg.arch!r} is not an open_clip architecture; "
                f"known: {open_clip.list_models()[:8]}... (see open_clip.list_models())"
            ) from err
        raise _weights_error(cfg, err) from err
    towers = Towers(model, preprocess, tokenizer, cfg)
    if towers.embed_dim != cfg.embed_dim:
        raise TowerWeightsError(
            f"clip.embed_dim={cfg.embed_dim} but the {cfg.arch!r} towers output "
            f"{towers.embed_dim}-d features; set clip.embed_dim={towers.embed_dim}"
        )
    return towers


def set_trainable(towers: Towers, cfg: ClipCfg) -> None:
    """Freeze or unfreeze each tower as the config says."""
    model = towers.model
    text_parts = [m for n, m in model.named_children() if n != "visual"]
    for p in model.visual.parameters():
        p.requires_grad_(not cfg.freeze_image)
    for part in text_parts:
        for p in part.parameters():
            p.requires_grad_(not cfg.freeze_text)
    for name in ("text_projection", "positional_embedding", "logit_scale", "logit_bias"):
        param = getattr(model, name, None)
        if isinstance(param, nn.Parameter):
            param.requires_grad_(not cfg.freeze_text and name != "logit_scale")


def compute_features(towers: Towers, catalog, ids: Sequence[str] | None = None, batch_size=128):
    """Image and text features of catalog items (frozen towers): a `FeatureTable`.

    Text = `Item.text` (title + description), the text the item encoder reads.
    """
    from outfitter.data.features import FeatureTable

    ids = list(catalog.item_ids if ids is None else ids)
    image = towers.encode_images([catalog.image_path(i) for i in ids], batch_size=batch_size)
    text = towers.encode_texts([catalog.items[i].text for i in ids], batch_size=2 * batch_size)
    return FeatureTable(ids, image, text, meta={"towers": towers.fingerprint()})
