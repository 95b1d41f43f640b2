"""MLflow "models from code" definition of an Outfitter model version.

Logged with `mlflow.pyfunc.log_model(python_model=<this file>, artifacts={"checkpoint": DIR})`, so
the registry holds code + a self-describing checkpoint (config.json, model.safetensors, meta.json,
towers.safetensors) and nothing is pickled. `predict` scores outfits given as lists of catalog item
ids of the catalog folder named in `model_config["data_dir"]` (the training data by default).
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class OutfitterPyfunc(PythonModel):
    def load_context(self, context):
        from pathlib import Path

        from outfitter.platform.vectors import open_checkpoint

        data_dir = (context.model_config or {}).get("data_dir")
        if not data_dir:
            raise ValueError(
                "this model needs model_config={'data_dir': CATALOG} to resolve item ids"
            )
        self.opened = open_checkpoint(
            Path(context.artifacts["checkpoint"]), Path(data_dir), device="cpu"
        )
        self.model, self.cfg, self.catalog = self.opened.model, self.opened.cfg, self.opened.catalog

    def predict(self, context, model_input: pd.DataFrame, params=None) -> list[float]:
        """`model_input`: a DataFrame with an `item_ids` column (a list of ids per row) →
        compatibility probabilities, one per row. Only the items named are encoded (features
        of a frozen-tower model computed for them alone), not the whole catalog."""
        import torch

        from outfitter.model.evaluate import encode_catalog, outfit_logits
        from outfitter.model.towers import compute_features

        outfits = [[str(i) for i in ids] for ids in model_input["item_ids"]]
        ids = sorted({i for outfit in outfits for i in outfit})
        unknown = [i for i in ids if i not in self.catalog.items]
        if unknown:
            raise ValueError(f"unknown item ids: {unknown[:10]}")
        builder = self.opened.builder
        if self.cfg.input_kind == "features":
            builder._features = compute_features(builder.towers, self.catalog, ids)
        position = {i: p for p, i in enumerate(ids)}
        with torch.no_grad():
            vecs = encode_catalog(self.model, builder, ids)  # (U, D)
        rows = [[position[i] for i in outfit] for outfit in outfits]
        logits = outfit_logits(self.model, vecs, rows, batch_size=1)  # one outfit at a time
        return [float(p) for p in torch.sigmoid(torch.from_numpy(logits))]


mlflow.models.set_model(OutfitterPyfunc())
