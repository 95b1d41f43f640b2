"""`ensure_ray`: a local instance starts with `LOCAL_ENV`; a cluster connection changes nothing."""

from __future__ import annotations

import os

import pytest
import ray

from outfitter.platform import local_ray


@pytest.fixture
def calls(monkeypatch):
    seen = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.append(kwargs))
    for key in [*local_ray.LOCAL_ENV, "RAY_ADDRESS"]:  # set, then removed: restored afterwards
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    return seen


@pytest.mark.parametrize("address", [None, "local"])
def test_a_local_instance_starts_without_the_preemption_watcher(calls, monkeypatch, address):
    local_ray.ensure_ray(address, num_cpus=2)
    assert calls == [
        {"address": address, "num_cpus": 2, "include_dashboard": False, "log_to_driver": False}
    ]
    assert os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"


@pytest.mark.parametrize("how", ["argument", "RAY_ADDRESS"])
def test_a_cluster_keeps_rays_defaults(calls, monkeypatch, how):
    if how == "RAY_ADDRESS":
        monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    local_ray.ensure_ray("auto" if how == "argument" else None, log_to_driver=True)
    assert calls[0]["log_to_driver"] is True  # the caller's choice wins
    assert not set(local_ray.LOCAL_ENV) & set(os.environ)


def test_a_user_setting_is_kept(calls, monkeypatch):
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "1")
    local_ray.ensure_ray()
    assert os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "1"
