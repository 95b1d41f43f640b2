"""Shared fixtures: one Ray instance per session, a small synthetic catalog, the Polyvore sample."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"

# Ray Train's controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by
# default) and notices a finished or reported worker only at its next poll: each of the suite's
# tiny Train runs would wait seconds for nothing. Set before any Ray starts, so the session's Ray
# and the CLI subprocesses the tests run inherit it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


def pytest_collection_modifyitems(config, items):
    """`gpu` tests are reported as skipped (not silently passed) where there is no CUDA device."""
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch is a hard dependency
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="no CUDA GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def feature_cache(tmp_path_factory) -> Path:
    """One feature cache for the session (never the user's ~/.cache/outfitter): the first run
    that needs a catalog's features embeds it on Ray Data, later runs of the same towers on the
    same catalog reuse it, as a user's second run does. Subprocesses inherit it."""
    folder = tmp_path_factory.mktemp("feature-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OUTFITTER_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="session")
def polyvore_mini() -> Path:
    """A tiny sample in the published Polyvore Outfits layout, with the real files' quirks."""
    return FIXTURES / "polyvore-mini"


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """A small synthetic catalog (Polyvore layout), made once per session."""
    from outfitter.data.synth import synthesize

    out = tmp_path_factory.mktemp("synth")
    synthesize(out, n_outfits=300, seed=0, image_size=32)
    return out


@pytest.fixture(scope="session")
def ray_session():
    """The one Ray instance of the test session (2 CPUs, no dashboard)."""
    import ray

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    from outfitter.platform.local_ray import ensure_ray

    ensure_ray(num_cpus=2)  # a local instance, as the commands start one
    yield ray
    ray.shutdown()
