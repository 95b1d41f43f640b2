"""Tail-latency probe: `/v1/compatibility` through Serve + HAProxy under variants of the settings.

Each variant is a JSON object of environment variables (read by Ray when it starts: HAProxy
threads, its metrics) plus optional `"args"` merged into the application's args
(`batch_wait_timeout_s`, `max_batch_size`, ...) and an optional `"lg_nice"` for the load
generator's thread. Same windows, requests and CPU accounting as `serve_load.py` (its functions),
with `ray other` split by process title. Prints one line per variant; writes nothing.

    .venv/bin/python bench/serve_variants.py \\
        '{"as configured": {}, "wait 5 ms": {"args": {"batch_wait_timeout_s": 0.005}}}'
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import serve_load


def _groups_by_title(original):
    def groups(kind: str, roots: list[int]) -> dict[str, list[int]]:
        found = original(kind, roots)
        for pid in found.pop("ray other", []):
            found.setdefault(serve_load._title(pid)[:40], []).append(pid)
        return found

    return groups


def main() -> None:
    variants: dict[str, dict] = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {"base": {}}
    serve_load.ENDPOINTS = ("/v1/compatibility",)
    serve_load.LEVELS = (32,)
    serve_load.process_groups = _groups_by_title(serve_load.process_groups)
    config, window = serve_load.serve_config, serve_load.window
    app_args: dict = {}
    nice = {"value": 0}

    def with_args(*a, **k):
        built = config(*a, **k)
        built["applications"][0]["args"].update(app_args)
        return built

    async def niced_window(*a, **k):
        os.setpriority(os.PRIO_PROCESS, 0, nice["value"])  # this (main) thread only
        try:
            return await window(*a, **k)
        finally:
            os.setpriority(os.PRIO_PROCESS, 0, 0)

    serve_load.serve_config, serve_load.window = with_args, niced_window
    model, data = serve_load.tiny_setup(Path(tempfile.mkdtemp(prefix="outfitter-variants-")))
    bodies = serve_load.request_bodies(data, 64)
    args = {"window": 10.0, "warmup": 3.0, "replicas": 2}
    for name, variant in variants.items():
        variant = dict(variant)
        app_args.clear()
        app_args.update(variant.pop("args", {}))
        nice["value"] = int(variant.pop("lg_nice", 0))
        saved = {k: os.environ.get(k) for k in variant}
        os.environ.update(variant)
        try:
            rows = serve_load.run_serve(model, data, bodies, args, serve_load.ADOPTED, haproxy=True)
        finally:
            for key, value in saved.items():
                os.environ.pop(key, None) if value is None else os.environ.update({key: value})
        for r in rows:
            cpu = {k: v for k, v in sorted(r["cpu"].items(), key=lambda kv: -kv[1]) if v > 0.01}
            print(
                f"{name}: c={r['concurrency']} {r['rps']:.0f} req/s p50 {r['p50_ms']:.1f} "
                f"p95 {r['p95_ms']:.1f} p99 {r['p99_ms']:.1f} p99/p50 "
                f"{r['p99_ms'] / r['p50_ms']:.2f} cpu {cpu}",
                flush=True,
            )


if __name__ == "__main__":
    main()
