"""Device choice (`outfitter.model.device`) and placement: everything a training worker or a
serving replica touches lives on the device it was given.

The spy (`DeviceSpy`, a `TorchFunctionMode`) sees every torch call of a training step and of the
model calls behind HTTP requests. It fails on a tensor on another device, and on a tensor created
by outfitter code without a `device=` (`torch.zeros(n)`, `torch.arange(n)`, ...): on the CPU such
a tensor happens to land on the right device, on a GPU worker it lands on the CPU and the next op
fails or copies it every step. The same tests run on `cuda` where a GPU is present.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from outfitter.model.device import DeviceError, autocast, gpu_index, resolve_device

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]

# ---------------------------------------------------------------- resolve_device


def _fake_gpus(monkeypatch, n: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


@pytest.mark.parametrize("spec", ["auto", None])
def test_auto_takes_the_gpu_when_torch_sees_one(monkeypatch, spec):
    _fake_gpus(monkeypatch, 0)
    assert resolve_device(spec) == torch.device("cpu")
    _fake_gpus(monkeypatch, 2)
    assert resolve_device(spec) == torch.device("cuda")


def test_explicit_specs(monkeypatch):
    _fake_gpus(monkeypatch, 2)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device(torch.device("cuda", 0)) == torch.device("cuda", 0)
    assert gpu_index(torch.device("cuda", 1)) == 1 and gpu_index(torch.device("cpu")) is None


@pytest.mark.parametrize(
    ("spec", "gpus", "message"),
    [
        ("cuda", 0, "sees no CUDA GPU"),
        ("cuda:0", 0, "sees no CUDA GPU"),
        ("cuda:2", 2, "sees 2 GPU(s), cuda:0..cuda:1"),
        ("gpu", 1, "is not a device"),
        ("mps", 1, "outfitter runs on auto, cpu, cuda or cuda:N"),
    ],
)
def test_a_spec_that_cannot_be_met_says_what_to_pass(monkeypatch, spec, gpus, message):
    _fake_gpus(monkeypatch, gpus)
    with pytest.raises(DeviceError, match="device") as err:
        resolve_device(spec)
    assert message in str(err.value)


def test_autocast_is_bf16_on_gpu_and_opt_in_on_cpu():
    cpu = torch.device("cpu")
    with autocast(cpu, True):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(cpu, True, on_cpu=True):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    with autocast(torch.device("cuda"), False):
        assert not torch.is_autocast_enabled("cuda")


# ---------------------------------------------------------------- the spy

FACTORIES = {
    torch.tensor, torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.eye,
    torch.rand, torch.randn, torch.randint, torch.randperm, torch.linspace,
}  # fmt: skip
PACKAGE = str(Path(__import__("outfitter").__file__).parent)


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def _caller() -> str | None:
    """The outfitter source line a torch call came from (None: from torch or another library)."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(PACKAGE):
            return f"{Path(name).relative_to(Path(PACKAGE).parent)}:{frame.f_lineno}"
        if not (name == __file__ or "/torch/" in name or name.startswith("<")):
            return None  # another library's internals (open_clip, ...): not ours to fix
        frame = frame.f_back
    return None


class DeviceSpy(TorchFunctionMode):
    """Records torch calls whose tensors are off `device`, and device-less tensor factories
    called from outfitter code."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device, self.calls, self.problems = device, 0, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None:
            where = _caller()
            if where:
                self.problems.append(f"{where}: {func.__name__}() without device=")
        out = func(*args, **kwargs)
        self.calls += 1
        for t in _tensors((args, kwargs, out)):
            if t.device.type != self.device.type:
                name = getattr(func, "__name__", str(func))
                self.problems.append(f"{_caller() or name}: a {t.device} tensor in {name}")
        return out


def _spied(spy: DeviceSpy, fn):
    def call(*args, **kwargs):
        with spy:
            return fn(*args, **kwargs)

    return call


def _on(device: str) -> torch.device:
    return resolve_device(device)


# ---------------------------------------------------------------- a training worker


@pytest.mark.parametrize("name", ["hybrid-tiny", "sun2020-tiny"])
@pytest.mark.parametrize("device", DEVICES)
def test_a_training_step_touches_only_the_workers_device(synth_dir, tmp_path, name, device):
    from outfitter.model import load_config
    from outfitter.platform.train.loop import EpochRunner
    from outfitter.platform.train.settings import TrainSettings

    device = _on(device)
    cfg = load_config(name)
    settings = TrainSettings(epochs=1, batch_size=8, max_steps_per_epoch=1).resolve(cfg)
    runner = EpochRunner(cfg, settings, synth_dir, None, None, 0, 1, device)
    iterators = {k: iter(v) for k, v in runner.loaders.items()}
    batch = runner._to_device(runner.builder({k: next(it) for k, it in iterators.items()}))
    spy = DeviceSpy(device)
    with spy, runner._autocast():
        out = runner.wrapped(batch)
        loss = sum(v for k, v in out.items() if k.endswith("_loss"))
    with spy:
        loss.backward()
    assert spy.calls > 20 and not spy.problems, "\n".join(sorted(set(spy.problems)))
    assert {p.device.type for p in runner.task.parameters()} == {device.type}
    if cfg.kind == "hybrid":  # frozen towers: created by the builder on the worker's device
        assert runner.builder.towers.device.type == device.type


def test_the_builder_creates_frozen_towers_on_the_models_device(synth_dir, monkeypatch):
    """`InputBuilder.for_model` takes the model's device (a `meta` model stands in for a GPU)."""
    from outfitter.data import load_catalog
    from outfitter.model import load_config
    from outfitter.model import towers as towers_module
    from outfitter.model.factory import build_model
    from outfitter.model.inputs import InputBuilder

    seen = []
    monkeypatch.setattr(towers_module, "create_towers", lambda cfg, **kw: seen.append(kw) or cfg)
    model = build_model(load_config("hybrid-tiny")).to("meta")
    builder = InputBuilder.for_model(model, load_catalog(synth_dir))
    assert builder.towers is not None
    assert seen == [{"device": torch.device("meta")}]


# ---------------------------------------------------------------- a serving replica


@pytest.mark.parametrize("device", DEVICES)
def test_a_replica_answers_from_its_device(synth_dir, tmp_path_factory, device, monkeypatch):
    from fastapi.testclient import TestClient
    from serve_helpers import image_b64, tiny_versions

    from outfitter.data import load_catalog
    from outfitter.platform.serve.app import create_app
    from outfitter.platform.serve.core import LocalBackend, load_state
    from outfitter.platform.serve.schemas import Limits
    from outfitter.platform.serve.service import CatalogService

    versions = tiny_versions(tmp_path_factory.getbasetemp() / "tiny-models", synth_dir)
    catalog = load_catalog(synth_dir)
    state = load_state(str(versions[0]), synth_dir, device=device, catalog=catalog)
    device = _on(device)
    assert state.device.type == device.type
    assert {p.device.type for p in state.model.parameters()} == {device.type}
    assert state.builder.towers.device.type == device.type, "frozen towers off the replica's GPU"
    faiss_gpu = hasattr(__import__("faiss"), "StandardGpuResources")
    on_gpu = any("Gpu" in kind for kind in state.index.shard_kinds().values())
    assert on_gpu == (device.type == "cuda" and faiss_gpu), "shards off its device"
    spy = DeviceSpy(device)
    model, towers = state.model, state.builder.towers
    for method in ("encode_items", "compatibility_logits", "query", "category_logits"):
        if hasattr(model, method):
            monkeypatch.setattr(model, method, _spied(spy, getattr(model, method)))
    monkeypatch.setattr(towers, "encode_tokens", _spied(spy, towers.encode_tokens))
    monkeypatch.setattr(towers, "encode_pixels", _spied(spy, towers.encode_pixels))

    limits = Limits()
    client = TestClient(create_app(CatalogService(catalog, LocalBackend(state), limits), limits))
    outfit = catalog.item_ids[:2]
    new = {"title": "red canvas tote", "description": "a roomy bag", "image_b64": image_b64()}
    requests = [
        ("/v1/compatibility", {"items": [{"item_id": i} for i in outfit] + [new]}),
        ("/v1/retrieve", {"items": [{"item_id": i} for i in outfit],
                          "target": {"description": "leather ankle boots"}}),
        ("/v1/retrieve", {"items": [{"item_id": outfit[0]}],
                          "target": {"description": "a small bag", "category": "bags"}}),
    ]  # fmt: skip
    for path, body in requests:
        r = client.post(path, json=body)
        assert r.status_code == 200, r.text
    assert spy.calls > 20 and not spy.problems, "\n".join(sorted(set(spy.problems)))


def test_the_spy_reports_what_it_is_for():
    """It can fail: a device-less factory in outfitter code, and a tensor on another device."""
    code = compile("torch.arange(3) + 1", f"{PACKAGE}/model/example.py", "exec")
    spy = DeviceSpy(torch.device("cpu"))
    with spy:
        exec(code, {"torch": torch})
        torch.zeros(2, device="cpu") + 1  # from the test itself, with a device: fine
    assert spy.problems == ["outfitter/model/example.py:1: arange() without device="]
    spy = DeviceSpy(torch.device("meta"))  # a worker given another device than the tensors'
    with spy:
        torch.ones(2, device="cpu") * 2
    assert spy.problems and "a cpu tensor" in spy.problems[0]
