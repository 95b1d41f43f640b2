"""One device choice for every process that runs a model: training workers, Ray Data embedding
actors, `evaluate`, `index build` and Serve replicas.

A process is *given* a device (Ray Train's `get_device()`, an actor's `num_gpus=1`, a Serve
config's `device: auto`) and everything it creates lives there: the model, the frozen CLIP towers,
the feature batches and the faiss shards. `resolve_device` turns a spec into a `torch.device`
and says what to do when the spec cannot be met; `autocast` is the bf16 mixed precision that GPU
training uses (and that the CPU tests switch on explicitly to exercise the same code path).
"""

from __future__ import annotations

import contextlib

import torch

SPECS = "auto, cpu, cuda or cuda:N"


class DeviceError(ValueError):
    """A device spec this process cannot honour (unknown spec, no GPU, GPU index out of range)."""


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The torch device of `spec`: `auto` (the GPU when torch sees one, else the CPU), `cpu`,
    `cuda` (the current GPU) or `cuda:N`; a `torch.device` is checked the same way.

    Raises:
        DeviceError: the spec is unknown, or asks for a GPU this process does not see.
    """
    if spec is None or str(spec) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as err:
        raise DeviceError(f"device {spec!r} is not a device; use {SPECS}") from err
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise DeviceError(f"device {spec!r}: outfitter runs on {SPECS}")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"device {spec!r}: torch sees no CUDA GPU in this process (torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda}); use device auto or cpu"
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise DeviceError(
            f"device {spec!r}: this process sees {count} GPU(s), cuda:0..cuda:{count - 1} "
            "(CUDA_VISIBLE_DEVICES renumbers them from 0)"
        )
    return device


def gpu_index(device: torch.device) -> int | None:
    """The CUDA ordinal of `device` (0 for a bare `cuda`), None for the CPU: faiss's GPU id."""
    if device.type != "cuda":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


def autocast(device: torch.device, enabled: bool = True, *, on_cpu: bool = False):
    """bf16 autocast on a GPU when `enabled`; on the CPU only when `on_cpu` is also set (CPU
    bf16 is slower than fp32 on most CPUs: the tests use it to run the GPU code path)."""
    if enabled and (device.type == "cuda" or (device.type == "cpu" and on_cpu)):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
