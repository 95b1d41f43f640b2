"""Serving load benchmark: latency and throughput of /v1/compatibility and /v1/retrieve.

Bounded load on 127.0.0.1 only (a fixed number of requests per level and a time cap), at
concurrency 1, 8 and 32, against, side by side in one run:

- `serve-batched`: the Ray Serve application (serve_configs/local.yaml), `@serve.batch` on;
- `serve-unbatched`: the same replicas reconfigured with max_batch_size=1;
- `uvicorn-plain`: the same FastAPI app in one uvicorn process, model in-process;
- `bare-model`: the model's batched forward (outfits/s, queries/s) without HTTP: the limit.

Rates are also given as a ratio to the bare model measured in the same run (shared machines are
noisy). Writes JSON (default bench/results/serve_load.json) and prints a table.

    .venv/bin/python bench/serve_load.py [--model DIR_OR_URI --data DIR] [--requests 200]
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import typer

ROOT = Path(__file__).resolve().parent.parent
LEVELS = (1, 8, 32)
ENDPOINTS = ("/v1/compatibility", "/v1/retrieve")


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


async def load(url: str, bodies: list[dict], concurrency: int, total: int, cap_s: float) -> dict:
    """`total` POSTs (or as many as fit in `cap_s`) from `concurrency` clients; latency stats."""
    import httpx

    latencies, failures, sent = [], 0, 0
    deadline = time.perf_counter() + cap_s

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal failures, sent
        while sent < total and time.perf_counter() < deadline:
            body = bodies[sent % len(bodies)]
            sent += 1
            start = time.perf_counter()
            try:
                r = await http.post(url, json=body)
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - start)
            else:
                failures += 1

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        await http.post(url, json=bodies[0])  # warm-up: first request pays lazy set-up
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {
        "requests": len(latencies),
        "failures": failures,
        "rps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def _best_rate(fn, size: int, n_inputs: int, rounds: int = 3, seconds: float = 1.5) -> float:
    """Inputs/s of `fn(start, size)`, best of `rounds` (the machine is shared and noisy)."""
    fn(0, size)  # warm-up
    rates = []
    for _ in range(rounds):
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            fn(done % max(1, n_inputs - size), size)
            done += size
        rates.append(done / (time.perf_counter() - start))
    return max(rates)


def bare_model(model: str, data: Path, bodies: dict[str, list[dict]], batch: int = 32) -> dict:
    """Forward throughput of the scorer and the query path without HTTP (outfits/s, queries/s)."""
    import torch

    from outfitter.platform.serving import core

    torch.set_num_threads(1)  # as in a Serve replica (Ray sets OMP_NUM_THREADS=1) and uvicorn below
    state = core.load_state(model, data, device="cpu")
    scorer, encoder, retriever = core.Scorer(state), core.ItemEncoder(state), core.Retriever(state)
    outfits = [[i["item_id"] for i in b["items"]] for b in bodies["/v1/compatibility"]]
    contexts = [[i["item_id"] for i in b["items"]] for b in bodies["/v1/retrieve"]]
    texts = [b["target"]["description"] for b in bodies["/v1/retrieve"]]

    def score(i: int, n: int) -> None:
        scorer.score(outfits[i : i + n])

    def query_and_search(i: int, n: int) -> None:  # what /v1/retrieve computes
        queries = scorer.query(contexts[i : i + n], encoder.encode_texts(texts[i : i + n]), [8] * n)
        retriever.search(queries, 10, 8, [set()] * n)

    out = {}
    for size in (1, batch):
        out[f"score_per_s_batch{size}"] = _best_rate(score, size, len(outfits))
        out[f"query+search_per_s_batch{size}"] = _best_rate(query_and_search, size, len(contexts))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(base: str, timeout_s: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{base} not healthy after {timeout_s}s")


def serve_config(model: str, data: Path, port: int, max_batch_size: int) -> dict:
    from outfitter.platform.serving import launch

    config = launch.load_serve_config(ROOT / "serve_configs" / "local.yaml")
    config["http_options"]["port"] = port
    config["applications"][0]["args"].update(model_uri=model, data_dir=str(data), device="cpu")
    config["applications"][0]["args"].pop("tracking_uri", None)
    config = launch.prepare_config(config, pin=False)
    for deployment in config["applications"][0]["deployments"]:
        if "max_batch_size" in deployment.get("user_config", {}):
            deployment["user_config"]["max_batch_size"] = max_batch_size
    return config


def run_levels(base: str, bodies: dict, total: int, cap_s: float) -> list[dict]:
    rows = []
    for endpoint in ENDPOINTS:
        for level in LEVELS:
            stats = asyncio.run(load(base + endpoint, bodies[endpoint], level, total, cap_s))
            rows.append({"endpoint": endpoint, "concurrency": level, **stats})
            print(
                f"  {endpoint:18s} c={level:<3d} {stats['rps']:7.1f} req/s "
                f"p50 {stats['p50_ms']:7.1f} ms p99 {stats['p99_ms']:7.1f} ms "
                f"failures {stats['failures']}",
                flush=True,
            )
    return rows


def main(
    model: str | None = typer.Option(
        None, help="Checkpoint folder or registry URI (default: tiny)."
    ),
    data: Path | None = typer.Option(None, help="Catalog folder (default: synthetic)."),
    requests: int = typer.Option(200, help="Requests per endpoint and concurrency level."),
    cap_s: float = typer.Option(30.0, help="Time cap per level, seconds."),
    out: Path = typer.Option(ROOT / "bench" / "results" / "serve_load.json", help="JSON output."),
) -> None:
    import ray

    from outfitter.platform.serving import launch

    workdir = Path(tempfile.mkdtemp(prefix="outfitter-serve-bench-"))
    if model is None or data is None:
        model, data = tiny_setup(workdir)
    bodies = request_bodies(data, 64)
    results: dict = {
        "machine": {
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": model,
        "levels": list(LEVELS),
        "requests_per_level": requests,
        "targets": {},
    }
    print("bare model ...", flush=True)
    results["bare_model"] = bare_model(model, data, bodies)

    port = _free_port()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        for name, batch in (("serve-batched", 16), ("serve-unbatched", 1)):
            print(f"{name} ...", flush=True)
            launch.deploy(serve_config(model, data, port, batch))  # 2nd apply: reconfigure only
            _wait_healthy(f"http://127.0.0.1:{port}")
            results["targets"][name] = run_levels(
                f"http://127.0.0.1:{port}", bodies, requests, cap_s
            )
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()

    print("uvicorn-plain ...", flush=True)
    port = _free_port()
    env = {
        **os.environ,
        "OUTFITTER_MODEL": model,
        "OUTFITTER_DATA": str(data),
        "OUTFITTER_DEVICE": "cpu",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "outfitter.platform.serving.plain:app_from_env",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    server = subprocess.Popen(cmd, env=env)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}")
        results["targets"]["uvicorn-plain"] = run_levels(
            f"http://127.0.0.1:{port}", bodies, requests, cap_s
        )
    finally:
        server.terminate()
        server.wait(timeout=30)

    _add_ratios(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    _print_table(results)
    print(f"wrote {out}")


def _add_ratios(results: dict) -> None:
    """rps / bare-model rate of the same work at batch 32 (score, or query+search)."""
    bare = results["bare_model"]
    limit = {
        "/v1/compatibility": bare["score_per_s_batch32"],
        "/v1/retrieve": bare["query+search_per_s_batch32"],
    }
    for rows in results["targets"].values():
        for row in rows:
            row["ratio_to_bare"] = row["rps"] / limit[row["endpoint"]]


COLUMNS = ("target", "endpoint", "concurrency", "req/s", "p50 ms", "p95 ms", "p99 ms", "fail",
           "÷ bare")  # fmt: skip


def table(results: dict) -> tuple[tuple[str, ...], list[list[str]]]:
    """(columns, rows) of the results: one row per target, endpoint and concurrency."""
    rows = [
        [
            name,
            f"`{r['endpoint']}`",
            str(r["concurrency"]),
            f"{r['rps']:,.1f}",
            f"{r['p50_ms']:,.1f}",
            f"{r['p95_ms']:,.1f}",
            f"{r['p99_ms']:,.1f}",
            str(r["failures"]),
            f"{r['ratio_to_bare']:.3f}" if "ratio_to_bare" in r else "—",
        ]
        for name, target_rows in results.get("targets", {}).items()
        for r in target_rows
    ]
    return COLUMNS, rows


def _print_table(results: dict) -> None:
    from common import print_table

    print_table(f"serving load, {results['machine']['cpus']} CPUs, {results['date']}",
                *table(results))  # fmt: skip
    print({k: round(v, 1) for k, v in results["bare_model"].items()})


if __name__ == "__main__":
    typer.run(main)
