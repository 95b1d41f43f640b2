"""A real multi-node run on this machine: a head and a worker node started with `ray start`, an
`mlflow server` as the tracking store and a shared folder as `--storage-path`.

- `outfitter train --workers 2` places a Train worker on each node; the worker node is killed
  (its raylet and every process of it) after the first checkpoint and a new worker node joins:
  the run restarts from the last checkpoint, loses at most the epoch in flight, and its MLflow run
  and registered version are intact.
- `outfitter serve` runs a replica on each node; the worker node is killed under load: the head's
  replica answers every request (a client retries a failed request once).

The cluster is separate from the test session's Ray (tests/cluster_helpers.py). Head and worker
each have 1 logical CPU, so 2 one-CPU Train workers or Serve replicas must use both nodes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml
from cluster_helpers import LocalCluster, start_mlflow_server
from serve_helpers import first_of, free_port, tiny_versions

CONFIG = Path(__file__).resolve().parent.parent / "serve_configs" / "local.yaml"
TRAIN_WORKER = "ray::RayTrainWorker"
REPLICA = "ray::ServeReplica:outfitter:Outfitter"


@pytest.fixture(scope="module")
def cluster():
    """Head (1 CPU, resource `head_node`) + one worker node (1 CPU, `worker_node`).

    Serve's proxy (on the head only) prefers replicas on its own node while they have room: all
    of a test's requests would go to the head's replica and the killed node would never have
    held one. Turned off, it spreads them over both, as it would over replicas elsewhere."""
    nodes = LocalCluster(
        head_cpus=1, worker_cpus=1, env={"RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0"}
    )
    t0 = time.monotonic()
    try:
        nodes.start_head()
        nodes.add_worker()
        print(f"\ncluster of 2 nodes up in {time.monotonic() - t0:.1f} s")
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """The cluster's MLflow tracking store: an `mlflow server` on 127.0.0.1."""
    root = tmp_path_factory.mktemp("mlflow-server")
    server, uri = start_mlflow_server(root)
    try:
        yield uri
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait(condition, timeout: float, what: str, proc=None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.2)
    tail = log.read_text()[-4000:] if log is not None and log.exists() else ""
    raise AssertionError(f"{what} (not within {timeout:.0f} s)\n{tail}")


def _registered(storage: Path) -> list[dict]:
    try:
        snapshot = json.loads((storage / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):  # not written yet, or being written
        return []
    return snapshot.get("checkpoint_results", [])


def _placement(cluster: LocalCluster, title: str) -> dict[str, int]:
    return {
        "head": len(cluster.on_node(title, cluster.head_raylet())),
        "worker": len(cluster.on_node(title, cluster.worker_raylet())),
    }


# ---------------------------------------------------------------- training


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(600)
def test_train_on_two_nodes_survives_losing_the_worker_node(cluster, tracking, synth_dir, tmp_path):
    from mlflow import MlflowClient

    storage = tmp_path / "shared"  # the shared folder every node writes checkpoints to
    run = storage / "cluster"
    epochs = 4
    command = [
        sys.executable, "-m", "outfitter.cli", "train", "--data", str(synth_dir),
        "--workdir", str(tmp_path / "work"), "--storage-path", str(storage),
        "--run-name", "cluster", "--workers", "2", "--epochs", str(epochs),
        "--batch-size", "4", "--max-steps-per-epoch", "24", "--patience", "0",
        "--set", "transformer.layers=1", "--allow-random-towers",
        "--metrics-out", str(tmp_path / "result.json"),
    ]  # fmt: skip
    log = tmp_path / "train.log"
    t0 = time.monotonic()
    with log.open("w") as out:
        driver = subprocess.Popen(
            command, env=cluster.driver_env(MLFLOW_TRACKING_URI=tracking), stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        placed = _wait(
            lambda: (p := _placement(cluster, TRAIN_WORKER))["head"] and p["worker"] and p,
            240, "the 2 Train workers never ran one on each node", driver, log,
        )  # fmt: skip
        _wait(lambda: _registered(run), 240, "no checkpoint registered", driver, log)
        assert driver.poll() is None, "the run finished before the node could be killed"
        registered = len(_registered(run))
        killed_at = time.monotonic()
        cluster.kill_worker_node()
        new_raylet = cluster.add_worker()  # the node comes back (a new host joins)
        rejoined = time.monotonic() - killed_at
        # The restarted group needs the new node's CPU: watch a Train worker start there.
        on_new_node = _wait(
            lambda: cluster.on_node(TRAIN_WORKER, new_raylet), 240,
            "no Train worker ever ran on the new node", driver, log,
        )  # fmt: skip
        driver.wait(timeout=420)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    seconds = time.monotonic() - t0
    output = log.read_text()
    assert driver.returncode == 0, output[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())

    client = MlflowClient(tracking_uri=tracking)
    mlflow_run = client.get_run(result["run_id"])
    history = sorted(
        client.get_metric_history(result["run_id"], "epoch"), key=lambda m: m.timestamp
    )
    resumed = client.get_metric_history(result["run_id"], "resumed_from_epoch")
    logged = [int(m.value) for m in history]
    print(
        f"\ntrain on 2 nodes: workers placed {placed}; killed the worker node after "
        f"{registered} registered checkpoint(s); new node joined {rejoined:.1f} s after the "
        f"kill and ran Train worker {on_new_node}; epochs logged {logged}, resumed from "
        f"{sorted({int(m.value) for m in resumed})}; "
        f"{seconds:.1f} s in all"
    )
    assert mlflow_run.info.status == "FINISHED"
    assert logged[-1] == epochs, logged  # ran to the end
    assert max(int(m.value) for m in resumed) >= 1, "the restarted group did not resume"
    assert len(logged) - len(set(logged)) <= 1, f"more than one epoch lost: {logged}"
    version = client.get_model_version(result["model_name"], result["model_version"])
    assert version.run_id == result["run_id"]
    assert client.get_model_version_by_alias(result["model_name"], "challenger").version == (
        version.version
    )
    for entry in _registered(run):  # every registered checkpoint in the shared folder is whole
        folder = run / Path(entry["checkpoint_dir_name"]).name
        assert {"config.json", "model.safetensors", "meta.json"} <= {
            p.name for p in folder.iterdir()
        }, folder


# ---------------------------------------------------------------- serving


class Client(threading.Thread):
    """Sends /v1/compatibility back to back; a failed request is retried once, as README asks
    of an API client. Records (time, first status, final status) per request."""

    def __init__(self, base: str, outfit: list[str]):
        super().__init__(daemon=True)
        self.base, self.body = base, {"items": [{"item_id": i} for i in outfit]}
        self.results: list[tuple[float, object, object]] = []
        self.stop = threading.Event()

    def _once(self, session) -> object:
        try:
            return session.post(
                self.base + "/v1/compatibility", json=self.body, timeout=30
            ).status_code
        except requests.RequestException as err:
            return type(err).__name__

    def run(self) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            first = self._once(session)
            final = first if first == 200 else self._once(session)
            self.results.append((time.monotonic(), first, final))


def _serve_config(tmp_path: Path, model: Path, data: Path, tracking: str) -> Path:
    config = yaml.safe_load(CONFIG.read_text())
    assert config["proxy_location"] == "HeadOnly"  # one proxy: two on one host share a port
    config["http_options"]["port"] = free_port()
    (app,) = config["applications"]
    app["args"].update(model_uri=str(model), data_dir=str(data), tracking_uri=tracking)
    (deployment,) = app["deployments"]
    deployment.pop("autoscaling_config")
    deployment["num_replicas"] = 2  # 1 CPU each: one per node
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(600)
def test_serve_on_two_nodes_keeps_answering_when_the_worker_node_dies(
    cluster, tracking, synth_dir, tmp_path, tmp_path_factory
):
    from outfitter.data import load_catalog

    if not cluster.raylets("worker_node"):  # the training test's new node, else a fresh one
        cluster.add_worker()
    model = tiny_versions(tmp_path_factory.getbasetemp() / "tiny-models", synth_dir)[0]
    config = _serve_config(tmp_path, model, synth_dir, tracking)
    base = f"http://127.0.0.1:{yaml.safe_load(config.read_text())['http_options']['port']}"
    t0 = time.monotonic()
    deployed = subprocess.run(
        [sys.executable, "-m", "outfitter.cli", "serve", "--config", str(config),
         "--address", cluster.address, "--detach"],
        env=cluster.driver_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr[-4000:]
    deploy_s = time.monotonic() - t0
    placed = _placement(cluster, REPLICA)
    assert placed == {"head": 1, "worker": 1}, placed

    replicas = {n: cluster.on_node(REPLICA, cluster.raylets(f"{n}_node")[0]) for n in placed}
    outfit = first_of(load_catalog(synth_dir), "tops", "bottoms", "shoes")
    clients = [Client(base, outfit) for _ in range(2)]
    # CPU rate of each replica idle, then under the load: both must work for the load, so the
    # worker node's replica holds requests when the node dies. (Serve's access log is no help:
    # it is buffered in memory and flushed per 1,000 lines.)
    idle = _cpu_rates(replicas, lambda: time.sleep(3))
    for client in clients:
        client.start()
    try:
        busy = _cpu_rates(
            replicas, lambda: _wait(lambda: _answered(clients) >= 100, 90, "no steady answers")
        )
        killed_at = time.monotonic()
        cluster.kill_worker_node()
        time.sleep(20)  # load on the head's replica alone
    finally:
        for client in clients:
            client.stop.set()
        for client in clients:
            client.join(timeout=60)
    results = sorted(r for client in clients for r in client.results)
    before = [r for r in results if r[0] < killed_at]
    after = [r for r in results if r[0] >= killed_at]
    first_failed = [r for r in after if r[1] != 200]
    failed = [r for r in after if r[2] != 200]
    window = 5.0  # seconds after the kill in which a failure is the dead node's, not a bug
    late = [r for r in failed if r[0] > killed_at + window]
    print(
        f"\nserve on 2 nodes: deployed in {deploy_s:.1f} s, replicas {placed}, replica CPU "
        f"s/s idle {idle}, under load {busy}; "
        f"{len(before)} requests before the kill, {len(after)} in the 20 s after it: "
        f"{len(first_failed)} failed once ({[r[1] for r in first_failed]}), "
        f"{len(failed)} failed after the retry, {len(late)} later than {window:.0f} s"
    )
    assert all(r[2] == 200 for r in before), before[:5]
    assert busy["worker"] > 2 * idle["worker"] + 0.02, f"worker replica idle: {idle} {busy}"
    assert len(after) >= 20, f"the head's replica answered only {len(after)} requests"
    assert not late, f"requests still failing {window} s after the kill: {late[:5]}"
    assert len(failed) <= 1, f"more than the request in flight lost: {failed}"
    assert len(first_failed) <= 2, first_failed
    assert requests.get(base + "/healthz", timeout=10).status_code == 200
    assert cluster.on_node(REPLICA, cluster.head_raylet()) == replicas["head"]  # never replaced


def _answered(clients: list[Client]) -> int:
    return sum(r[2] == 200 for client in clients for r in client.results)


def _cpu_rates(replicas: dict[str, list[int]], during) -> dict[str, float]:
    """CPU seconds per second of each replica process while `during()` runs."""
    t0, cpu0 = time.monotonic(), {n: _cpu_seconds(pid) for n, (pid,) in replicas.items()}
    during()
    seconds = time.monotonic() - t0
    return {n: round((_cpu_seconds(pid) - cpu0[n]) / seconds, 3) for n, (pid,) in replicas.items()}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
