"""`outfitter serve` as a user runs it: its own Ray instance with Serve's HAProxy ingress (slow).

The CLI starts Ray with `RAY_SERVE_ENABLE_HA_PROXY=1` (launch.SERVE_ENV), so requests go from
HAProxy straight to the replicas' own HTTP servers. That path must keep what the Python proxy
path (tests/test_serve_ray.py) guarantees: every socket Serve opens is on 127.0.0.1, an
oversized body gets a 413, answers carry the model version.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml
from serve_helpers import free_port, tiny_versions, wait_http

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _listening() -> dict[int, set[str]]:
    """Listening TCP ports -> the addresses they are bound to (from /proc/net/tcp*)."""
    found: dict[int, set[str]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            host, port = local.split(":")
            if state == "0A":
                addr = {"0100007F": "127.0.0.1"}.get(host, host)
                found.setdefault(int(port, 16), set()).add(addr)
    return found


def test_outfitter_serve_behind_haproxy_stays_on_loopback(synth_dir, tmp_path_factory, tmp_path):
    versions = tiny_versions(tmp_path_factory.getbasetemp() / "tiny-models", synth_dir)
    config = yaml.safe_load((ROOT / "serve_configs" / "local.yaml").read_text())
    port = config["http_options"]["port"] = free_port()
    (app,) = config["applications"]
    app["args"].update(model_uri=str(versions[0]), data_dir=str(synth_dir), device="cpu")
    app["args"].pop("tracking_uri")
    app["deployments"][0].pop("autoscaling_config")
    app["deployments"][0]["num_replicas"] = 1
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_ENABLE_HA")}
    env.pop("RAY_ADDRESS", None)
    cli = [str(Path(sys.executable).parent / "outfitter"), "serve", "--config", str(path)]
    server = subprocess.Popen([*cli, "--address", "local"], env=env, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/healthz", server, timeout=400)
        sockets = _listening()
        serve_ports = {p: a for p, a in sockets.items() if p == port or 30000 <= p <= 31000}
        assert len(serve_ports) >= 2, serve_ports  # HAProxy's port and the replica's own
        assert all(a == {"127.0.0.1"} for a in serve_ports.values()), serve_ports

        items = requests.get(f"{base}/v1/items", params={"limit": 3}, timeout=30).json()["items"]
        body = {"items": [{"item_id": i["item_id"]} for i in items]}
        r = requests.post(f"{base}/v1/compatibility", json=body, timeout=60)
        assert r.status_code == 200 and r.json()["model_version"] == "v1", r.text
        huge = b"[" * (9 * 1024 * 1024)
        r = requests.post(
            f"{base}/v1/retrieve", data=huge, headers={"content-type": "application/json"}
        )
        assert r.status_code == 413 and "Traceback" not in r.text, (r.status_code, r.text[:200])
    finally:
        server.send_signal(signal.SIGINT)  # the CLI shuts Serve down on Ctrl-C
        try:
            server.wait(timeout=90)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)
