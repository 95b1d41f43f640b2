"""Serving faults: a replica process killed under load, and model versions that fail to load.

With 2 replicas of the application's one deployment on the session's Ray instance, two clients
send a steady, bounded stream of /v1/compatibility and /v1/retrieve requests to 127.0.0.1 while
one replica process is SIGKILLed: the test counts failed requests and the seconds until 2
replicas run again. A model that fails to load (bad alias, missing artifact,
unreachable MLflow store) is a clear error at startup and, on a reconfigure, leaves the running
version serving (the Ray path of the bad-alias case: test_serve_ray.py::
test_a_model_that_fails_to_load_leaves_the_running_one_serving).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
import requests
from serve_helpers import ClientThreads, free_port, replica_pids, running_replicas, tiny_versions

from outfitter.platform import registry
from outfitter.platform.serve import launch
from outfitter.platform.serve.deployments import DEPLOYMENT, BatchedBackend

CONFIG = Path(__file__).resolve().parent.parent / "serve_configs" / "local.yaml"
APP = "reliability"
MAX_REQUESTS = 4000  # the load is bounded in count...
LOAD_SECONDS = 90  # ...and in time

# ---------------------------------------------------------------- the application


@pytest.fixture(scope="module")
def versions(synth_dir, tmp_path_factory):
    return tiny_versions(tmp_path_factory.getbasetemp() / "tiny-models", synth_dir)


@pytest.fixture(scope="module")
def two_replicas(ray_session, synth_dir, versions):
    """The app of serve_configs/local.yaml with 2 replicas, on a local checkpoint (no MLflow);
    (base URL, deploy seconds). Serve is shut down afterwards."""
    from ray import serve

    config = launch.load_serve_config(CONFIG)
    config["http_options"]["port"] = free_port()
    (app,) = config["applications"]
    app["name"] = APP
    app["args"].update(model_uri=str(versions[0]), data_dir=str(synth_dir), device="cpu")
    for deployment in app["deployments"]:
        deployment.pop("autoscaling_config", None)
        deployment["num_replicas"] = 2  # 2 replicas x 1 CPU: the session's 2 CPUs
    t0 = time.monotonic()
    try:
        launch.deploy(launch.prepare_config(config), timeout_s=240)
        yield launch.url_of(config), time.monotonic() - t0
    finally:
        serve.shutdown()


class Load(ClientThreads):
    """Clients sending requests back to back until stopped, bounded in count and time."""

    def __init__(self, base: str, outfit: list[str], clients: int = 2):
        super().__init__(clients)
        self.base, self.outfit = base, outfit
        self.ok = 0
        self.failures: list = []
        self.deadline = time.monotonic() + LOAD_SECONDS

    def client(self, n: int) -> None:
        session = requests.Session()
        refs = [{"item_id": i} for i in self.outfit]
        bodies = [
            ("/v1/compatibility", {"items": refs}),
            ("/v1/retrieve", {"items": refs[:2], "target": {"description": "shoes"}, "k": 5}),
        ]
        k = n
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            if self.ok + len(self.failures) >= MAX_REQUESTS:
                break
            path, body = bodies[k % 2]
            k += 1
            try:
                r = session.post(self.base + path, json=body, timeout=30)
                if r.status_code == 200:
                    self.ok += 1
                else:
                    self.failures.append((time.monotonic(), path, r.status_code, r.text[:200]))
            except requests.RequestException as err:
                self.failures.append((time.monotonic(), path, "error", repr(err)[:200]))

    def wait_for(self, n: int, timeout: float = 60) -> None:
        goal, deadline = self.ok + n, time.monotonic() + timeout
        while self.ok < goal:
            assert time.monotonic() < deadline, f"load stalled: {self.ok} ok, {self.failures[:3]}"
            time.sleep(0.05)


def _outfit(base: str) -> list[str]:
    items = requests.get(f"{base}/v1/items", params={"limit": 200}, timeout=30).json()["items"]
    first: dict[str, str] = {}
    for item in items:
        first.setdefault(item["category"], item["item_id"])
    return [first[c] for c in ("tops", "bottoms", "shoes")]


def _kill_one_replica() -> tuple[int, float]:
    """SIGKILL one of the 2 replica processes; returns (its pid, seconds until 2 run again)."""
    pids = replica_pids(APP, DEPLOYMENT)
    assert len(pids) == 2 and running_replicas(APP, DEPLOYMENT) == 2, pids
    t0 = time.monotonic()
    os.kill(pids[0], signal.SIGKILL)
    while True:
        assert time.monotonic() < t0 + 120, "capacity not back after 120 s"
        now = replica_pids(APP, DEPLOYMENT)
        if len(now) == 2 and pids[0] not in now and running_replicas(APP, DEPLOYMENT) == 2:
            return pids[0], time.monotonic() - t0
        time.sleep(0.2)


def test_killing_a_replica_loses_at_most_the_requests_in_flight(two_replicas, capsys):
    """A replica answers a request on its own (no second hop), so a SIGKILLed replica loses the
    requests inside it (at most one per client here), answered with a 5xx, never a hang; the
    proxy routes new requests to the live replica until Serve has replaced the dead one."""
    base, deploy_s = two_replicas
    outfit = _outfit(base)
    with Load(base, outfit) as load:
        load.wait_for(20)  # steady state
        before = load.ok
        killed, recovered = _kill_one_replica()
        load.wait_for(20)  # and keeps serving on the live and the replacement replica
    with capsys.disabled():
        print(
            f"\nserving faults: deploy {deploy_s:.1f}s; killed {killed}; requests ok "
            f"{load.ok} ({load.ok - before} after the kill), failed {len(load.failures)} "
            f"{[f[2] for f in load.failures]}; 2 replicas running again after {recovered:.1f}s"
        )
    assert len(load.failures) <= len(load.threads), load.failures
    assert all(f[2] != "error" for f in load.failures), load.failures  # answered, not hung


# ---------------------------------------------------------------- models that fail to load


@pytest.fixture(scope="module")
def store(versions, tmp_path_factory):
    """An MLflow store: version 1 (champion) loads; version 2's artifacts have been deleted.

    Versions are registered straight from folders in the pyfunc layout (`artifacts/checkpoint`),
    which is what `registry.resolve_model` downloads; cheaper than logging a pyfunc model.
    """
    import shutil

    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("faults-mlflow")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri := f"sqlite:///{root / 'mlflow.db'}")
    registry.configure_tracking()
    experiment = registry.ensure_experiment("serving-faults")
    client = MlflowClient()
    client.create_registered_model("outfitter")
    numbers = []
    for name in ("v1", "v2"):
        source = root / name
        shutil.copytree(
            versions[0], source / "artifacts" / "checkpoint", ignore=shutil.ignore_patterns("index")
        )
        run = client.create_run(experiment)
        mv = client.create_model_version("outfitter", str(source), run_id=run.info.run_id)
        numbers.append(str(mv.version))
        registry.log_index("outfitter", mv.version, versions[0] / "index")
    registry.promote("outfitter", numbers[0])
    shutil.rmtree(root / "v2")  # a lost (or pruned) artifact store
    yield uri, numbers
    mp.undo()


FAILURES = {
    # kind: (model_uri, tracking_uri or None for the store fixture's, what the error must say)
    "bad alias": ("models:/outfitter@no-such-alias", None, "no-such-alias"),
    "missing artifact": ("models:/outfitter/2", None, "models:/outfitter/2"),
    "store unreachable": ("models:/outfitter@champion", "http://127.0.0.1:9", "127.0.0.1:9"),
}


def _replica(store, synth_dir, tracking_uri):
    uri, _ = store
    defaults = {"model_uri": "", "revision": "0"}
    return BatchedBackend(str(synth_dir), tracking_uri or uri, "cpu", defaults)  # as a replica


@pytest.fixture
def no_mlflow_retries(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


@pytest.mark.parametrize("kind", list(FAILURES))
def test_a_model_that_fails_to_load_is_a_clear_startup_error(
    store, synth_dir, kind, no_mlflow_retries, monkeypatch
):
    model_uri, tracking_uri, says = FAILURES[kind]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store[0])
    replica = _replica(store, synth_dir, tracking_uri)
    with pytest.raises(registry.RegistryError) as err:
        asyncio.run(replica.reconfigure({"model_uri": model_uri}))
    message = str(err.value)
    print(f"\n{kind}: {message}")
    assert says in message and "Traceback" not in message, message
    assert len(message) < 1000


@pytest.mark.parametrize("kind", list(FAILURES))
def test_a_model_that_fails_to_load_leaves_the_running_version_serving(
    store, synth_dir, kind, no_mlflow_retries, monkeypatch
):
    model_uri, tracking_uri, says = FAILURES[kind]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store[0])
    replica = _replica(store, synth_dir, None)
    asyncio.run(replica.reconfigure({"model_uri": "models:/outfitter@champion", "revision": "1"}))
    serving = replica.state
    assert serving.version == store[1][0]
    if tracking_uri:  # the store goes away after startup
        monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        replica.tracking_uri = tracking_uri
    asyncio.run(replica.reconfigure({"model_uri": model_uri, "revision": "2"}))
    assert replica.state is serving, "the running version was replaced by a failed load"
    assert replica.load_error and says in replica.load_error, replica.load_error
    info = asyncio.run(replica.info())
    assert info["version"] == serving.version and says in info["load_error"]


def test_a_failed_deployment_is_reported_in_one_line(monkeypatch):
    """What `outfitter serve` prints when a replica cannot load its model: Serve's DEPLOY_FAILED
    message is a traceback; `launch.wait_until_running` raises with its last error line only."""
    from types import SimpleNamespace

    from ray import serve

    message = (
        "The deployment failed to start 3 times in a row. This may be due to a problem with its "
        "constructor or initial health check failing. See controller logs for details. Error:\n"
        'Traceback (most recent call last):\n  File "replica.py", line 1, in reconfigure\n'
        "outfitter.platform.registry.RegistryError: cannot resolve 'models:/outfitter@nope' "
        "against the MLflow store 'sqlite:///w/mlflow.db': Registered model alias nope not found."
    )
    status = SimpleNamespace(
        applications={
            APP: SimpleNamespace(
                status="DEPLOY_FAILED",
                message="",
                deployments={
                    "Outfitter": SimpleNamespace(status="DEPLOY_FAILED", message=message),
                    "Ingress": SimpleNamespace(status="HEALTHY", message=""),
                },
            )
        }
    )
    monkeypatch.setattr(serve, "status", lambda: status)
    with pytest.raises(RuntimeError) as err:
        launch.wait_until_running([APP], timeout_s=5)
    text = str(err.value)
    assert "\n" not in text and "Traceback" not in text, text
    assert text.startswith(f"Serve applications failed to deploy: {APP}: Outfitter: ")
    assert "RegistryError: cannot resolve 'models:/outfitter@nope'" in text
