"""Serving load with `device: auto` on a GPU machine: the Serve application of
serve_configs/local.yaml with its replicas on the GPU (a fraction of one each) against the same
replicas on the CPU, same requests, same windows as `serve_load.py`.

    .venv/bin/python bench/serve_gpu.py                # writes bench/results/serve_load-gpu.json
    .venv/bin/python bench/serve_gpu.py --devices cpu  # the CPU rows only (runs anywhere)

Reuses serve_load.py's pieces (tiny model, request bodies, measured windows, process CPU
accounting, its table), so the GPU rows read like the README's CPU serving table.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import common
import serve_load


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="checkpoint folder or registry URI (default: tiny)")
    p.add_argument("--data", type=Path, help="catalog folder (default: synthetic)")
    p.add_argument("--devices", default="cpu,auto", help="device of the replicas, per run")
    p.add_argument("--replicas", type=int, default=2, help="Serve replicas, fixed")
    p.add_argument("--gpu-per-replica", type=float, default=0.5, help="num_gpus of a replica")
    p.add_argument("--window", type=float, default=10.0, help="measured seconds per level")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each")
    p.add_argument("--out", type=Path, default=common.RESULTS / "serve_load-gpu.json")
    args = p.parse_args(argv)
    args.devices = [d for d in args.devices.split(",") if d]
    bad = set(args.devices) - {"cpu", "auto", "cuda"}
    if bad:
        p.error(f"--devices {sorted(bad)}: use cpu, auto or cuda")
    if args.window < 1 or args.replicas < 1 or not 0 < args.gpu_per_replica <= 1:
        p.error("--window >= 1, --replicas >= 1 and 0 < --gpu-per-replica <= 1")
    return args


def run_device(model: str, data: Path, bodies: dict, args, device: str) -> list[dict]:
    """Deploy with replicas on `device` (a GPU share each unless cpu), measure, shut down."""
    import ray
    from ray import serve

    from outfitter.platform.local_ray import ensure_ray
    from outfitter.platform.serve import launch

    port = common.free_port()
    config = serve_load.serve_config(model, data, port, args.replicas, serve_load.ADOPTED)
    (app,) = config["applications"]
    app["args"]["device"] = device
    if device != "cpu":
        app["deployments"][0]["ray_actor_options"]["num_gpus"] = args.gpu_per_replica
    ensure_ray(num_cpus=os.cpu_count())
    try:
        launch.deploy(config)
        base = f"http://127.0.0.1:{port}"
        common.wait_healthy(base)
        groups = serve_load.process_groups("serve", [os.getpid()])
        return serve_load.run_levels(base, bodies, args.window, args.warmup, groups)
    finally:
        serve.shutdown()
        ray.shutdown()


def main(argv=None) -> None:
    args = parse_args(argv)
    device = common.resolve_device("cuda" if "cuda" in args.devices else "auto")
    workdir = Path(tempfile.mkdtemp(prefix="outfitter-serve-gpu-"))
    model, data = (args.model, args.data) if args.model and args.data else (None, None)
    if model is None:
        model, data = serve_load.tiny_setup(workdir)
    bodies = serve_load.request_bodies(data, 64)
    results = common.new_results("serve_load_gpu", device, {**vars(args), "model": model})
    results["work_per_request"] = serve_load.work_per_request(bodies)
    results["targets"] = {}
    for replica_device in args.devices:
        label = f"serve, device {replica_device}"
        print(f"{label} ({args.replicas} replicas) ...", flush=True)
        results["targets"][label] = run_device(model, data, bodies, args, replica_device)
    out = common.write_results(results, args.out)
    common.print_table(f"serving, {common.describe(results)}", *serve_load.table(results))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
