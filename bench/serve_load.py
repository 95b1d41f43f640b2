"""Serving load benchmark: the Ray Serve application against the plain server a user would run.

Side by side in one run on 127.0.0.1, each target measured in fixed time windows (`--window`
seconds after a warm-up) at concurrency 1 and 32 on /v1/compatibility and /v1/retrieve:

- `serve-N`: the application of serve_configs/local.yaml (one fused replica type, in-replica
  `@serve.batch`) behind Serve's HAProxy ingress, as `outfitter serve` starts it
  (`launch.SERVE_ENV`), held at N replicas for the windows, for each N of `--replicas` (1,2:
  one replica is one process like `uvicorn-1`; two fill this 2-CPU machine);
- `uvicorn-1`: the same FastAPI app in one uvicorn process, model in-process, no batching;
- `uvicorn-N`: `uvicorn --workers N`, N = Serve's replicas;
- `bare`: the model's batched forward without HTTP (outfits/s, queries/s): the limit.

Each window records req/s, latency percentiles, failures and the CPU share (core-seconds per
second) of the load generator and of each server process group, read from /proc: on a shared
2-CPU machine the generator and the servers compete, and other jobs' load (recorded) moves
every figure. `÷ bare` divides the outfits (or queries) served per second by the bare model's
batch-32 rate: a compatibility request of n items scores n + 1 outfits.

`--burst` then deploys the autoscaling config (1..2 replicas) and sends c=1, a burst at c=32,
then c=1 again, recording each second the req/s, the RUNNING replica count, failures and the
model versions answered (bench/results/serve_load_burst.json; report.py plots it).
`--flags` compares Ray Serve's lower-overhead paths instead (serve_load_flags.json).

    nice -n 0 .venv/bin/python bench/serve_load.py                  # compare + burst
    .venv/bin/python bench/serve_load.py --flags --no-burst          # the Serve flag study
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import numpy as np
import typer

ROOT = Path(__file__).resolve().parent.parent
LEVELS = (1, 32)
ENDPOINTS = ("/v1/compatibility", "/v1/retrieve")
LISTENING: dict[str, list[str]] = {}  # sockets Serve opened, per variant (loopback only?)
APP = "outfitter"
# Ray Serve's per-replica loop/thread flags as serve_configs/local.yaml sets them (adopted), and
# Ray's defaults; HAProxy is a cluster-wide switch read when Serve starts.
_LOOP_FLAGS = (
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP",
)
ADOPTED = dict.fromkeys(_LOOP_FLAGS, "0")
RAY_DEFAULTS = dict.fromkeys(_LOOP_FLAGS, "1")


# ---------------------------------------------------------------- set-up


def tiny_setup(workdir: Path) -> tuple[str, Path]:
    """A synthetic catalog and a random-init hybrid-tiny checkpoint with its index."""
    import torch

    from outfitter.data import load_catalog
    from outfitter.data.synth import synthesize
    from outfitter.model import load_config
    from outfitter.model.checkpoint import load_checkpoint, save_checkpoint
    from outfitter.model.factory import build_model
    from outfitter.model.inputs import InputBuilder
    from outfitter.model.towers import create_towers
    from outfitter.platform.index import build_index

    data = workdir / "data"
    if not (data / "polyvore_item_metadata.json").exists():
        synthesize(data, n_outfits=600, seed=0, image_size=64)
    checkpoint = workdir / "checkpoint"
    if not (checkpoint / "index" / "meta.json").exists():
        cfg = load_config("hybrid-tiny")
        torch.manual_seed(0)
        save_checkpoint(checkpoint, build_model(cfg), cfg, {}, towers=create_towers(cfg.clip))
        model, _, _ = load_checkpoint(checkpoint)
        build_index(model, InputBuilder.for_model(model, load_catalog(data))).save(
            checkpoint / "index"
        )
    return str(checkpoint), data


def request_bodies(data: Path, n: int, seed: int = 0) -> dict[str, list[dict]]:
    """Varied request bodies: outfits of 3-4 catalog items, contexts of 2 and a target."""
    from outfitter.data import load_catalog

    catalog = load_catalog(data)
    by_cat: dict[str, list[str]] = {}
    for item_id in catalog.item_ids:
        by_cat.setdefault(catalog.items[item_id].category, []).append(item_id)
    rng = random.Random(seed)
    cats = [c for c in ("tops", "bottoms", "shoes", "bags", "outerwear") if c in by_cat]
    compat, retrieve = [], []
    for _ in range(n):
        picked = [{"item_id": rng.choice(by_cat[c])} for c in rng.sample(cats, k=min(4, len(cats)))]
        compat.append({"items": picked[: rng.choice((3, 4))]})
        target = {"description": rng.choice(("white sneakers", "leather bag", "denim jacket"))}
        retrieve.append({"items": picked[:2], "target": {**target, "category": cats[-1]}, "k": 10})
    return {"/v1/compatibility": compat, "/v1/retrieve": retrieve}


def work_per_request(bodies: dict[str, list[dict]]) -> dict[str, float]:
    """Model inputs per request: outfits scored (n + 1 for n items), or queries (1)."""
    compat = bodies["/v1/compatibility"]
    return {
        "/v1/compatibility": float(np.mean([len(b["items"]) + 1 for b in compat])),
        "/v1/retrieve": 1.0,
    }


# ---------------------------------------------------------------- CPU shares from /proc

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime
    except (OSError, IndexError, ValueError):
        return 0.0


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def process_groups(kind: str, root_pids: list[int]) -> dict[str, list[int]]:
    """Server processes by role: Serve replicas / proxy / controller, or uvicorn processes."""
    groups: dict[str, list[int]] = {}
    for pid in common.process_tree(root_pids):
        title = _title(pid)
        if kind == "uvicorn":
            role = "uvicorn" if pid in root_pids or "python" in title or "uvicorn" in title else ""
        elif title.startswith("ray::ServeReplica"):
            role = "replicas"
        elif title.startswith("ray::ProxyActor") or "haproxy" in title:
            role = "proxy"
        elif title.startswith("ray::ServeController"):
            role = "controller"
        else:
            role = "ray other"  # raylet, gcs, workers; counted so nothing hides
        if role:
            groups.setdefault(role, []).append(pid)
    return groups


class CpuMeter:
    """Core-seconds per second of each process group and of this process (the load generator)."""

    def __init__(self, groups: dict[str, list[int]]):
        self.groups = {**groups, "load generator": [os.getpid()]}

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.start = {g: sum(map(_cpu_seconds, pids)) for g, pids in self.groups.items()}
        return self

    def __exit__(self, *exc):
        seconds = time.perf_counter() - self.t0
        self.shares = {
            g: round((sum(map(_cpu_seconds, pids)) - self.start[g]) / seconds, 3)
            for g, pids in self.groups.items()
        }
        return False


# ---------------------------------------------------------------- load


async def window(
    url: str, bodies: list[dict], concurrency: int, seconds: float, warmup_s: float, groups
) -> dict:
    """Requests back to back from `concurrency` clients: a warm-up, then a fixed time window."""
    import aiohttp

    stats = {"latencies": [], "failures": 0, "codes": {}}
    recording = False

    async def client(http, stop_at: float, k: int) -> None:
        while time.perf_counter() < stop_at:
            body = bodies[k % len(bodies)]
            k += concurrency
            start = time.perf_counter()
            try:
                async with http.post(url, json=body) as r:
                    await r.read()
                    code = r.status
            except aiohttp.ClientError:
                code = "error"
            if recording:
                if code == 200:
                    stats["latencies"].append(time.perf_counter() - start)
                else:
                    stats["failures"] += 1
                    stats["codes"][str(code)] = stats["codes"].get(str(code), 0) + 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        stop = time.perf_counter() + warmup_s
        await asyncio.gather(*(client(http, stop, k) for k in range(concurrency)))
        recording = True
        with CpuMeter(groups) as meter:
            stop = time.perf_counter() + seconds
            start = time.perf_counter()
            await asyncio.gather(*(client(http, stop, k) for k in range(concurrency)))
            elapsed = time.perf_counter() - start
    ms = np.array(stats["latencies"]) * 1000 if stats["latencies"] else np.array([np.nan])
    return {
        "seconds": round(elapsed, 2),
        "requests": len(stats["latencies"]),
        "failures": stats["failures"],
        "failure_codes": stats["codes"],
        "rps": len(stats["latencies"]) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "cpu": meter.shares,
        "load_1m": common.load_1m(),
    }


def run_levels(base: str, bodies: dict, seconds: float, warmup_s: float, groups) -> list[dict]:
    rows = []
    for endpoint in ENDPOINTS:
        for level in LEVELS:
            stats = asyncio.run(
                window(base + endpoint, bodies[endpoint], level, seconds, warmup_s, groups)
            )
            rows.append({"endpoint": endpoint, "concurrency": level, **stats})
            print(
                f"  {endpoint:18s} c={level:<3d} {stats['rps']:7.1f} req/s "
                f"p50 {stats['p50_ms']:6.1f} p99 {stats['p99_ms']:6.1f} ms "
                f"fail {stats['failures']} cpu {stats['cpu']}",
                flush=True,
            )
    return rows


# ---------------------------------------------------------------- targets


def bare_model(model: str, data: Path, bodies: dict[str, list[dict]], batch: int = 32) -> dict:
    """Forward throughput of scoring and retrieval without HTTP (outfits/s, queries/s)."""
    from outfitter.platform.serve import core

    state = core.load_state(model, data, device="cpu")
    core.set_threads(1)  # as one Serve replica (num_cpus 1) and one uvicorn process here
    outfits = [[i["item_id"] for i in b["items"]] for b in bodies["/v1/compatibility"]]
    contexts = [[i["item_id"] for i in b["items"]] for b in bodies["/v1/retrieve"]]
    texts = [b["target"]["description"] for b in bodies["/v1/retrieve"]]

    def rate(fn, size: int, rounds: int = 3, seconds: float = 1.5) -> float:
        fn(0, size)  # warm-up
        best = 0.0
        for _ in range(rounds):
            done, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                fn(done % max(1, len(outfits) - size), size)
                done += size
            best = max(best, done / (time.perf_counter() - start))
        return best

    def score(i: int, n: int) -> None:
        core.score_outfits(state, outfits[i : i + n])

    def retrieve(i: int, n: int) -> None:
        core.retrieve(state, contexts[i : i + n], texts[i : i + n], [8] * n, 10, [set()] * n)

    return {
        f"{name}_per_s_batch{size}": rate(fn, size)
        for size in (1, batch)
        for name, fn in (("score", score), ("retrieve", retrieve))
    }


def serve_config(
    model: str, data: Path, port: int, replicas: int | None, env: dict, access_log: bool = False
) -> dict:
    """serve_configs/local.yaml on `model`; fixed at `replicas`, or autoscaling when None."""
    from outfitter.platform.serve import launch

    config = launch.load_serve_config(ROOT / "serve_configs" / "local.yaml")
    config["http_options"]["port"] = port
    (app,) = config["applications"]
    app["args"].update(model_uri=model, data_dir=str(data), device="cpu")
    app["args"].pop("tracking_uri", None)
    app["runtime_env"] = {"env_vars": env}
    if access_log:  # Ray's default: one log line per request
        app.pop("logging_config", None)
    (deployment,) = app["deployments"]
    if replicas is not None:
        deployment.pop("autoscaling_config")
        deployment["num_replicas"] = replicas
    return launch.prepare_config(config, pin=False)


def serve_env(haproxy: bool = True):
    """launch.SERVE_ENV (HAProxy ingress and its drain, as `outfitter serve` sets them) in this
    process while Ray starts and runs; the environment as it was afterwards."""
    from unittest import mock

    from outfitter.platform.serve import launch

    return mock.patch.dict(os.environ, launch.SERVE_ENV if haproxy else {})


def run_serve(
    model, data, bodies, args, env: dict, *, haproxy: bool = False, access_log: bool = False
) -> list[dict]:
    """Start Ray (HAProxy or not), deploy, measure, shut down."""
    import ray
    from ray import serve

    from outfitter.platform.local_ray import ensure_ray
    from outfitter.platform.serve import launch

    port = common.free_port()
    with serve_env(haproxy):
        before = listening()
        ensure_ray(num_cpus=os.cpu_count())
        try:
            launch.deploy(serve_config(model, data, port, args["replicas"], env, access_log))
            base = f"http://127.0.0.1:{port}"
            common.wait_healthy(base)
            # Serve's own HTTP sockets: the proxy (or HAProxy) port and the replicas'
            # direct-ingress ports (30000-31000); Ray's internal ports (GCS, raylet, ...) are not
            # Serve's to choose.
            opened = sorted(
                a
                for a in listening() - before
                if int(a.rsplit(":", 1)[1]) == port or 30000 <= int(a.rsplit(":", 1)[1]) <= 31000
            )
            LISTENING[f"haproxy={haproxy}"] = opened
            print(f"  listening after deploy: {opened}", flush=True)
            groups = process_groups("serve", [os.getpid()])
            if haproxy:
                groups["proxy"] = groups.get("proxy", []) + _haproxy_pids()
            return run_levels(base, bodies, args["window"], args["warmup"], groups)
        finally:
            serve.shutdown()
            ray.shutdown()


def listening() -> set[str]:
    """`address:port` of every listening TCP socket on the machine (from /proc/net/tcp)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            host, port = local.split(":")
            if state == "0A":  # LISTEN
                addr = {"0100007F": "127.0.0.1", "00000000": "0.0.0.0"}.get(host, host)
                found.add(f"{addr}:{int(port, 16)}")
    return found


def _haproxy_pids() -> list[int]:
    return [
        int(p.parent.name)
        for p in Path("/proc").glob("[0-9]*/cmdline")
        if b"haproxy" in p.read_bytes().split(b"\0")[0]
    ]


def run_uvicorn(model, data, bodies, args, workers: int) -> list[dict]:
    port = common.free_port()
    env = {
        **os.environ,
        "OUTFITTER_MODEL": model,
        "OUTFITTER_DATA": str(data),
        "OUTFITTER_DEVICE": "cpu",
        "OMP_NUM_THREADS": "1",  # one thread per process, as a Serve replica of num_cpus 1
    }
    cmd = [sys.executable, "-m", "uvicorn", "--factory",
           "outfitter.platform.serve.plain:app_from_env", "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning", "--no-access-log",
           "--workers", str(workers)]  # fmt: skip
    server = subprocess.Popen(cmd, env=env)
    try:
        common.wait_healthy(f"http://127.0.0.1:{port}")
        time.sleep(2 if workers > 1 else 0)  # every worker up, not just the first
        groups = process_groups("uvicorn", [server.pid])
        return run_levels(
            f"http://127.0.0.1:{port}", bodies, args["window"], args["warmup"], groups
        )
    finally:
        server.terminate()
        server.wait(timeout=30)


# ---------------------------------------------------------------- burst


async def _burst(base: str, bodies: list[dict], phases, replicas_now) -> tuple[list, dict]:
    """Load in `phases` [(seconds, concurrency)], sampled each second."""
    import aiohttp

    samples, counts = [], {"ok": 0, "failed": 0, "versions": {}}
    t0 = time.perf_counter()

    async def client(http, stop_at: float, k: int) -> None:
        while time.perf_counter() < stop_at:
            try:
                async with http.post(base + "/v1/compatibility", json=bodies[k % 64]) as r:
                    body = await r.json(content_type=None)
                    ok = r.status == 200
            except (aiohttp.ClientError, ValueError):
                ok, body = False, {}
            k += 1
            if ok:
                counts["ok"] += 1
                v = body["model_version"]
                counts["versions"][v] = counts["versions"].get(v, 0) + 1
            else:
                counts["failed"] += 1

    async def sampler(stop_at: float) -> None:
        last = 0
        while time.perf_counter() < stop_at:
            await asyncio.sleep(1.0)
            replicas = await asyncio.to_thread(replicas_now)
            samples.append(
                {
                    "t": round(time.perf_counter() - t0, 1),
                    "rps": counts["ok"] - last,
                    "replicas": replicas,
                    "failed": counts["failed"],
                    "concurrency": current[0],
                }
            )
            last = counts["ok"]

    current = [0]
    total = sum(s for s, _ in phases)
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as http:
        sampling = asyncio.create_task(sampler(t0 + total))
        for seconds, concurrency in phases:
            current[0] = concurrency
            stop = time.perf_counter() + seconds
            await asyncio.gather(*(client(http, stop, k) for k in range(concurrency)))
        await sampling
    return samples, counts


def run_burst(model, data, bodies, phases) -> dict:
    import ray
    from ray import serve

    from outfitter.platform.local_ray import ensure_ray
    from outfitter.platform.serve import launch

    port = common.free_port()
    with serve_env():
        ensure_ray(num_cpus=os.cpu_count())
        try:
            config = serve_config(model, data, port, None, ADOPTED)
            (deployment,) = config["applications"][0]["deployments"]
            base = f"http://127.0.0.1:{port}"
            launch.deploy(config)
            common.wait_healthy(base)

            def replicas_now() -> int:
                app = serve.status().applications[APP]
                return int(app.deployments["Outfitter"].replica_states.get("RUNNING", 0))

            samples, counts = asyncio.run(
                _burst(base, bodies["/v1/compatibility"], phases, replicas_now)
            )
            return {
                "phases": [{"seconds": s, "concurrency": c} for s, c in phases],
                "autoscaling_config": deployment.get("autoscaling_config"),
                "samples": samples,
                "ok": counts["ok"],
                "failed": counts["failed"],
                "versions": counts["versions"],
                "max_replicas_seen": max(s["replicas"] for s in samples),
                "final_replicas": samples[-1]["replicas"],
            }
        finally:
            serve.shutdown()
            ray.shutdown()


# ---------------------------------------------------------------- main


def main(
    model: str | None = typer.Option(
        None, help="Checkpoint folder or registry URI (default: tiny)"
    ),
    data: Path | None = typer.Option(None, help="Catalog folder (default: synthetic)."),
    window_s: float = typer.Option(10.0, "--window", help="Measured seconds per level (>= 10)."),
    warmup_s: float = typer.Option(3.0, "--warmup", help="Unmeasured seconds before each window."),
    replicas: str = typer.Option(
        "1,2", help="Serve replica counts to measure (uvicorn runs with as many workers)."
    ),
    flags: bool = typer.Option(False, "--flags", help="Compare Ray Serve's fast paths instead."),
    burst: bool = typer.Option(True, "--burst/--no-burst", help="Record an autoscaling burst."),
    burst_s: str = typer.Option("10,60,50", help="Seconds at c=1, at c=32, back at c=1."),
) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="outfitter-serve-bench-"))
    if model is None or data is None:
        model, data = tiny_setup(workdir)
    bodies = request_bodies(data, 64)
    counts = sorted({int(n) for n in replicas.split(",")})
    if not counts or counts[0] < 1:
        raise typer.BadParameter("--replicas: counts >= 1, e.g. 1,2")
    args = {"window": window_s, "warmup": warmup_s, "replicas": counts, "levels": list(LEVELS)}
    name = "serve_load_flags" if flags else "serve_load"
    results = common.new_results(name, "cpu", {**args, "model": model})
    results["work_per_request"] = work_per_request(bodies)
    targets: dict[str, list[dict]] = {}
    if flags:
        variants = [("serve (Ray defaults, access log)", RAY_DEFAULTS, False, True),
                    ("serve (same loop, no access log)", ADOPTED, False, False),
                    ("serve (same loop, no log, HAProxy)", ADOPTED, True, False)]  # fmt: skip
        for label, env, haproxy, log in variants:
            print(f"{label} ...", flush=True)
            targets[label] = run_serve(
                model, data, bodies, args, env, haproxy=haproxy, access_log=log
            )
    else:
        print("bare model ...", flush=True)
        results["bare_model"] = bare_model(model, data, bodies)
        for n in counts:
            print(f"serve ({n} replicas) ...", flush=True)
            held = {**args, "replicas": n}
            targets[f"serve-{n}"] = run_serve(model, data, bodies, held, ADOPTED, haproxy=True)
        for workers in sorted({1, *counts}):
            print(f"uvicorn --workers {workers} ...", flush=True)
            targets[f"uvicorn-{workers}"] = run_uvicorn(model, data, bodies, args, workers)
    results["targets"] = targets
    results["listening"] = LISTENING
    if "bare_model" in results:
        _add_ratios(results)
    results["done_when"] = done_when(results)
    out = common.write_results(results)
    print_table(results)
    print(f"wrote {out}")
    if burst and not flags:
        phases = list(zip([float(s) for s in burst_s.split(",")], (1, 32, 1), strict=True))
        print(f"burst {phases} ...", flush=True)
        result = common.new_results("serve_load_burst", "cpu", {"phases": phases})
        result.update(run_burst(model, data, bodies, phases))
        print(
            f"burst: replicas max {result['max_replicas_seen']} final {result['final_replicas']}, "
            f"ok {result['ok']} failed {result['failed']} versions {result['versions']}"
        )
        print(f"wrote {common.write_results(result)}")


def _add_ratios(results: dict) -> None:
    """Model inputs served per second / the bare model's batch-32 rate of the same work."""
    bare = results["bare_model"]
    limit = {
        "/v1/compatibility": bare["score_per_s_batch32"],
        "/v1/retrieve": bare["retrieve_per_s_batch32"],
    }
    work = results["work_per_request"]
    for rows in results["targets"].values():
        for row in rows:
            row["ratio_to_bare"] = row["rps"] * work[row["endpoint"]] / limit[row["endpoint"]]


def _row(results: dict, target: str, endpoint: str, concurrency: int) -> dict | None:
    rows = results.get("targets", {}).get(target, [])
    key = (endpoint, concurrency)
    return next((r for r in rows if (r["endpoint"], r["concurrency"]) == key), None)


def done_when(results: dict) -> dict:
    """The issue's acceptance checks on this run, per Serve replica count: `serve-N` against the
    one-process uvicorn baseline (`{"serve-1": {...}, "serve-2": {...}}`)."""
    compat, retrieve = "/v1/compatibility", "/v1/retrieve"
    checks = {}
    for target in results.get("targets", {}):
        if not target.startswith("serve-"):
            continue
        s32, u32 = _row(results, target, compat, 32), _row(results, "uvicorn-1", compat, 32)
        s1, u1 = _row(results, target, compat, 1), _row(results, "uvicorn-1", compat, 1)
        r32, ru32 = _row(results, target, retrieve, 32), _row(results, "uvicorn-1", retrieve, 32)
        if None in (s32, u32, s1, u1, r32, ru32):
            continue
        checks[target] = {
            "compat_c32_serve_over_uvicorn": round(s32["rps"] / u32["rps"], 3),
            "compat_c32_serve_p99_over_p50": round(s32["p99_ms"] / s32["p50_ms"], 3),
            "compat_c1_serve_p50_over_uvicorn": round(s1["p50_ms"] / u1["p50_ms"], 3),
            "retrieve_c32_serve_over_uvicorn": round(r32["rps"] / ru32["rps"], 3),
        }
    return checks


COLUMNS = ("target", "endpoint", "conc.", "req/s", "p50 ms", "p99 ms", "fail", "÷ bare",
           "CPU: server", "CPU: load gen", "load")  # fmt: skip


def _server_cpu(cpu: dict) -> str:
    parts = [f"{k} {v:.2f}" for k, v in cpu.items() if k != "load generator"]
    return ", ".join(parts)


def table(results: dict) -> tuple[tuple[str, ...], list[list[str]]]:
    """(columns, rows): one row per target, endpoint and concurrency."""
    rows = [
        [
            name,
            f"`{r['endpoint']}`",
            str(r["concurrency"]),
            f"{r['rps']:,.1f}",
            f"{r['p50_ms']:,.1f}",
            f"{r['p99_ms']:,.1f}",
            str(r["failures"]),
            f"{r['ratio_to_bare']:.3f}" if "ratio_to_bare" in r else "—",
            _server_cpu(r.get("cpu", {})),
            f"{r.get('cpu', {}).get('load generator', float('nan')):.2f}",
            common.fmt(r.get("load_1m")),
        ]
        for name, target_rows in results.get("targets", {}).items()
        for r in target_rows
    ]
    return COLUMNS, rows


def print_table(results: dict) -> None:
    print(f"serving load, {results['machine']['cpus']} CPUs, {results['date']}")
    print(common.markdown_table(*table(results)))
    print("done when:", results.get("done_when"))
    if "bare_model" in results:
        print({k: round(v, 1) for k, v in results["bare_model"].items()})


if __name__ == "__main__":
    typer.run(main)
