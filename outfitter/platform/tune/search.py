"""Ray Tune searches: each trial is a Ray Train run of the same `train_loop_per_worker`.

Train V2 interop: a Tune function trainable builds its Ray Train trainer with `build_trainer` (the
one scaffolding helper) and a `TuneReportCallback`, so a trial may itself use several workers or
GPUs.
MLflow gets one parent run per search and one child run per trial; the best trial's best
checkpoint is registered as a model version with alias `challenger`. An interrupted search resumes
with the same command (`Tuner.restore` on the same storage path).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from outfitter.platform.train.settings import TrainSettings
from outfitter.platform.tune.config import SearchConfig, split_params, to_param_space


@dataclass
class SearchOutcome:
    """What a finished search produced."""

    best_params: dict
    best_metric: float
    best_checkpoint: Path
    trials: int
    stopped_early: int
    table_path: Path
    model_version: str | None
    parent_run_id: str


def run_trial(params: dict, *, search: dict, base: dict, parent_run_id: str, experiment_id: str):
    """One trial: a Ray Train run with the sampled overrides, reporting to Tune."""
    import mlflow
    from mlflow import MlflowClient
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from outfitter.model import load_config
    from outfitter.platform.train.trainer import build_trainer

    trial_name = tune.get_context().get_trial_name()
    settings_over, model_over = split_params(params)
    settings = TrainSettings.from_dict(base["settings"]).with_overrides(
        **settings_over, run_name=f"{search['name']}-{trial_name}"
    )
    model_over = {**base.get("model_overrides", {}), **model_over}
    model_cfg = load_config(base["model_config_name"], overrides=model_over or None)
    mlflow.set_tracking_uri(base["tracking_uri"])
    client = MlflowClient()
    run_id = _child_run(
        client, experiment_id, parent_run_id, trial_name, params, settings, model_cfg
    )
    loop_config = {
        **base["loop"],
        "model_config": model_cfg.to_dict(),
        "settings": settings.to_dict(),
        "mlflow": {"tracking_uri": base["tracking_uri"], "run_id": run_id},
    }
    trainer = build_trainer(loop_config, settings, callbacks=[TuneReportCallback()])
    try:
        trainer.fit()
    finally:
        client.set_terminated(run_id)


def _child_run(
    client, experiment_id, parent_run_id, trial_name, params, settings, model_cfg
) -> str:
    """Reuse the trial's child run on resume (looked up by tag), else create it."""
    from mlflow.entities import Param

    from outfitter.platform.redact import param_values

    found = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.trial = '{trial_name}'"
        ),
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(
        experiment_id,
        run_name=trial_name,
        tags={"mlflow.parentRunId": parent_run_id, "trial": trial_name},
    )
    values = {
        **params,
        **{f"settings.{k}": v for k, v in settings.to_dict().items()},
        "model_config": model_cfg.name,
    }  # one write for all of them, not one per parameter; credentials masked as in a Train run
    entries = [Param(k, v) for k, v in param_values(values).items()]
    client.log_batch(run.info.run_id, params=entries)
    return run.info.run_id


def _reaper():
    """A Tune callback that removes the placement group of a stopped trial's Train workers.

    When the scheduler (ASHA) stops a trial, Tune kills the trial actor and with it the Train
    controller, before it can release its worker group's placement group; Ray's own cleaner
    needs the dashboard's state API to notice. A leaked group holds its CPUs for good, and on a
    small machine the next trial then waits forever. Each worker reports its group's id.
    """
    from ray import tune

    class PlacementGroupReaper(tune.Callback):
        def _reap(self, trial) -> None:
            import ray
            from ray.util.placement_group import PlacementGroup

            pg_id = (trial.last_result or {}).get("placement_group")
            if not pg_id:
                return
            state = ray.util.placement_group_table().get(pg_id, {}).get("state")
            if state in ("CREATED", "PENDING", "RESCHEDULING"):
                ray.util.remove_placement_group(
                    PlacementGroup(ray.PlacementGroupID.from_hex(pg_id))
                )

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._reap(trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._reap(trial)

    return PlacementGroupReaper()


def build_tuner(search: SearchConfig, *, trainable, storage_path: str):
    """A new Tuner for `search`, or the restored one when this search already started."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    path = Path(storage_path) / search.name
    if tune.Tuner.can_restore(str(path)):
        return tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True), True
    scheduler = None
    if search.scheduler.type == "asha":
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            grace_period=search.scheduler.grace_period,
            max_t=search.scheduler.max_t,
            reduction_factor=search.scheduler.reduction_factor,
        )
    if search.searcher.type == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=search.searcher.seed)
    else:
        from ray.tune.search.basic_variant import BasicVariantGenerator

        # A custom generator must get the concurrency cap itself (Tune only wraps searchers).
        search_alg = BasicVariantGenerator(
            random_state=search.searcher.seed, max_concurrent=search.max_concurrent_trials
        )
    tuner = tune.Tuner(
        trainable,
        param_space=to_param_space(search.search_space),
        tune_config=tune.TuneConfig(
            metric=search.metric,
            mode=search.mode,
            num_samples=search.num_samples,
            scheduler=scheduler,
            search_alg=search_alg,
            max_concurrent_trials=search.max_concurrent_trials,
            time_budget_s=search.time_budget_s,
        ),
        run_config=tune.RunConfig(
            name=search.name, storage_path=storage_path, callbacks=[_reaper()]
        ),
    )
    return tuner, False


def best_row(results, metric: str, mode: str):
    """(trial params, best metric, checkpoint path) over all epochs of all trials."""
    sign = 1 if mode == "max" else -1
    best = (None, -math.inf, None)
    for result in results:
        df = result.metrics_dataframe
        if df is None or metric not in df or "checkpoint_path" not in df:
            continue
        df = df.dropna(subset=[metric, "checkpoint_path"])
        for _, row in df.iterrows():
            if best[0] is None or sign * row[metric] > sign * best[1]:
                best = (result.config, float(row[metric]), row["checkpoint_path"])
    if best[0] is None:
        raise RuntimeError(f"no trial reported {metric!r} with a checkpoint")
    return best


def results_table(results, metric: str):
    """One row per trial: its params, epochs run, last and best metric, status."""
    import pandas as pd

    rows = []
    for result in results:
        df = result.metrics_dataframe
        epochs = 0 if df is None else len(df)
        best = None if df is None or metric not in df else df[metric].max()
        rows.append(
            {
                "trial": Path(result.path).name,
                **{f"param:{k}": v for k, v in (result.config or {}).items()},
                "epochs": epochs,
                f"best_{metric}": best,
                f"last_{metric}": (result.metrics or {}).get(metric),
                "error": bool(result.error),
            }
        )
    return pd.DataFrame(rows)
