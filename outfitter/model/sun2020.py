"""The Sun et al. 2020 baseline: CNN visual + multilayer LSTM semantic embeddings, fused.

*Learning fashion compatibility across categories with deep multimodal neural networks*
(Neurocomputing 2020): each item's image goes through a CNN and its title words through a
stacked LSTM; a fusion module maps both into one latent space where compatible items are close,
trained with a triplet ranking loss whose margin scales with the positive pair's compatibility
weight (`losses.weighted_triplet_loss`). Outfit compatibility is the mean pairwise compatibility
`sigmoid(cos(a, b) / pair_temperature)` over the outfit's item pairs, so the same AUC/FITB
evaluation applies. `query` has no target token: it is the normalised mean of the context item
vectors (the item that is closest to the whole outfit); the target text and category are ignored.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from outfitter.model.config import ModelConfig

PAD, UNK = "<pad>", "<unk>"
_WORD = re.compile(r"[a-z0-9]+")


class WordVocab:
    """The baseline's own word vocabulary (built from catalog titles; stored as JSON)."""

    def __init__(self, words: list[str]):
        if words[:2] != [PAD, UNK]:
            raise ValueError(f"a vocabulary starts with {PAD!r}, {UNK!r}; got {words[:2]}")
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    @staticmethod
    def split(text: str) -> list[str]:
        return _WORD.findall(text.lower())

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 1) -> WordVocab:
        counts = Counter(w for t in texts for w in cls.split(t))
        words = sorted(w for w, c in counts.items() if c >= min_count)
        return cls([PAD, UNK, *words])

    def encode(self, text: str, max_words: int) -> list[int]:
        """Word ids of a text (at least one id: an empty text reads as <unk>)."""
        ids = [self.index.get(w, 1) for w in self.split(text)[:max_words]]
        return ids or [1]

    def to_json(self) -> str:
        return json.dumps({"words": self.words})

    @classmethod
    def from_json(cls, text: str) -> WordVocab:
        return cls(json.loads(text)["words"])


def _small_cnn(width: int) -> tuple[nn.Module, int]:
    layers, c_in = [], 3
    for i in range(4):
        c_out = width * 2**i
        layers += [
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2) if i < 3 else nn.AdaptiveAvgPool2d(1),
        ]
        c_in = c_out
    return nn.Sequential(*layers, nn.Flatten()), c_in


def _resnet18(weights: str | None) -> tuple[nn.Module, int]:
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(
                f"sun2020.cnn_weights={weights!r} does not exist; pass a local torchvision "
                "resnet18 state dict (e.g. resnet18-f37072fd.pth) or null for random init"
            )
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        net.load_state_dict(state, strict=False)
    net.fc = nn.Identity()
    return net, 512


class Sun2020Model(nn.Module):
    """CNN + LSTM item encoder with a fusion module; pairwise outfit compatibility."""

    input_kind = "raw"

    def __init__(self, cfg: ModelConfig, vocab: WordVocab, *, load_pretrained: bool = True):
        super().__init__()
        self.cfg, self.vocab, sun = cfg, vocab, cfg.sun2020
        if sun.cnn == "small":
            self.cnn, cnn_out = _small_cnn(sun.cnn_width)
        else:
            self.cnn, cnn_out = _resnet18(sun.cnn_weights if load_pretrained else None)
        self.words = nn.Embedding(len(vocab), sun.word_dim, padding_idx=0)
        self.lstm = nn.LSTM(sun.word_dim, sun.lstm_hidden, sun.lstm_layers, batch_first=True)
        self.visual = nn.Linear(cnn_out, sun.dim)
        self.semantic = nn.Linear(sun.lstm_hidden, sun.dim)
        self.fusion = nn.Sequential(
            nn.ReLU(), nn.Linear(2 * sun.dim, sun.dim), nn.ReLU(), nn.Linear(sun.dim, sun.dim)
        )

    def encode_items(self, inputs: dict) -> torch.Tensor:
        """L2-normalised item vectors (U, D) from `pixels` (U, 3, H, W) and `tokens` (U, L).

        `item.modalities` ablates a branch: a modality left out enters the fusion as zeros.
        """
        modalities = self.cfg.item.modalities
        tokens = inputs["tokens"]  # (U, L), 0 = padding
        if "image" in modalities:
            visual = self.visual(self.cnn(inputs["pixels"]))  # (U, D)
        else:
            visual = tokens.new_zeros(len(tokens), self.cfg.sun2020.dim, dtype=torch.float)
        if "text" in modalities:
            lengths = (tokens != 0).sum(1).clamp(min=1).cpu()
            packed = nn.utils.rnn.pack_padded_sequence(
                self.words(tokens), lengths, batch_first=True, enforce_sorted=False
            )
            _, (h, _) = self.lstm(packed)  # h: (layers, U, H)
            semantic = self.semantic(h[-1])  # (U, D)
        else:
            semantic = torch.zeros_like(visual)
        fused = self.fusion(torch.cat([visual, semantic], dim=-1))  # (U, D)
        return F.normalize(fused, dim=-1)

    def pair_scores(self, item_vecs: torch.Tensor) -> torch.Tensor:
        """Pairwise compatibility probabilities (B, N, N)."""
        cos = item_vecs @ item_vecs.transpose(1, 2)  # (B, N, N)
        return torch.sigmoid(cos / self.cfg.sun2020.pair_temperature)

    def compatibility_logits(self, item_vecs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """logit of the mean pairwise compatibility (B,) over distinct item pairs."""
        mask = mask.bool()
        n = mask.shape[1]
        pairs = mask.unsqueeze(1) & mask.unsqueeze(2)  # (B, N, N)
        pairs &= ~torch.eye(n, dtype=torch.bool, device=mask.device)
        p = (self.pair_scores(item_vecs) * pairs).sum((1, 2)) / pairs.sum((1, 2)).clamp(min=1)
        return torch.logit(p.clamp(1e-6, 1 - 1e-6))  # (B,)

    def query(self, context_vecs, mask, target_text=None, target_category=None) -> torch.Tensor:
        """Normalised mean of the context item vectors (B, D); target text/category unused."""
        m = mask.unsqueeze(-1).to(context_vecs.dtype)  # (B, N, 1)
        return F.normalize((context_vecs * m).sum(1), dim=-1)
