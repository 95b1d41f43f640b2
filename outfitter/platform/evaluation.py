"""`outfitter evaluate`: metrics of a model version or checkpoint on a split, logged to MLflow.

The same function evaluates the best checkpoint at the end of training, so a registered version's
validation numbers are reproduced exactly by `outfitter evaluate --split valid`.
"""

from __future__ import annotations

from pathlib import Path


def evaluate_checkpoint(
    checkpoint_dir: Path,
    data_dir: Path,
    split: str = "test",
    *,
    version: str | None = None,
    features=None,
    cache_dir: Path | None = None,
    device: str = "auto",
    data_format: str | None = None,
) -> dict:
    """Compatibility AUC, FITB accuracy (both ways) and recall@10 of a checkpoint on a split;
    on an Amazon co-purchase folder, pair AUC, hit@k and MRR (`model.evaluate_pairs`).

    Args:
        version: Polyvore version; defaults to the one the checkpoint was trained on.
        data_format: polyvore or amazon; None detects it from the folder (`data.formats`).
        features: cached tower features of the catalog; embedded (cached) when needed and absent.
        device: where the model (and the towers of target texts) run (`resolve_device`).
    """
    from outfitter.platform.vectors import open_checkpoint

    opened = open_checkpoint(
        checkpoint_dir, data_dir, data_format=data_format, features=features, device=device,
        cache_dir=cache_dir,
    )  # fmt: skip
    return evaluate_opened(opened, split, version=version)


def evaluate_opened(opened, split: str = "test", *, version: str | None = None) -> dict:
    """`evaluate_checkpoint` of an opened checkpoint (`platform.vectors`): its catalog vectors
    are encoded once, whichever splits are evaluated."""
    import torch

    from outfitter.data import load_split
    from outfitter.model.evaluate_pairs import evaluate_split

    version = version or opened.meta.get("settings", {}).get("version", "nondisjoint")
    data = load_split(opened.data_dir, version, split, opened.catalog, opened.data_format)
    if not data.compatibility and not data.fitb:
        raise ValueError(
            f"{opened.data_dir}/{version} has no compatibility or FITB task file for split "
            f"{split!r}; evaluate on 'valid' or 'test'"
        )
    vecs = opened.item_vectors_tensor()  # (M, D)
    with torch.no_grad():
        metrics = evaluate_split(opened.model, opened.builder, data, opened.catalog, vecs=vecs)
    return {k: (float(v) if isinstance(v, float) else v) for k, v in metrics.items()}


def evaluate_model(
    uri: str,
    data_dir: Path,
    split: str = "test",
    *,
    version: str | None = None,
    workdir: Path | None = None,
    log: bool = True,
    data_format: str | None = None,
) -> dict:
    """Evaluate a registered model (or local checkpoint) and log the results to its run.

    `data_format` in the result names the folder's format, and so which metrics were computed.
    """
    from outfitter.data import detect_format
    from outfitter.platform import registry

    fmt = detect_format(data_dir, data_format)  # before MLflow: a bad folder fails first
    registry.configure_tracking(workdir)
    resolved = registry.resolve_model(uri)
    metrics = evaluate_checkpoint(
        resolved.checkpoint_dir, data_dir, split, version=version, data_format=fmt
    )
    result = {
        "model": uri,
        "model_version": resolved.version,
        "split": split,
        "data_format": fmt,
        **metrics,
    }
    if log and resolved.run_id:
        from mlflow import MlflowClient

        client = MlflowClient()
        for key, value in metrics.items():  # REPORTED and the description-retrieval metrics
            if isinstance(value, (int, float)) and not key.startswith("n_"):
                client.log_metric(resolved.run_id, f"eval_{split}_{key}", float(value))
    return result
