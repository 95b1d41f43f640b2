"""MLflow "models from code" definition of an Outfitter model version.

Logged with `mlflow.pyfunc.log_model(python_model=<this file>, artifacts={"checkpoint": DIR})`, so
the registry holds code + a self-describing checkpoint (config.json, model.safetensors, meta.json)
and nothing is pickled. `predict` scores outfits given as lists of catalog item ids, using the
item features logged beside the weights (`checkpoint/features/`) when the model reads cached
features; raw-input models read the catalog folder named in `model_config["data_dir"]`.
"""

from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel


class OutfitterPyfunc(PythonModel):
    def load_context(self, context):
        from outfitter.platform.scoring import OutfitScorer

        data_dir = (context.model_config or {}).get("data_dir")
        self.scorer = OutfitScorer.from_checkpoint(context.artifacts["checkpoint"], data_dir=data_dir)

    def predict(self, context, model_input, params=None):
        """`model_input`: a DataFrame with an `item_ids` column (list of ids per row) → scores."""
        outfits = [list(ids) for ids in model_input["item_ids"]]
        return self.scorer.score_outfits(outfits)


mlflow.models.set_model(OutfitterPyfunc())
