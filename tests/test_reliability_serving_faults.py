"""Serving faults: a replica process killed under load, and model versions that fail to load.

With 2 replicas of every deployment on the session's Ray instance, two clients send a steady,
bounded stream of /v1/compatibility and /v1/retrieve requests to 127.0.0.1 while one replica
process of each deployment is SIGKILLed: the test counts failed requests and the seconds until
every deployment runs 2 replicas again. A model that fails to load (bad alias, missing artifact,
unreachable MLflow store) is a clear error at startup and, on a reconfigure, leaves the running
version serving (the Ray path of the bad-alias case: test_serve_ray.py::
test_a_model_that_fails_to_load_leaves_the_running_one_serving).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import requests
from serve_helpers import tiny_versions

from outfitter.platform import registry
from outfitter.platform.serving import launch
from outfitter.platform.serving.deployments import MODEL_DEPLOYMENTS, OutfitScorer

CONFIG = Path(__file__).resolve().parent.parent / "serve_configs" / "local.yaml"
APP = "reliability"
DEPLOYMENTS = ("Ingress", *MODEL_DEPLOYMENTS)
MAX_REQUESTS = 4000  # the load is bounded in count...
LOAD_SECONDS = 90  # ...and in time

# ---------------------------------------------------------------- process table


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # the process ended while we looked
            continue
        tree.setdefault(ppid, []).append(int(stat.parent.name))
    return tree


def replica_pids(deployment: str) -> list[int]:
    """Live replica processes of `deployment` of our app, started by this test process's Ray.

    Ray titles a replica process `ray::ServeReplica:<app>:<deployment>`; only descendants of
    this process are considered, so another Ray instance on the machine is never touched.
    """
    tree, pids, todo = _children(), [], [os.getpid()]
    title = f"ray::ServeReplica:{APP}:{deployment}".encode()
    while todo:
        for child in tree.get(todo.pop(), []):
            todo.append(child)
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(title) and cmdline[len(title) : len(title) + 1] in b". \0":
                pids.append(child)
    return pids


def _running(deployment: str) -> int:
    from ray import serve

    app = serve.status().applications.get(APP)
    if app is None or deployment not in app.deployments:
        return 0
    return int(app.deployments[deployment].replica_states.get("RUNNING", 0))


# ---------------------------------------------------------------- the application


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def versions(synth_dir, tmp_path_factory):
    return tiny_versions(tmp_path_factory.getbasetemp() / "tiny-models", synth_dir)


@pytest.fixture(scope="module")
def two_replicas(ray_session, synth_dir, versions):
    """The app of serve_configs/local.yaml with 2 replicas of every deployment, on a local
    checkpoint (no MLflow); (base URL, deploy seconds). Serve is shut down afterwards."""
    from ray import serve

    config = launch.load_serve_config(CONFIG)
    config["http_options"]["port"] = _free_port()
    (app,) = config["applications"]
    app["name"] = APP
    app["args"].update(model_uri=str(versions[0]), data_dir=str(synth_dir), device="cpu")
    for deployment in app["deployments"]:
        deployment.pop("autoscaling_config", None)
        deployment["num_replicas"] = 2  # 8 replicas x 0.25 CPU: the session's 2 CPUs
    t0 = time.monotonic()
    try:
        launch.deploy(launch.prepare_config(config), timeout_s=240)
        yield launch.url_of(config), time.monotonic() - t0
    finally:
        serve.shutdown()


class Load:
    """Clients sending requests back to back until stopped, bounded in count and time."""

    def __init__(self, base: str, outfit: list[str], clients: int = 2):
        self.base, self.outfit = base, outfit
        self.ok = 0
        self.failures: list = []
        self.stop = threading.Event()
        self.deadline = time.monotonic() + LOAD_SECONDS
        self.threads = [threading.Thread(target=self._client, args=(n,)) for n in range(clients)]

    def _client(self, n: int) -> None:
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

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)
        return False

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


def _kill_one_replica_each(deployments) -> tuple[dict[str, int], dict[str, float]]:
    """SIGKILL one replica process per deployment; returns (killed pid, seconds to 2 running)."""
    killed = {}
    for name in deployments:
        pids = replica_pids(name)
        assert len(pids) == 2 and _running(name) == 2, (name, pids, _running(name))
        killed[name] = pids[0]
    t0 = time.monotonic()
    for pid in killed.values():
        os.kill(pid, signal.SIGKILL)
    recovered: dict[str, float] = {}
    deadline = t0 + 120
    while len(recovered) < len(killed):
        assert time.monotonic() < deadline, f"capacity not back after 120 s: {recovered}"
        for name, pid in killed.items():
            if name in recovered:
                continue
            pids = replica_pids(name)
            if len(pids) == 2 and pid not in pids and _running(name) == 2:
                recovered[name] = time.monotonic() - t0
        time.sleep(0.2)
    return killed, recovered


def test_killing_a_model_replica_of_each_deployment_loses_no_request(two_replicas, capsys):
    base, deploy_s = two_replicas
    outfit = _outfit(base)
    with Load(base, outfit) as load:
        load.wait_for(20)  # steady state
        before = load.ok
        killed, recovered = _kill_one_replica_each(MODEL_DEPLOYMENTS)
        load.wait_for(20)  # and keeps serving on the replacements
    with capsys.disabled():
        print(
            f"\nserving faults: deploy {deploy_s:.1f}s; killed {killed}; requests ok "
            f"{load.ok} ({load.ok - before} after the kill), failed {len(load.failures)}; "
            f"2 replicas running again after {max(recovered.values()):.1f}s {recovered}"
        )
    assert load.failures == [], load.failures[:5]
    assert max(recovered.values()) < 120


@pytest.mark.slow
def test_killing_an_ingress_replica_loses_at_most_the_requests_in_flight(two_replicas, capsys):
    """The proxy routes new requests away from a dead ingress replica; requests already inside
    it (at most one per client here) are the only ones that may fail, with a 5xx, never a hang."""
    base, _ = two_replicas
    outfit = _outfit(base)
    with Load(base, outfit) as load:
        load.wait_for(20)
        killed, recovered = _kill_one_replica_each(["Ingress"])
        load.wait_for(20)
    with capsys.disabled():
        print(
            f"\ningress kill: requests ok {load.ok}, failed {len(load.failures)} "
            f"{[f[2] for f in load.failures]}; 2 replicas again after {recovered['Ingress']:.1f}s"
        )
    assert len(load.failures) <= len(load.threads), load.failures


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
    cls = OutfitScorer.func_or_class  # the plain class under the Serve decorator
    return cls(str(synth_dir), tracking_uri or uri, "cpu", {"model_uri": "", "revision": "0"})


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
                    "OutfitScorer": SimpleNamespace(status="DEPLOY_FAILED", message=message),
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
    assert text.startswith(f"Serve applications failed to deploy: {APP}: OutfitScorer: ")
    assert "RegistryError: cannot resolve 'models:/outfitter@nope'" in text
