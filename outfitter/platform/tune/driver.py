"""The driver of `outfitter tune`: MLflow parent run, Tuner (new or restored), results, registry.

Re-running the same command after an interruption restores the Tuner from its storage path and
re-uses the search's unfinished MLflow parent run, so nothing already tried is lost or repeated.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from outfitter.platform.tune.config import SearchConfig
from outfitter.platform.tune.search import SearchOutcome, best_row, build_tuner, results_table


def run_search(
    search: SearchConfig,
    data_dir: Path,
    *,
    workdir: Path,
    storage_path: str,
    model_name: str = "outfitter",
    data_format: str | None = None,
    overrides: dict | None = None,
) -> SearchOutcome:
    """Run or resume `search` on `data_dir`; log, tabulate, plot and register its best trial.

    `data_format`: polyvore or amazon (`data.formats`); None detects it from the folder.
    `overrides`: dotted model config overrides every trial starts from (`outfitter tune --set`,
    e.g. `clip.pretrained`); the search space's `model.*` samples are applied over them.
    """
    import mlflow
    from ray import tune

    from outfitter.model import load_config
    from outfitter.platform import registry
    from outfitter.platform.train.runs import (
        EXPERIMENT,
        find_or_start_run,
        shared_inputs,
    )
    from outfitter.platform.train.settings import TrainSettings
    from outfitter.platform.train.trainer import checked_storage_path
    from outfitter.platform.tune.search import run_trial

    overrides = dict(overrides or {})
    pretrained = overrides.get("clip.pretrained")
    if pretrained and Path(pretrained).is_file():  # a trial runs in its own folder
        overrides["clip.pretrained"] = str(Path(pretrained).resolve())
    tracking_uri = registry.configure_tracking(workdir)
    experiment_id = registry.ensure_experiment(EXPERIMENT)
    base_cfg = load_config(search.model_config_name, overrides=overrides or None)
    base_settings = (
        TrainSettings.from_dict(search.settings)
        .with_overrides(
            workers=search.resources_per_trial.workers,
            use_gpu=search.resources_per_trial.use_gpu,
            cpus_per_worker=search.resources_per_trial.cpus_per_worker,
            monitor=search.metric,
            monitor_mode=search.mode,
        )
        .resolve(base_cfg)
    )
    if search.scheduler.type == "asha" and base_settings.epochs < search.scheduler.max_t:
        base_settings = base_settings.with_overrides(epochs=search.scheduler.max_t)
    storage_path = checked_storage_path(storage_path)
    inputs = shared_inputs(base_cfg, data_dir, data_format=data_format)  # starts Ray
    base_settings = base_settings.with_overrides(
        storage_path=str(Path(storage_path) / f"{search.name}-trials")
    )
    with find_or_start_run(f"tune-{search.name}", experiment_id) as parent:
        mlflow.log_dict(search.model_dump(by_alias=True), "config/search.json")
        base = {
            "model_config_name": search.model_config_name,
            "model_overrides": overrides,
            "settings": base_settings.to_dict(),
            "tracking_uri": tracking_uri,
            "loop": inputs,
        }
        trainable = tune.with_parameters(
            run_trial,
            search=search.model_dump(),
            base=base,
            parent_run_id=parent.info.run_id,
            experiment_id=experiment_id,
        )
        trainable = tune.with_resources(trainable, {"CPU": search.resources_per_trial.driver_cpus})
        tuner, restored = build_tuner(search, trainable=trainable, storage_path=storage_path)
        results = tuner.fit()
        params, metric, checkpoint = best_row(results, search.metric, search.mode)
        table = results_table(results, search.metric)
        stopped = _stopped_early(table, base_settings.epochs)
        mlflow.log_metrics(
            {f"best_{search.metric}": metric, "trials": len(table), "stopped_early": stopped}
        )
        mlflow.log_params({f"best.{k}": v for k, v in params.items()})
        table_path = Path(workdir) / f"tune-{search.name}-results.csv"
        table.to_csv(table_path, index=False)
        mlflow.log_artifact(str(table_path), artifact_path="tune")
        _log_plot(results, search.metric)
        version = None
        if search.register_best:
            version = _register_best(Path(checkpoint), inputs, model_name, search, metric)
    return SearchOutcome(
        params,
        metric,
        Path(checkpoint),
        len(table),
        stopped,
        table_path,
        version,
        parent.info.run_id,
    )


def _stopped_early(table, max_epochs: int) -> int:
    """Trials that ran fewer epochs than the budget without error (the scheduler stopped them)."""
    return int(((table["epochs"] < max_epochs) & ~table["error"]).sum())


def _register_best(
    checkpoint: Path, inputs: dict, model_name: str, search: SearchConfig, metric: float
) -> str:
    """Log the best checkpoint as a model in a child run and register it as `challenger`."""
    import mlflow

    from outfitter.platform import registry

    with mlflow.start_run(run_name=f"tune-{search.name}-best", nested=True):
        mlflow.log_metric(f"best_{search.metric}", metric)
        mlflow.log_metric(search.metric, metric)
        info = registry.log_checkpoint_model(checkpoint, data_dir=inputs["data_dir"])
        return registry.register_model(
            info.model_uri, name=model_name, alias="challenger", tags={"tune_search": search.name}
        )


def _log_plot(results, metric: str) -> None:
    """Metric per epoch of every trial (ASHA's early stops show as short lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    fig, ax = plt.subplots(figsize=(7, 4))
    for result in results:
        df = result.metrics_dataframe
        if df is not None and metric in df:
            ax.plot(
                df["training_iteration"], df[metric], marker="o", label=Path(result.path).name[-12:]
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title("Tune trials")
    ax.legend(fontsize=6)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trials.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        mlflow.log_artifact(str(path), artifact_path="tune")
    plt.close(fig)
