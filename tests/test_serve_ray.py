"""The real Ray Serve application on a tiny registered model, over HTTP on 127.0.0.1.

Deploys `serve_configs/local.yaml` (its args pointed at a test catalog and MLflow store) the way
`outfitter serve` does, hits every endpoint, checks that a replica started after a promotion
still serves the pinned version, then promotes a second version under concurrent requests and
re-applies the config: the replicas reconfigure in place, with zero failed requests.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
from serve_helpers import free_port, image_b64, replica_pids, running_replicas, tiny_versions

from outfitter.platform import registry
from outfitter.platform.serve import launch

CONFIG = Path(__file__).resolve().parent.parent / "serve_configs" / "local.yaml"
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def registered(synth_dir, tmp_path_factory):
    """An MLflow store with versions 1 (champion) and 2 (challenger), each with its index."""
    import mlflow

    versions = tiny_versions(tmp_path_factory.getbasetemp() / "tiny-models", synth_dir)
    store = tmp_path_factory.mktemp("mlflow")
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri = f"sqlite:///{store / 'mlflow.db'}"
    try:
        registry.configure_tracking()
        experiment = registry.ensure_experiment("serve-tests")
        numbers = []
        for i, source in enumerate(versions):
            # MLflow stores a pyfunc artifact folder under its own name: call it `checkpoint`.
            checkpoint = store / f"v{i + 1}" / "checkpoint"
            shutil.copytree(source, checkpoint, ignore=shutil.ignore_patterns("index"))
            with mlflow.start_run(experiment_id=experiment):
                mlflow.log_metric("best_valid_compatibility_auc", 0.5)
                info = registry.log_checkpoint_model(checkpoint)
            number = registry.register_model(info.model_uri, alias="challenger")
            registry.log_index("outfitter", number, source / "index")
            numbers.append(number)
        registry.promote("outfitter", numbers[0])
        yield uri, numbers
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old


@pytest.fixture(scope="module")
def served(ray_session, registered, synth_dir):
    """(base URL, the config as applied) of the running application."""
    from ray import serve

    uri, _ = registered
    config = launch.load_serve_config(CONFIG)
    config["http_options"]["port"] = free_port()
    args = config["applications"][0]["args"]
    args.update(data_dir=str(synth_dir), tracking_uri=uri, device="cpu")
    launch.deploy(launch.prepare_config(config), timeout_s=300)
    yield launch.url_of(config), config
    serve.shutdown()


def _listening(port: int) -> set[str]:
    """Local addresses listening on `port` (from /proc/net/tcp; empty where there is none)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            host, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                found.add("127.0.0.1" if host == "0100007F" else host)
    return found


def test_every_endpoint_over_http(served, synth_dir):
    base, config = served
    listening = _listening(config["http_options"]["port"])
    assert listening <= {"127.0.0.1"}, f"bound to {listening}, not loopback only"
    assert requests.get(f"{base}/healthz", timeout=30).json() == {
        "status": "ok",
        "model_version": "1",
    }
    info = requests.get(f"{base}/v1/model", timeout=30).json()
    assert (info["name"], info["version"], info["alias"]) == ("outfitter", "1", "champion")
    assert info["metrics"]["best_valid_compatibility_auc"] == 0.5 and info["index"]["n_items"] > 0

    items = requests.get(f"{base}/v1/items", params={"limit": 200}, timeout=30).json()["items"]
    first = {}
    for item in items:
        first.setdefault(item["category"], item["item_id"])
    outfit = [{"item_id": first[c]} for c in ("tops", "bottoms") if c in first]
    image = requests.get(f"{base}/v1/items/{outfit[0]['item_id']}/image", timeout=30)
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"

    new = {"title": "green scarf", "description": "wool", "image_b64": image_b64()}
    r = requests.post(f"{base}/v1/compatibility", json={"items": [*outfit, new]}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] == "1" and 0 <= r.json()["weakest_item"]["index"] < 3

    target = {"description": "white canvas sneakers", "category": "shoes"}
    r = requests.post(
        f"{base}/v1/retrieve", json={"items": outfit, "target": target, "k": 4}, timeout=60
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["items"]) == 4 and {h["category"] for h in r.json()["items"]} == {"shoes"}

    body = {"items": [*outfit, new], "targets": [target, {"description": "a bag"}], "k": 2}
    r = requests.post(f"{base}/v1/complete", json=body, timeout=60)
    assert r.status_code == 200 and len(r.json()["outfit"]) == 5, r.text

    r = requests.post(
        f"{base}/v1/compatibility", json={"items": [{"item_id": "nope"}] * 2}, timeout=30
    )
    assert r.status_code == 422 and "nope" in r.json()["errors"][0]["rule"]
    huge = b"[" * (9 * 1024 * 1024)
    r = requests.post(
        f"{base}/v1/retrieve", data=huge, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and "Traceback" not in r.text
    assert requests.get(f"{base}/docs", timeout=30).status_code == 200


def test_a_replica_started_after_a_promotion_serves_the_pinned_version(served, registered):
    """Promote another version without redeploying, SIGKILL the replica: the replica Serve starts
    in its place loads the version the deployment was given, not the alias's new target."""
    base, _ = served
    _, numbers = registered
    items = requests.get(f"{base}/v1/items", params={"limit": 3}, timeout=30).json()["items"]
    body = {"items": [{"item_id": i["item_id"]} for i in items]}
    assert (
        requests.post(f"{base}/v1/compatibility", json=body, timeout=60).json()["model_version"]
        == numbers[0]
    )
    registry.promote("outfitter", numbers[1])  # the alias moves; nothing is redeployed
    (pid,) = replica_pids("outfitter", "Outfitter")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 180
    while not (
        (pids := replica_pids("outfitter", "Outfitter"))
        and pid not in pids
        and running_replicas("outfitter", "Outfitter") >= 1
    ):
        assert time.monotonic() < deadline, "no replica after 180 s"
        time.sleep(0.5)
    versions = Counter()
    while sum(versions.values()) < 20:
        assert time.monotonic() < deadline, versions
        try:
            r = requests.post(f"{base}/v1/compatibility", json=body, timeout=60)
        except requests.RequestException:
            time.sleep(0.5)  # the proxy may still route to the dead replica for a moment
            continue
        if r.status_code == 200:
            versions[r.json()["model_version"]] += 1
        else:
            time.sleep(0.5)
    assert set(versions) == {numbers[0]}, versions
    assert requests.get(f"{base}/v1/model", timeout=30).json()["version"] == numbers[0]
    registry.promote("outfitter", numbers[0])  # as the next test expects to find it


def test_hot_swap_under_load_drops_nothing(served, registered):
    base, config = served
    _, numbers = registered
    items = requests.get(f"{base}/v1/items", params={"limit": 3}, timeout=30).json()["items"]
    outfit = [{"item_id": i["item_id"]} for i in items]
    seen, failures, stop = Counter(), [], threading.Event()
    last: dict[int, str] = {}

    def client(n: int) -> None:
        session = requests.Session()
        while not stop.is_set():
            if n % 2:
                path, body = "/v1/compatibility", {"items": outfit}
            else:
                path, body = (
                    "/v1/retrieve",
                    {"items": outfit[:2], "target": {"description": "shoes"}},
                )
            try:
                r = session.post(base + path, json=body, timeout=60)
                if r.status_code != 200:
                    failures.append((r.status_code, r.text[:200]))
                    continue
                seen[r.json()["model_version"]] += 1
                last[n] = r.json()["model_version"]
            except requests.RequestException as err:
                failures.append(repr(err))

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        registry.promote("outfitter", numbers[1])
        prepared = launch.prepare_config(config)  # pins revision = the new champion's version
        (deployment,) = prepared["applications"][0]["deployments"]
        assert deployment["user_config"]["model_uri"] == f"models:/outfitter/{numbers[1]}"
        assert deployment["user_config"]["revision"] == numbers[1]
        launch.deploy(prepared, timeout_s=120)
        deadline = time.monotonic() + 120
        while not (len(last) == 4 and set(last.values()) == {numbers[1]}):
            assert time.monotonic() < deadline, f"still serving {last} after the swap"
            time.sleep(0.2)
        before = sum(seen.values())
        while sum(seen.values()) < before + 20:  # and keeps serving the new version
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert failures == [], failures[:5]
    assert seen[numbers[0]] > 0 and seen[numbers[1]] >= 20, seen
    assert set(last.values()) == {numbers[1]}
    assert requests.get(f"{base}/v1/model", timeout=30).json()["version"] == numbers[1]


def test_a_model_that_fails_to_load_leaves_the_running_one_serving(served):
    base, config = served
    before = requests.get(f"{base}/v1/model", timeout=30).json()["version"]
    broken = launch.prepare_config(config, pin=False)
    for deployment in broken["applications"][0]["deployments"]:
        if "user_config" in deployment:
            deployment["user_config"]["model_uri"] = "models:/outfitter@no-such-alias"
    launch.deploy(broken, timeout_s=120)
    deadline = time.monotonic() + 30  # /v1/model may answer from a one-second cache
    while not (info := requests.get(f"{base}/v1/model", timeout=30).json())["load_error"]:
        assert time.monotonic() < deadline, info
        time.sleep(0.5)
    assert info["version"] == before and "no-such-alias" in info["load_error"]
    r = requests.post(f"{base}/v1/retrieve", json={"items": [], "target": {}}, timeout=30)
    assert r.status_code == 422
    items = requests.get(f"{base}/v1/items", params={"limit": 2}, timeout=30).json()["items"]
    r = requests.post(
        f"{base}/v1/compatibility",
        json={"items": items and [{"item_id": i["item_id"]} for i in items]},
        timeout=60,
    )
    assert r.status_code == 200 and r.json()["model_version"] == before
