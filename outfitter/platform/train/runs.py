"""A tracked training run: dataset check → cached features → Ray Train → MLflow run → registry.

`shared_inputs` is shared with Tune (same dataset check, same feature cache, same loop config);
`train_and_register` is what `outfitter train` and the demo call. The MLflow run is named after the
Ray run, and found again on a re-run of the same command, so a resumed run keeps one MLflow run.
"""

from __future__ import annotations

import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from outfitter.platform.train.settings import TrainSettings

EXPERIMENT = "outfitter"


@dataclass
class TrainOutcome:
    """What a finished training run produced."""

    run_id: str
    model_version: str
    model_name: str
    checkpoint_dir: Path
    valid: dict = field(default_factory=dict)
    test: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    promoted: bool = False


class EpochProgress:
    """A progress bar of the epochs of a run, read from the metrics rank 0 logs to MLflow.

    The driver only waits in `trainer.fit()`; the workers report to Ray's controller. MLflow is
    where every epoch lands anyway, so a thread polls it: no extra channel from the workers.
    """

    def __init__(self, tracking_uri: str, run_id: str, epochs: int, monitor: str, every_s=1.0):
        self.tracking_uri, self.run_id, self.epochs, self.monitor = (
            tracking_uri, run_id, epochs, monitor,
        )  # fmt: skip
        self.every_s, self._stop = every_s, threading.Event()

    def __enter__(self) -> EpochProgress:
        self._thread = threading.Thread(target=self._watch, name="epoch-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _watch(self) -> None:
        from mlflow import MlflowClient
        from rich.progress import Progress

        client = MlflowClient(tracking_uri=self.tracking_uri)
        with Progress(transient=False) as bar:
            task = bar.add_task("training: starting the workers", total=self.epochs)
            while not self._stop.wait(self.every_s):
                try:
                    metrics = client.get_run(self.run_id).data.metrics
                except Exception:  # a busy store: try again at the next tick
                    continue
                if "epoch" in metrics:
                    bar.update(
                        task, completed=metrics["epoch"], description=self._describe(metrics)
                    )
            try:  # the last epoch may land between two ticks
                metrics = client.get_run(self.run_id).data.metrics
                bar.update(
                    task, completed=metrics.get("epoch", 0), description=self._describe(metrics)
                )
            except Exception:
                pass

    def _describe(self, metrics: dict) -> str:
        epoch = int(metrics.get("epoch", 0))
        parts = [f"training: epoch {epoch}/{self.epochs}"]
        if "train_loss" in metrics:
            parts.append(f"loss {metrics['train_loss']:.3f}")
        if self.monitor in metrics:
            parts.append(f"{self.monitor} {metrics[self.monitor]:.3f}")
        return " · ".join(parts)


def _check_and_parse(data_dir: Path, data_format: str | None, version: str | None):
    """`shared_inputs`' Ray task: ({data_format, catalog_stamp}, catalog) of a dataset that
    passed the check (never train on a broken one: DatasetError with the report). `version`:
    the only Polyvore version checked (None: both)."""
    from outfitter.data import check_dataset, detect_format, load_catalog
    from outfitter.platform.embed import catalog_stamp

    fmt = detect_format(data_dir, data_format)  # one line for a folder of neither format
    report = check_dataset(data_dir, versions=[version] if version else None)
    catalog = report.catalog() or load_catalog(data_dir, fmt)
    return {"data_format": fmt, "catalog_stamp": catalog_stamp(catalog)}, catalog


def shared_inputs(
    model_cfg,
    data_dir: Path,
    *,
    cache_dir: Path | None = None,
    data_format: str | None = None,
    version: str | None = None,
) -> dict:
    """Check the dataset, embed it if the model reads cached features, and put the loop inputs
    in Ray's object store, once, for every worker and trial (starting Ray if need be).

    `version`: the Polyvore version the run trains on, the only one checked (None: both).
    Returns `data_dir` (absolute), `data_format` (polyvore or amazon: detected, or `data_format`
    when given), `catalog_ref` and `features_ref` (None for a model that reads no cached
    features): the loop config's names (`shared_values` reads them back); and `catalog_stamp`
    (`embed.catalog_stamp`, which keys the feature and vector caches).

    The check and the catalog's parse run in a Ray task on this node, in a worker process that
    exits after it: the catalog goes from there to the store and the driver never parses it. At
    200k items the parse left ~0.2 GiB of freed memory in the process that did it (Python gives
    an arena back only when all of it is free), which the driver held through training. The
    features are read from the cache here, or embedded here on a miss (with progress bars). A
    worker unpickles the catalog instead of parsing the metadata JSON: at 200k items 1 s
    instead of 5.5, and ~100 MB instead of ~240.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from outfitter.platform.local_ray import ensure_ray

    ensure_ray()
    data_dir = Path(data_dir).resolve()
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    check = ray.remote(num_cpus=0, num_returns=2, max_calls=1, scheduling_strategy=here)(
        _check_and_parse
    )
    meta_ref, catalog_ref = check.remote(data_dir, data_format, version)
    try:
        meta = ray.get(meta_ref)
    except ray.exceptions.RayTaskError as err:  # the check's own error (DatasetError: a report)
        raise err.cause from err
    features_ref = None
    if model_cfg.input_kind == "features":
        from outfitter.platform.embed import cached_features, embed_catalog, feature_folder

        features = cached_features(feature_folder(meta["catalog_stamp"], model_cfg.clip, cache_dir))
        if features is None:
            catalog = ray.get(catalog_ref)
            features, _, _ = embed_catalog(
                catalog, model_cfg.clip, cache_dir=cache_dir, stamp=meta["catalog_stamp"]
            )
            del catalog
        features_ref = ray.put(features)
        del features  # the driver reads the store's copy after training
    return {
        "data_dir": str(data_dir),
        "data_format": meta["data_format"],
        "catalog_ref": catalog_ref,
        "features_ref": features_ref,
        "catalog_stamp": meta["catalog_stamp"],
    }


def shared_values(inputs: dict) -> tuple:
    """(catalog, features) of `shared_inputs`, read back from the store (the features
    zero-copy), for what the driver does after training."""
    import ray

    catalog = ray.get(inputs["catalog_ref"])
    features = None if inputs["features_ref"] is None else ray.get(inputs["features_ref"])
    return catalog, features


def loop_config(model_cfg, settings: TrainSettings, inputs: dict, mlflow_info: dict | None) -> dict:
    """The plain-value config of `train_loop_per_worker`, from `shared_inputs` (the catalog and
    features travel via the object store)."""
    return {
        "model_config": model_cfg.to_dict(),
        "settings": settings.to_dict(),
        **{k: inputs[k] for k in ("data_dir", "data_format", "catalog_ref", "features_ref")},
        "mlflow": mlflow_info,
    }


def find_or_start_run(run_name: str, experiment_id: str):
    """Re-use the unfinished MLflow run of the same Ray run name (resume), else start one."""
    import mlflow

    mlflow.set_experiment(experiment_id=experiment_id)
    found = mlflow.search_runs(
        [experiment_id],
        filter_string=f"tags.`outfitter.run_name` = '{run_name}'",
        output_format="list",
    )
    if any(run.info.status == "FINISHED" for run in found):
        raise ValueError(
            f"a run named {run_name!r} already finished (MLflow run {found[0].info.run_id}); "
            "pass a new --run-name to train again (re-running a name resumes an unfinished run)"
        )
    if found:
        return mlflow.start_run(run_id=found[0].info.run_id)
    return mlflow.start_run(run_name=run_name, tags={"outfitter.run_name": run_name})


def train_and_register(
    model_config: str,
    data_dir: Path,
    settings: TrainSettings,
    *,
    workdir: Path,
    overrides: dict | None = None,
    model_name: str = "outfitter",
    promote_if_better: bool = False,
    cache_dir: Path | None = None,
    data_format: str | None = None,
) -> TrainOutcome:
    """Train on Ray, evaluate the best checkpoint, log everything to MLflow, register a version.

    `data_format`: polyvore or amazon (`data.formats`); None detects it from the folder.
    """
    import mlflow

    from outfitter.model import load_config
    from outfitter.platform import registry
    from outfitter.platform.train.trainer import (
        best_checkpoint_dir,
        build_trainer,
        checked_storage_path,
    )
    from outfitter.platform.vectors import open_checkpoint

    checked_storage_path(settings.storage_path)  # pre-flight: unwritable or full storage first
    model_cfg = load_config(model_config, overrides=overrides or None)
    settings = settings.resolve(model_cfg)
    # The MLflow store is set up (a new one runs MLflow's schema migrations: ~2 s) beside Ray's
    # start and the dataset check, which wait on other processes.
    with ThreadPoolExecutor(1, thread_name_prefix="mlflow-store") as pool:
        store = pool.submit(_tracking_store, workdir)
        inputs = shared_inputs(
            model_cfg, data_dir, cache_dir=cache_dir, data_format=data_format,
            version=settings.version,
        )  # fmt: skip
        tracking_uri, experiment_id = store.result()
    with find_or_start_run(settings.run_name, experiment_id) as run:
        run_id = run.info.run_id
        _log_params(model_cfg, settings, inputs["data_dir"])
        config = loop_config(
            model_cfg, settings, inputs, {"tracking_uri": tracking_uri, "run_id": run_id}
        )
        with EpochProgress(tracking_uri, run_id, settings.epochs, settings.monitor):
            result = build_trainer(config, settings).fit()
        best = best_checkpoint_dir(result, settings)
        history = _history(run_id)
        # Opened once: evaluation, plots and the promotion's index read one model and one set
        # of catalog vectors (cached for `outfitter evaluate`/`index build` of this version).
        catalog, features = shared_values(inputs)
        opened = open_checkpoint(
            best, inputs["data_dir"], catalog=catalog, data_format=inputs["data_format"],
            features=features, cache_dir=cache_dir, catalog_stamp=inputs["catalog_stamp"],
        )  # fmt: skip
        valid, test = _final_evaluation(opened, settings.version)
        mlflow.log_metrics({f"best_valid_{k}": v for k, v in valid.items() if _is_num(v)})
        mlflow.log_metrics({f"test_{k}": v for k, v in test.items() if _is_num(v)})
        _log_plots(history, opened, settings.version)
        info = registry.log_checkpoint_model(best, data_dir=inputs["data_dir"])
        version = registry.register_model(
            info.model_uri,
            name=model_name,
            alias="challenger",
            tags={"model_config": model_cfg.name, "run_name": settings.run_name},
        )
    outcome = TrainOutcome(run_id, version, model_name, best, valid, test, history)
    if promote_if_better:
        outcome.promoted = _promote_after_index(model_name, version, opened, settings)
    return outcome


def _tracking_store(workdir: Path) -> tuple[str, str]:
    """(tracking URI, experiment id) of the run's MLflow store (`registry.configure_tracking`)."""
    from outfitter.platform import registry

    return registry.configure_tracking(workdir), registry.ensure_experiment(EXPERIMENT)


def _promote_after_index(model_name: str, version: str, opened, settings: TrainSettings) -> bool:
    """Build and log the version's index, then move `champion` if the version is better.

    The index is built from `opened`, the local checkpoint the version was logged from, and its
    catalog vectors: nothing is downloaded back from MLflow and nothing is encoded again.
    """
    from outfitter.platform import registry
    from outfitter.platform.index import build_index_for_model

    resolved = registry.ResolvedModel(opened.folder, name=model_name, version=str(version))
    with tempfile.TemporaryDirectory() as tmp:
        build_index_for_model(resolved, opened.data_dir, Path(tmp) / "index", opened=opened)
        registry.log_index(model_name, version, Path(tmp) / "index")
    return registry.promote_if_better(
        model_name, version, f"best_{settings.monitor}", mode=settings.monitor_mode
    )


def _is_num(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _log_params(model_cfg, settings: TrainSettings, data_dir: str) -> None:
    """The resolved configs as params and JSON artifacts, credentials in URIs masked."""
    import mlflow

    from outfitter.platform.redact import param_values, redact

    flat = _flatten({"model": model_cfg.to_dict(), "settings": settings.to_dict()})
    flat["data_dir"] = data_dir
    mlflow.log_params(param_values(flat))
    mlflow.log_dict(redact(model_cfg.to_dict()), "config/model_config.json")
    mlflow.log_dict(redact(settings.to_dict()), "config/train_settings.json")


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _history(run_id: str) -> list[dict]:
    """Every epoch report of the run, in order, as rank 0 logged it to MLflow.

    (Ray's result keeps only the retained checkpoints' metrics.) An epoch repeated after a
    restart appears twice, which is how a lost epoch shows.
    """
    from mlflow import MlflowClient

    client = MlflowClient()
    reports: dict[tuple[int, int], dict] = {}
    for key in client.get_run(run_id).data.metrics:
        for m in client.get_metric_history(run_id, key):
            reports.setdefault((m.timestamp, m.step), {})[key] = m.value
    return [r for _, r in sorted(reports.items()) if "epoch" in r]


def _final_evaluation(opened, version: str) -> tuple[dict, dict]:
    """Valid and test metrics of the best checkpoint, computed the way `outfitter evaluate` does."""
    from outfitter.platform.evaluation import evaluate_opened

    return evaluate_opened(opened, "valid", version=version), evaluate_opened(
        opened, "test", version=version
    )


def _log_plots(history: list, opened, version: str) -> None:
    import mlflow

    from outfitter.platform import plots

    with tempfile.TemporaryDirectory() as tmp:
        for path in plots.training_plots(history, opened, version, Path(tmp)):
            mlflow.log_artifact(str(path), artifact_path="plots")
