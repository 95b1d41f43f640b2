"""A real multi-node Ray cluster on this one machine, started with Ray's own commands.

`LocalCluster` runs `ray start --head` and `ray start --address` as a user would on two hosts:
one head and worker nodes, each with its own resources (`head_node`, `worker_node`) and CPUs.
Both nodes share 127.0.0.1, so every port a node binds is either picked free here or left to the
OS (node manager, object manager, worker ports); the dashboard stays off.

The cluster is kept apart from the test session's own Ray (tests/conftest.py):

- its own `--temp-dir` (short, under /tmp: Ray's unix socket paths must stay under 108 bytes), so
  its address file is not /tmp/ray/ray_current_cluster and a plain `ray.init()` never finds it;
- each `ray start` runs in a session of its own, and every process it leaves behind (GCS,
  raylet, agents, workers, Serve replicas) stays in that session: `kill_worker_node` and `stop`
  SIGKILL exactly the processes of those sessions. (`ray stop` would stop every Ray on the
  machine, the session's and other users'; the environment and command line are no help either,
  as Ray's retitled processes overwrite both.)
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from serve_helpers import free_port, own_processes

RAY = str(Path(sys.executable).parent / "ray")

# The GCS declares a node dead after `failure_threshold` missed health checks; Ray's defaults
# (every 3 s, 5 misses, 10 s timeout) take up to ~25 s. A killed raylet is noticed in ~3 s here.
FAST_NODE_DEATH = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


class LocalCluster:
    """A head node and worker nodes on 127.0.0.1, started and stopped with the `ray` CLI."""

    def __init__(
        self, head_cpus: int = 1, worker_cpus: int = 1, object_store_mb: int = 150, env=None
    ):
        """`env`: extra environment variables of every process of every node."""
        self.head_cpus, self.worker_cpus = head_cpus, worker_cpus
        self.object_store = str(object_store_mb * 2**20)
        self.temp_dir = tempfile.mkdtemp(prefix="oc-", dir="/tmp")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        # Token authentication, as README says a VM cluster runs: the same token on every node
        # and in every driver (`self.env`). Set explicitly: left unset, `ray start --head` turns
        # tokens on by itself when ~/.ray/auth_token exists, and an explicit --address does not.
        self.env.update(
            env or {},
            **FAST_NODE_DEATH,
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=secrets.token_hex(32),
        )
        self.commands: list[list[str]] = []  # every `ray start` run, for the report
        self.sessions: dict[str, list[int]] = {"head": [], "worker": []}  # session ids per role

    def driver_env(self, **extra: str) -> dict[str, str]:
        """The environment of a driver process (`outfitter train`, `outfitter serve`) that
        connects to this cluster: RAY_ADDRESS and the cluster's token, plus `extra`."""
        auth = {k: self.env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
        return {**os.environ, **auth, "RAY_ADDRESS": self.address, **extra}

    # ------------------------------------------------------------ starting nodes

    def _common(self) -> list[str]:
        return [
            f"--temp-dir={self.temp_dir}",
            f"--object-store-memory={self.object_store}",
            "--disable-usage-stats",
            "--min-worker-port=0", "--max-worker-port=0",  # workers: any free port
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
        ]  # fmt: skip

    def _ray_start(self, role: str, args: list[str]) -> int:
        """Run `ray start` in a new session; returns the session id its daemons keep."""
        command = [RAY, "start", *args, *self._common()]
        self.commands.append(command)
        proc = subprocess.Popen(
            command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        self.sessions[role].append(proc.pid)  # before it returns: stop() finds its daemons
        out, _ = proc.communicate(timeout=180)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{out[-3000:]}")
        return proc.pid

    def start_head(self) -> None:
        self._ray_start("head", [
            "--head", f"--port={self.port}", f"--num-cpus={self.head_cpus}",
            "--resources", json.dumps({"head_node": 1}),
            "--include-dashboard=false", f"--dashboard-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
        ])  # fmt: skip

    def add_worker(self) -> int:
        """Start a worker node joining the head; returns its raylet's pid."""
        sid = self._ray_start("worker", [
            f"--address={self.address}", f"--num-cpus={self.worker_cpus}",
            "--resources", json.dumps({"worker_node": 1}),
        ])  # fmt: skip
        (pid,) = self.raylets(sessions={sid})
        return pid

    # ------------------------------------------------------------ finding its processes

    def pids(self, sessions: set[int] | None = None) -> list[int]:
        """Live processes of this cluster's `ray start` sessions (or of `sessions`), no zombies."""
        sessions = sessions or {sid for sids in self.sessions.values() for sid in sids}
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()  # state, ppid, pgrp, session
            except (OSError, IndexError):  # ended while we looked
                continue
            if int(fields[3]) in sessions and fields[0] != "Z":
                found.append(int(stat.parent.name))
        return sorted(found)

    def raylets(self, resource: str | None = None, sessions: set[int] | None = None) -> list[int]:
        """Raylet pids of this cluster; with `resource`, only the nodes that have it.

        A raylet starting a worker forks first: for a moment the child has the raylet's command
        line too. Only processes whose parent is not such a match count.
        """
        found = {}
        for pid in self.pids(sessions):
            with contextlib.suppress(OSError, IndexError):
                args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                if not args[0].endswith(b"/raylet"):
                    continue
                static = next((a for a in args if a.startswith(b"--static_resource_list=")), b"")
                if resource is None or f"={resource},".encode() in static:
                    found[pid] = ppid
        return sorted(pid for pid, ppid in found.items() if ppid not in found)

    def head_raylet(self) -> int:
        (pid,) = self.raylets("head_node")
        return pid

    def worker_raylet(self) -> int:
        (pid,) = self.raylets("worker_node")
        return pid

    def on_node(self, title: str, raylet: int) -> list[int]:
        """Processes titled `title` (e.g. `ray::RayTrainWorker`) that the node's raylet forked."""
        return own_processes(title, root=raylet)

    # ------------------------------------------------------------ faults and teardown

    def kill_worker_node(self) -> int:
        """SIGKILL the worker node's raylet, then every other process of that node (its agents,
        log monitor and workers), as a host going down takes them all. Returns the raylet's pid."""
        raylet = self.worker_raylet()
        os.kill(raylet, signal.SIGKILL)
        for pid in self.pids(set(self.sessions["worker"])):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return raylet

    def stop(self) -> None:
        """SIGKILL every process of this cluster (never another Ray), then remove its temp dir."""
        for _ in range(5):  # a worker forked while we killed is caught by the next round
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        left = self.pids()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        assert not left, f"cluster processes survived SIGKILL: {left}"


def start_mlflow_server(root: Path) -> tuple[subprocess.Popen, str]:
    """An `mlflow server` on a free 127.0.0.1 port, sqlite store and artifacts under `root`;
    (process, tracking URI). The caller terminates it."""
    from serve_helpers import wait_http

    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "mlartifacts"), "--workers", "1",
        ],
        stdout=(root / "mlflow-server.log").open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(uri + "/health", server)
    except BaseException:
        server.kill()
        raise
    return server, uri
