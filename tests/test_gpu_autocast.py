"""The GPU training path on the CPU: the training step, validation and the retrieval loss under
bf16 autocast (what `outfitter train --gpu` runs) against fp32, for the hybrid and Sun 2020 models.

`torch.autocast("cpu", dtype=torch.bfloat16)` applies the same op casting rules as CUDA autocast:
matmuls and linear layers run in bf16, reductions and losses in fp32. It catches what a GPU run
would hit first: dtype mixing in `torch.stack`/`torch.cat`, label casts, bf16 logits divided by a
small temperature, fp32 buffers updated from bf16 activations.

Tolerance: each loss and score under bf16 within 5 % (relative, with a 0.02 absolute floor) of
fp32; bf16 keeps 8 bits of mantissa (~0.4 % per rounding) and a step goes through a few dozen
roundings; a wrong cast (e.g. a temperature applied to a truncated logit, or a label rounded to
bf16) is off by far more. The whole gradient's direction within cosine 0.8 of fp32's: measured
0.87 for sun2020-tiny (its hinge loss switches near-margin triplets on or off under bf16 rounding
of the untrained model's similarities), > 0.99 for hybrid-tiny.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from outfitter.model.device import autocast
from outfitter.platform.train.loop import EpochRunner
from outfitter.platform.train.settings import TrainSettings

RTOL, ATOL = 0.05, 0.02
MODELS = ["hybrid-tiny", "sun2020-tiny"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def bf16():
    """The context a GPU worker trains in (`EpochRunner._autocast` with `amp`), on the CPU."""
    return autocast(torch.device("cpu"), True, on_cpu=True)


def make_runner(name: str, data_dir: Path, tmp_path: Path) -> EpochRunner:
    from outfitter.model import load_config

    settings = TrainSettings(
        epochs=1, batch_size=16, max_steps_per_epoch=2, storage_path=str(tmp_path)
    ).resolve(load_config(name))
    return EpochRunner(load_config(name), settings, data_dir, None, None, 0, 1, torch.device("cpu"))


@pytest.fixture(scope="module", params=MODELS)
def runner(request, synth_dir, tmp_path_factory):
    return make_runner(request.param, synth_dir, tmp_path_factory.mktemp("amp"))


def _batch(runner: EpochRunner, seed: int = 0) -> dict:
    runner.seed_epoch(seed)
    iterators = {k: iter(v) for k, v in runner.loaders.items()}
    return runner._to_device(runner.builder({k: next(it) for k, it in iterators.items()}))


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= ATOL + RTOL * abs(b)


def test_training_step_losses_and_gradients_match_fp32(runner):
    batch = _batch(runner)
    runner.task.eval()  # no dropout: the two passes see the same network
    losses, grads = {}, {}
    for mode, ctx in (("fp32", torch.autocast("cpu", enabled=False)), ("bf16", bf16())):
        runner.task.zero_grad(set_to_none=True)
        with ctx:
            out = runner.task(batch)
        out["loss"].backward()  # outside autocast, as the loop does
        losses[mode] = {k: float(v.detach()) for k, v in out.items() if k.endswith("loss")}
        grads[mode] = torch.cat(
            [p.grad.flatten() for p in runner.task.parameters() if p.grad is not None]
        )
        assert out["loss"].dtype == torch.float32, f"{mode}: the total loss is {out['loss'].dtype}"
        assert all(
            p.grad.dtype == p.dtype for p in runner.task.parameters() if p.grad is not None
        ), "gradients must land in the parameters' fp32"
    assert set(losses["bf16"]) == set(losses["fp32"])
    for key, ref in losses["fp32"].items():
        got = losses["bf16"][key]
        assert np.isfinite(got) and _close(got, ref), f"{key}: bf16 {got:.4f} vs fp32 {ref:.4f}"
    cos = torch.nn.functional.cosine_similarity(grads["bf16"], grads["fp32"], dim=0)
    assert float(cos) > 0.8, f"bf16 gradient direction differs from fp32 (cosine {cos:.3f})"
    runner.task.zero_grad(set_to_none=True)


def test_the_loop_trains_under_bf16_autocast(runner, monkeypatch):
    """`train_epoch` (zero_grad, backward, clipping, optimiser, schedule) with the GPU context."""
    entered = []

    def gpu_context():
        entered.append(True)
        return bf16()

    monkeypatch.setattr(runner, "_autocast", gpu_context)
    before = [p.detach().clone() for p in runner.task.parameters() if p.requires_grad]
    metrics = runner.train_epoch(0)
    assert len(entered) == runner.steps_per_epoch >= 1
    assert np.isfinite(metrics["train_loss"]), metrics
    after = [p.detach() for p in runner.task.parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 for p in after), "parameters must stay fp32"
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True)), "no update"


def test_validation_under_bf16_matches_fp32(runner):
    from outfitter.model.evaluate import evaluate

    runner.task.eval()
    with torch.no_grad():
        ref = evaluate(runner.model, runner.builder, runner.valid_split, runner.catalog)
        with bf16():
            got = evaluate(runner.model, runner.builder, runner.valid_split, runner.catalog)
    numbers = {k for k, v in ref.items() if isinstance(v, float)}
    assert "compatibility_auc" in numbers or "fitb_accuracy" in numbers
    for key in sorted(numbers):
        # rank metrics of an untrained model: bf16 may swap near-ties, so 0.1 absolute
        assert np.isfinite(got[key]) and abs(got[key] - ref[key]) <= 0.1, (key, got[key], ref[key])


@pytest.mark.parametrize("temperature", [0.07, 0.01])
def test_retrieval_loss_with_small_temperature_under_bf16(temperature):
    """bf16 query/candidate logits divided by a small temperature: the loss must stay close."""
    from outfitter.model.losses import retrieval_loss

    gen = torch.Generator().manual_seed(0)
    query = torch.nn.functional.normalize(torch.randn(32, 64, generator=gen), dim=-1)
    cands = torch.nn.functional.normalize(torch.randn(48, 64, generator=gen), dim=-1)
    cands[:32] = torch.nn.functional.normalize(query + 0.5 * cands[:32], dim=-1)
    positives = torch.arange(32)
    proj = torch.nn.Linear(64, 64)
    with torch.no_grad():
        proj.weight.copy_(torch.eye(64))
        proj.bias.zero_()
    ref = retrieval_loss(proj(query), proj(cands), positives, temperature)
    with bf16():
        q, c = proj(query), proj(cands)  # bf16 activations, as a GPU worker has them
        assert q.dtype == torch.bfloat16
        got = retrieval_loss(q, c, positives, temperature)
    assert got.dtype == torch.float32, f"the loss is {got.dtype}: softmax over bf16 logits"
    got, ref = float(got.detach()), float(ref.detach())
    assert _close(got, ref), (got, ref)
