"""Cached item features: one row of image and text tower outputs per item id.

Written by `platform.embed` (Ray Data), read by training and serving, so a model that works on
features never re-runs the towers. On disk: `ids.json`, `image.npy` (M, Di) float32, `text.npy`
(M, Dt) float32 and `meta.json` (tower fingerprint, dims, whatever the writer records).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from outfitter.data.errors import DatasetError

FILES = ("ids.json", "image.npy", "text.npy", "meta.json")


class FeatureTable:
    """Image and text features keyed by item id."""

    def __init__(
        self,
        ids: list[str],
        image: np.ndarray,
        text: np.ndarray,
        meta: dict[str, Any] | None = None,
    ) -> None:
        ids = [str(i) for i in ids]
        image = np.asarray(image, dtype=np.float32)
        text = np.asarray(text, dtype=np.float32)
        if image.ndim != 2 or text.ndim != 2:
            raise ValueError(
                f"features must be 2-D (M, D); got image {image.shape}, text {text.shape}"
            )
        if not len(ids) == len(image) == len(text):
            raise ValueError(
                f"{len(ids)} ids but {len(image)} image rows and {len(text)} text rows"
            )
        self.ids = ids
        self.image = image  # (M, Di)
        self.text = text  # (M, Dt)
        self.meta: dict[str, Any] = dict(meta or {})
        self._row = {item_id: k for k, item_id in enumerate(ids)}
        if len(self._row) != len(ids):
            dup = next(i for k, i in enumerate(ids) if self._row[i] != k)
            raise ValueError(f"duplicate item id {dup!r} in the feature table")

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._row

    @property
    def image_dim(self) -> int:
        return self.image.shape[1]

    @property
    def text_dim(self) -> int:
        return self.text.shape[1]

    def rows(self, ids: list[str]) -> np.ndarray:
        """Row positions (int64) of `ids`; KeyError listing the ids that are not in the table."""
        try:
            return np.fromiter((self._row[i] for i in ids), dtype=np.int64, count=len(ids))
        except KeyError:
            unknown = [i for i in ids if i not in self._row]
            shown = ", ".join(map(repr, unknown[:10]))
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise KeyError(
                f"{len(unknown)} item ids have no features: {shown}{more}; re-run the embedding "
                "for this catalog"
            ) from None

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "ids.json").write_text(json.dumps(self.ids), encoding="utf-8")
        np.save(directory / "image.npy", self.image)
        np.save(directory / "text.npy", self.text)
        meta = {
            **self.meta,
            "n_items": len(self),
            "image_dim": self.image_dim,
            "text_dim": self.text_dim,
        }
        (directory / "meta.json").write_text(
            json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8"
        )
        return directory

    @classmethod
    def load(cls, directory: str | Path, mmap: bool = False) -> FeatureTable:
        """Read a saved table; `mmap=True` maps the arrays instead of reading them."""
        directory = Path(directory)
        missing = [f for f in FILES if not (directory / f).is_file()]
        if missing:
            raise DatasetError(f"{directory}: not a feature table (missing {', '.join(missing)})")
        try:
            ids = json.loads((directory / "ids.json").read_text(encoding="utf-8"))
            meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
            mode = "r" if mmap else None
            image = np.load(directory / "image.npy", mmap_mode=mode, allow_pickle=False)
            text = np.load(directory / "text.npy", mmap_mode=mode, allow_pickle=False)
        except (json.JSONDecodeError, ValueError, OSError) as e:
            raise DatasetError(f"{directory}: corrupt feature table ({e}); embed again") from None
        return cls(ids, image, text, meta)
