"""The per-worker state of a training run: data shards, model, optimiser, schedule, checkpoints.

`EpochRunner` is what `train_loop_per_worker` drives, one epoch at a time. Each worker reads its
own shard of every task's samples (`DistributedSampler`), the model is wrapped for DDP by
`ray.train.torch.prepare_model`, and the whole training state (weights, optimiser, schedule,
early-stopping counters, epoch) goes into each checkpoint so a restarted worker group or a re-run
command continues where the last checkpoint left off.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from outfitter.platform.train.settings import TrainSettings

STATE_FILE = "training_state.pt"
TRIM_EVERY = 20  # steps between returns of the heap's free memory to the OS


def release_free_heap() -> None:
    """Give the C heap's free memory back to the OS (glibc `malloc_trim`; a no-op elsewhere).

    A CPU step allocates tensors of a new padded size every batch; glibc keeps what they free
    in its heap, fragmented, so a worker grew ~1.1 GB over a 50k-outfit epoch (300 steps) and
    held it. Trimmed every 50 steps it grew ~0.35 GB, at no measurable step time; every 20
    (`TRIM_EVERY`), its peak was 0.06-0.17 GB lower again, at the same step time (106-111 ms
    in one process, 100 steps each, alternated); a lower mmap threshold
    (`MALLOC_MMAP_THRESHOLD_`) did as well on memory but cost 14 %.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    """glibc's `malloc_trim`, loaded once; None where the C library has none."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return getattr(libc, "malloc_trim", None)


def _lr_lambda(total_steps: int, warmup_frac: float):
    warmup = max(1, int(total_steps * warmup_frac))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class EpochRunner:
    """Everything one worker needs to train, validate and checkpoint epoch by epoch."""

    def __init__(
        self,
        model_cfg,
        settings: TrainSettings,
        data_dir: Path,
        features,
        mlflow_info,
        rank: int,
        world: int,
        device: torch.device,
        data_format: str | None = None,
        catalog=None,
    ):
        """`catalog`: the dataset's, already parsed (the driver's, via the object store), or
        None to parse it here."""
        from outfitter.data import load_catalog, load_split
        from outfitter.model.factory import build_model
        from outfitter.model.inputs import InputBuilder
        from outfitter.model.task import build_task

        # The run's optimiser settings win over the architecture's defaults (and are saved).
        model_cfg = model_cfg.replace(
            {
                "optim.lr": settings.lr,
                "optim.batch_size": settings.batch_size,
                "optim.weight_decay": settings.weight_decay,
                "optim.grad_clip": settings.grad_clip,
            }
        )
        self.cfg, self.settings, self.rank, self.world = model_cfg, settings, rank, world
        self.device, self.mlflow_info = device, mlflow_info
        torch.manual_seed(settings.seed)
        # either format (`data.formats`)
        self.catalog = catalog if catalog is not None else load_catalog(data_dir, data_format)
        self.train_split, self.valid_split = (
            load_split(data_dir, settings.version, name, self.catalog, data_format)
            for name in ("train", "valid")
        )
        vocab = None
        if model_cfg.kind == "sun2020":  # the baseline's word vocabulary: titles of train items
            from outfitter.model.factory import build_vocab

            vocab = build_vocab(model_cfg, self.catalog, self.train_split.item_ids)
        self.model = build_model(model_cfg, vocab=vocab)
        self.task = build_task(self.model, model_cfg).to(device)
        self.builder = InputBuilder.for_model(
            self.model, self.catalog, features, seed=settings.seed + rank
        )
        self.builder.set_negative_pool(self.train_split.item_ids)
        self.wrapped = self._wrap(self.task)
        self.datasets, self.loaders = self._loaders()
        self.steps_per_epoch = min(len(loader) for loader in self.loaders.values())
        if settings.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, settings.max_steps_per_epoch)
        from outfitter.model.task import make_optimizer

        self.optimizer = make_optimizer(model_cfg, self.model)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_lambda(self.steps_per_epoch * settings.epochs, settings.warmup_frac)
        )
        self.best = None
        self.bad_epochs = 0

    @classmethod
    def from_config(cls, config: dict, *, rank: int, world: int) -> EpochRunner:
        import ray
        import ray.train.torch

        from outfitter.model.config import ModelConfig
        from outfitter.model.device import resolve_device

        def shared(key: str):  # what the driver put in the object store (`runs.shared_inputs`)
            return None if config.get(key) is None else ray.get(config[key])

        features, catalog = shared("features_ref"), shared("catalog_ref")
        return cls(
            ModelConfig.from_dict(config["model_config"]),
            TrainSettings.from_dict(config["settings"]),
            Path(config["data_dir"]),
            features,
            config.get("mlflow"),
            rank,
            world,
            resolve_device(ray.train.torch.get_device()),  # the GPU Ray gave this worker
            config.get("data_format"),
            catalog=catalog,
        )

    def _wrap(self, task):
        if self.world <= 1:
            return task
        import ray.train.torch

        return ray.train.torch.prepare_model(
            task, move_to_device=False, parallel_strategy_kwargs={"find_unused_parameters": True}
        )

    def _loaders(self):
        """Each task's samples (`make_datasets`, the recipe of the local loop too), sharded."""
        from outfitter.model.task import make_datasets

        made = make_datasets(self.cfg, self.train_split, self.catalog, seed=self.settings.seed)
        missing = set(self.task.tasks) - set(made)
        if missing:
            raise ValueError(f"task asks for batches of kinds {sorted(missing)} with no dataset")
        datasets, loaders = {}, {}
        for kind, (dataset, collate, batch_size) in made.items():
            sampler = DistributedSampler(
                dataset,
                num_replicas=self.world,
                rank=self.rank,
                shuffle=True,
                seed=self.settings.seed,
                drop_last=True,
            )
            datasets[kind] = (dataset, sampler)
            loaders[kind] = DataLoader(
                dataset,
                batch_size=batch_size,
                sampler=sampler,
                collate_fn=collate,
                drop_last=True,
                num_workers=0,
            )
        return datasets, loaders

    def _autocast(self):
        """bf16 autocast on a GPU worker (`settings.amp`); fp32 on the CPU."""
        from outfitter.model.device import autocast

        return autocast(self.device, self.settings.amp)

    def _to_device(self, tree):
        if isinstance(tree, torch.Tensor):
            return tree.to(self.device, non_blocking=True)
        if isinstance(tree, dict):
            return {k: self._to_device(v) for k, v in tree.items()}
        return tree

    def train_epoch(self, epoch: int) -> dict:
        """One pass over this worker's shard; returns mean losses and samples/s."""
        import time

        for dataset, sampler in self.datasets.values():
            sampler.set_epoch(epoch)
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
        self.seed_epoch(epoch)
        self.wrapped.train()
        sums: dict[str, float] = {}
        t0, samples = time.perf_counter(), 0
        iterators = {k: iter(v) for k, v in self.loaders.items()}
        for step in range(self.steps_per_epoch):
            if step % TRIM_EVERY == 0:
                release_free_heap()
            batch = self._to_device(
                self.builder({k: next(it) for k, it in iterators.items()}, train=True)
            )
            with self._autocast():
                out = self.wrapped(batch)
            loss = sum(v for k, v in out.items() if k.endswith("_loss"))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.settings.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.task.parameters(), self.settings.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            for k, v in out.items():
                if k.endswith("_loss"):
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            samples += self.settings.batch_size
        seconds = time.perf_counter() - t0
        # what the epoch's last steps freed: rank 0 validates next and the others wait for it,
        # and its validation started on top of it (at 200k items, a run's peak 0.1 GiB higher)
        release_free_heap()
        metrics = {f"train_{k}": v / max(1, self.steps_per_epoch) for k, v in sums.items()}
        metrics["train_outfits_per_s"] = samples * self.world / max(seconds, 1e-9)
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        return metrics

    def seed_epoch(self, epoch: int) -> None:
        """Every random draw of an epoch (dropout, retrieval negatives, target prompts) from
        (seed, rank, epoch) alone, as the datasets and samplers already are: an epoch replayed
        after a restart from a checkpoint is the epoch an uninterrupted run trained."""
        seeds = np.random.SeedSequence([self.settings.seed, self.rank, epoch])
        torch.manual_seed(int(seeds.generate_state(1, np.uint64)[0] >> 1))
        self.builder.rng = np.random.default_rng(seeds)

    @torch.no_grad()
    def validate(self, threads: int | None = None) -> dict:
        """Validation metrics of the current weights (rank 0), prefixed `valid_`: outfit metrics,
        or pair metrics on a pair split (Amazon co-purchase).

        `threads`: torch threads to validate with (the CPUs of this node's workers, which wait
        for rank 0 meanwhile); this worker's own count is restored after.
        """
        from outfitter.model.evaluate_pairs import evaluate_split

        self.task.eval()
        own = torch.get_num_threads()
        torch.set_num_threads(max(own, threads or own))
        try:
            # The keyword baselines do not change with the weights: the evaluation after
            # training reports them once.
            metrics = evaluate_split(
                self.model, self.builder, self.valid_split, self.catalog, baselines=False
            )
        finally:
            torch.set_num_threads(own)
        release_free_heap()  # the catalog's vectors and score blocks
        return {f"valid_{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}

    def update_early_stopping(self, metrics: dict) -> bool:
        """Track the monitored metric on rank 0; every rank learns whether to stop."""
        stop = False
        if self.rank == 0:
            value = metrics.get(self.settings.monitor)
            sign = 1 if self.settings.monitor_mode == "max" else -1
            if value is not None and (self.best is None or sign * value > sign * self.best):
                self.best, self.bad_epochs = value, 0
            else:
                self.bad_epochs += 1
            stop = bool(self.settings.patience) and self.bad_epochs >= self.settings.patience
        if self.world > 1:
            flag = torch.tensor([int(stop)], device=self.device)
            torch.distributed.broadcast(flag, src=0)
            stop = bool(flag.item())
        return stop

    def save(self, directory: Path, epoch: int, metrics: dict) -> None:
        """A complete checkpoint: the self-describing model folder plus the training state."""
        from outfitter.model.checkpoint import save_checkpoint
        from outfitter.platform.redact import redact

        # meta.json travels with the registered model: no credentials of the storage URI in it
        meta = {"epoch": epoch, "metrics": metrics, "settings": redact(self.settings.to_dict())}
        towers = self.builder.towers if self.cfg.input_kind == "features" else None
        save_checkpoint(directory, self.model, self.cfg, meta, towers=towers)
        state = {
            "epoch": epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "best": self.best,
            "bad_epochs": self.bad_epochs,
        }  # no RNG state: each epoch seeds itself (seed_epoch)
        torch.save(state, directory / STATE_FILE)

    def restore(self, checkpoint) -> int:
        """Load the last reported checkpoint, if any; returns the epoch to start from."""
        if checkpoint is None:
            return 0
        from outfitter.model.checkpoint import load_checkpoint

        with checkpoint.as_directory() as d:
            restored, _, _ = load_checkpoint(Path(d))
            self.model.load_state_dict(restored.state_dict())
            state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
        return int(state["epoch"]) + 1

    def log_metrics(self, metrics: dict, step: int) -> None:
        """Per-epoch metrics to the run's MLflow run (rank 0 only)."""
        if not self.mlflow_info:
            return
        import time

        from mlflow import MlflowClient
        from mlflow.entities import Metric

        client = MlflowClient(tracking_uri=self.mlflow_info["tracking_uri"])
        now = int(time.time() * 1000)
        values = [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        client.log_batch(self.mlflow_info["run_id"], metrics=values)
