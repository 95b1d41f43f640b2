"""Distributed training on Ray Train (V2): one `train_loop_per_worker` for training and Tune.

`build_trainer` is the only place that assembles the Ray scaffolding (ScalingConfig, RunConfig,
CheckpointConfig, FailureConfig), so a Tune trial and a plain training run differ only in the
loop config they pass and the callbacks they add. A run is resumable: under a stable
`RunConfig(name, storage_path)` a re-run of the same command (or a restarted worker group after a
killed worker) continues from `ray.train.get_checkpoint()`: the weights, optimizer, schedule,
early-stopping state and epoch counter all live in the checkpoint.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ray.train.backend import Backend, BackendConfig

from outfitter.platform.train.settings import TrainSettings

# ---------------------------------------------------------------- worker side


def train_loop_per_worker(config: dict) -> None:
    """The training loop every Ray Train worker runs (and every Tune trial, unchanged).

    `config` holds plain values only (it crosses processes): `model_config` (resolved dict),
    `settings` (TrainSettings as dict), `data_dir`, `catalog_ref` (Ray object ref of the parsed
    catalog, or None to parse it), `features_ref` (of the cached tower features, or None in
    end-to-end mode), `mlflow` ({tracking_uri, run_id} or None).
    """
    import ray
    import ray.train
    import torch

    from outfitter.model.device import autocast
    from outfitter.platform.train.loop import EpochRunner

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    runner = EpochRunner.from_config(config, rank=rank, world=world)
    # Reported so a Tune search can free this worker group's placement group when the scheduler
    # stops the trial (see tune.search._reaper).
    pg = ray.util.get_current_placement_group()
    placement_group = pg.id.hex() if pg is not None else ""
    start_epoch = runner.restore(ray.train.get_checkpoint())
    # What the run trained on, logged beside the losses: GPUs in the group, bf16 autocast on/off.
    amp = autocast(runner.device, runner.settings.amp)
    precision = {
        "gpus": world if runner.device.type == "cuda" else 0,
        "bf16": int(isinstance(amp, torch.autocast)),
    }
    for epoch in range(start_epoch, runner.settings.epochs):
        t0 = time.perf_counter()
        train_metrics = runner.train_epoch(epoch)
        metrics = {
            "epoch": epoch + 1,
            **train_metrics,
            "epoch_seconds": time.perf_counter() - t0,
            "resumed_from_epoch": start_epoch,
            "placement_group": placement_group,
            **precision,
        }
        if rank == 0:  # the node's other workers wait for rank 0: their CPUs validate too
            metrics.update(runner.validate(threads=_node_cpus(ctx, runner.settings)))
        stop = runner.update_early_stopping(metrics)
        _report(runner, epoch, metrics, rank)
        if stop:
            break


def _node_cpus(ctx, settings: TrainSettings) -> int:
    """CPUs the run's workers hold on this worker's node (each worker's torch uses its own)."""
    return max(1, int(ctx.get_local_world_size() * settings.cpus_per_worker))


def _report(runner, epoch: int, metrics: dict, rank: int) -> None:
    """Rank 0 writes a complete checkpoint into a fresh temporary folder, then reports it.

    Ray Train copies the folder into run storage only after `report`, so a checkpoint in storage is
    never half-written. Other ranks report metrics only (`report` is a barrier for all).
    """
    import ray.train

    if rank != 0:
        ray.train.report(metrics)
        return
    runner.log_metrics(metrics, step=epoch + 1)
    with tempfile.TemporaryDirectory(prefix="outfitter-ckpt-") as tmp:
        runner.save(Path(tmp), epoch, metrics)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


# ---------------------------------------------------------------- driver side


class _TorchWorkerContext:
    """Ray's `TorchConfigContextManager` (a GPU worker's default CUDA device), imported where it
    runs: on the workers, which import torch anyway."""

    def __enter__(self):
        from ray.train.torch.config import TorchConfigContextManager

        self._inner = TorchConfigContextManager()
        return self._inner.__enter__()

    def __exit__(self, *exc):
        return self._inner.__exit__(*exc)


class _TorchBackendOnController(Backend):
    """Ray's `_TorchBackend` (process group set-up and teardown on the workers), imported when
    the Train controller first calls it; Ray Train builds its backend callbacks in the driver."""

    @staticmethod
    def _ray():
        from ray.train.torch.config import _TorchBackend

        return _TorchBackend()

    @property
    def share_cuda_visible_devices(self) -> bool:
        return self._ray().share_cuda_visible_devices

    def on_start(self, worker_group, backend_config):
        self._ray().on_start(worker_group, backend_config)

    def on_training_start(self, worker_group, backend_config):
        self._ray().on_training_start(worker_group, backend_config)

    def on_shutdown(self, worker_group, backend_config):
        self._ray().on_shutdown(worker_group, backend_config)


@dataclass
class TorchBackend(BackendConfig):
    """Ray's `TorchConfig` (torch.distributed: gloo on CPUs, nccl on GPUs), without torch.

    `TorchTrainer` and `TorchConfig` import torch in the process that builds the trainer, and Ray
    Train builds the backend there too: in the training command's driver, which trains nothing
    and waits for `fit()`. With this CUDA build of torch, its libraries alone take ~0.18 GiB of
    private memory in each process that imports it (libcublasLt's relocated data), ~0.27 GiB
    with the rest of `import torch`: at 200k items the driver held 0.82 GiB at training's peak,
    0.54 GiB with this config. It builds the same backend (Ray's `_TorchBackend`, called in the
    Train controller) and the same worker context, each imported where it runs; the driver
    imports torch after training, to evaluate.
    """

    backend: str | None = None  # None: nccl with GPUs, gloo without (as TorchConfig)
    init_method: str = "env"
    timeout_s: int = 1800

    @property
    def backend_cls(self):
        return _TorchBackendOnController

    @property
    def train_func_context(self):
        return _TorchWorkerContext

    @property
    def framework(self):
        from ray.train.v2._internal.util import TrainingFramework

        return TrainingFramework.TORCH

    def to_dict(self) -> dict:
        return asdict(self)


def build_trainer(
    loop_config: dict, settings: TrainSettings, *, callbacks=None, name: str | None = None
):
    """The Ray Train trainer of a run (data-parallel torch, `TorchBackend`): the one place the
    Ray scaffolding is built."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    scaling = ScalingConfig(
        num_workers=settings.workers,
        use_gpu=settings.use_gpu,
        resources_per_worker=None if settings.use_gpu else {"CPU": settings.cpus_per_worker},
    )
    run_config = RunConfig(
        name=name or settings.run_name,
        storage_path=checked_storage_path(settings.storage_path),
        checkpoint_config=CheckpointConfig(
            num_to_keep=settings.checkpoints_to_keep,
            checkpoint_score_attribute=settings.monitor,
            checkpoint_score_order=settings.monitor_mode,
        ),
        failure_config=FailureConfig(max_failures=settings.max_failures),
        callbacks=callbacks,
    )
    return DataParallelTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        backend_config=TorchBackend(backend="nccl" if settings.use_gpu else "gloo"),
        scaling_config=scaling,
        run_config=run_config,
    )


# Room a run needs in local storage before it starts: a few checkpoints of the larger configs
# (weights, optimizer state, the frozen towers) with headroom; a full disk fails at the start.
MIN_FREE_BYTES = 512 * 2**20


class StorageError(PermissionError):
    """The training storage path cannot hold checkpoints: not writable, or too little space."""


def checked_storage_path(path: str) -> str:
    """Local folders become absolute (Ray requires it); URIs (s3://, gs://, ...) pass through.

    A local folder gets a pre-flight before anything trains: it must be creatable, take a file
    (a real write, so a read-only mount fails here even for root) and have `MIN_FREE_BYTES` free.
    """
    if "://" in path:
        return path
    resolved = Path(path).expanduser().resolve()
    hint = "pass a writable --storage-path"
    try:
        resolved.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=resolved, prefix=".outfitter-write-check-"):
            pass
    except OSError as err:
        raise StorageError(
            f"training storage path {resolved} is not writable ({err.strerror or err}); {hint}"
        ) from None
    free = shutil.disk_usage(resolved).free
    if free < MIN_FREE_BYTES:
        raise StorageError(
            f"training storage path {resolved} has {free / 2**20:.0f} MiB free; checkpoints "
            f"need at least {MIN_FREE_BYTES / 2**20:.0f} MiB: free some space or {hint}"
        )
    return str(resolved)


def best_checkpoint_dir(result, settings: TrainSettings) -> Path:
    """The local folder of the best reported checkpoint (by the monitored metric)."""
    best = result.best_checkpoints
    if not best:
        if result.checkpoint is None:
            raise RuntimeError(f"training run {settings.run_name} reported no checkpoint")
        return Path(result.checkpoint.path)
    sign = 1 if settings.monitor_mode == "max" else -1

    def score(pair):
        value = pair[1].get(settings.monitor)
        return -math.inf if value is None else sign * value

    checkpoint, _ = max(best, key=score)
    return Path(checkpoint.path)
