"""How the platform's cost grows with the catalog: wall time and peak memory of every stage.

For each catalog size, in a fresh work folder, the README's commands one after the other, each
as its own `outfitter` process (as a user runs them):

    data synth → data validate → clip-pretrain (fixed budget: --max-steps) → embed (Ray Data,
    cold cache) → train (hybrid-tiny, 2 workers, 2 epochs; reuses the embedding) → evaluate
    (test split) → index build → serve (start-up, one request of each kind, Studio paging and
    search)

Peak memory is the largest sum of PSS over the command's process tree (sampled every 0.5 s),
so Ray's raylet, workers and actors count and shared pages are not counted twice.

    .venv/bin/python bench/scale.py                          # 2k, 10k, 50k outfits
    .venv/bin/python bench/scale.py --outfits 2000 --keep    # one size, keep the work folder

Writes bench/results/scale.json; `bench/report.py` draws bench/results/scale.png from it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import common

OUTFITTER = str(Path(sys.executable).with_name("outfitter"))
STAGES = ("synth", "validate", "clip-pretrain", "embed", "train", "evaluate", "index", "serve")


# ---------------------------------------------------------------- memory of a process tree


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def tree_pss_gib(root: int) -> float:
    """PSS summed over `root` and all its descendants, GiB."""
    return sum(_pss_kib(pid) for pid in common.process_tree([root])) / 2**20


class PeakMemory:
    """Samples a process tree's PSS in a thread; `.peak` is the largest sum seen (GiB)."""

    def __init__(self, pid: int, every_s: float = 0.5):
        self.pid, self.every_s, self.peak = pid, every_s, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_pss_gib(self.pid))
            self._stop.wait(self.every_s)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------- stages


def run_stage(args: list[str], env: dict, log: Path) -> dict:
    """One `outfitter` command to its end: wall seconds and peak memory; fails loudly."""
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen([OUTFITTER, *args], stdout=out, stderr=subprocess.STDOUT, env=env)
        with PeakMemory(proc.pid) as mem:
            rc = proc.wait()
    seconds = time.perf_counter() - t0
    if rc != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"outfitter {' '.join(args)} failed (rc {rc}); log {log}:\n{tail}")
    return {"seconds": round(seconds, 1), "peak_gib": round(mem.peak, 2)}


def serve_stage(work: Path, data: Path, env: dict, log: Path) -> dict:
    """`outfitter serve` up, one request of each kind, Studio paging and search, then down."""
    port = common.free_port()
    config = serve_config(work, data, port)
    base = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [OUTFITTER, "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            with PeakMemory(proc.pid) as mem:
                startup = _wait_ready(base, proc, log, deadline_s=900)
                requests = one_of_each(base, data)
                replica_gib = max(
                    (tree_pss_gib(p) for p in _replica_pids(proc.pid)), default=float("nan")
                )
        finally:
            # SIGINT to `outfitter serve` alone: it shuts Serve and its Ray down. (To the whole
            # process group, Ray's raylet and GCS got it too and sometimes exited first; the
            # shutdown then waited on them until the SIGKILL below: 3 of 10 runs here.)
            stop = time.perf_counter()
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                _kill_tree(proc)
            shutdown = time.perf_counter() - stop
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "startup_s": round(startup, 1),
        "shutdown_s": round(shutdown, 1),
        "peak_gib": round(mem.peak, 2),
        "replica_gib": round(replica_gib, 2),
        "requests_ms": requests,
    }


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL to `proc`'s process group and every process it started. Ray's HAProxy runs in a
    session of its own: left behind, it holds its ports and the next `outfitter serve` fails to
    start (seen once here after a shutdown that did not end in 120 s)."""
    started = common.process_tree([proc.pid])  # before the kill, which orphans them
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in started:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def serve_config(work: Path, data: Path, port: int) -> Path:
    """serve_configs/local.yaml on this work folder's registry, catalog and a free port."""
    import yaml

    config = yaml.safe_load((common.ROOT / "serve_configs" / "local.yaml").read_text())
    config["http_options"]["port"] = port
    app = config["applications"][0]
    app["args"].update(
        model_uri="models:/outfitter/1",
        data_dir=str(data),
        tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
    )
    path = work / "serve.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _wait_ready(base: str, proc: subprocess.Popen, log: Path, deadline_s: float) -> float:
    import httpx

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < deadline_s:
        if proc.poll() is not None:
            raise SystemExit(f"outfitter serve exited (rc {proc.returncode}); log {log}")
        try:
            if httpx.get(f"{base}/v1/model", timeout=5).status_code == 200:
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"outfitter serve not ready after {deadline_s} s; log {log}")


def one_of_each(base: str, data: Path) -> dict[str, float]:
    """Milliseconds of one request of each kind (after one unmeasured warm-up of each)."""
    import httpx
    from serve_load import request_bodies

    bodies = request_bodies(data, 1)
    calls = {
        "compatibility": ("POST", "/v1/compatibility", bodies["/v1/compatibility"][0]),
        "retrieve": ("POST", "/v1/retrieve", bodies["/v1/retrieve"][0]),
        "studio page at offset 5000": ("GET", "/v1/items?limit=50&offset=5000", None),
        "studio search": ("GET", "/v1/items?q=leather%20boots&limit=50", None),
    }
    out = {}
    with httpx.Client(base_url=base, timeout=60) as http:
        for name, (method, path, body) in calls.items():
            for attempt in range(2):
                t0 = time.perf_counter()
                r = http.request(method, path, json=body)
                if r.status_code != 200:
                    raise SystemExit(f"{method} {path}: {r.status_code} {r.text[:300]}")
                if attempt:
                    out[name] = round((time.perf_counter() - t0) * 1e3, 1)
    return out


def _replica_pids(root: int) -> list[int]:
    """Serve replicas in the tree of `outfitter serve`."""
    from serve_load import process_groups

    return process_groups("serve", [root]).get("replicas", [])


def run_size(outfits: int, root: Path, args) -> dict:
    """Every stage on a catalog of `outfits` outfits, in root/<outfits>."""
    work = root / str(outfits)
    data, logs = work / "data", work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OUTFITTER_CACHE_DIR": str(work / "cache")}
    env.pop("RAY_ADDRESS", None)  # a local Ray per command, as on a laptop
    towers = work / "towers.safetensors"
    w = ["--workdir", str(work)]
    commands = {
        "synth": ["data", "synth", "--out", str(data), "--outfits", str(outfits)],
        "validate": ["data", "validate", str(data)],
        "clip-pretrain": ["clip-pretrain", "--data", str(data), "--out", str(towers),
                          "--epochs", "1", "--max-steps", str(args.clip_steps)],
        "embed": ["embed", "--data", str(data), "--set", f"clip.pretrained={towers}"],
        "train": ["train", "--model-config", "hybrid-tiny", "--data", str(data), "--workers",
                  str(args.workers), "--epochs", str(args.epochs), "--set",
                  f"clip.pretrained={towers}", *w],
        "evaluate": ["evaluate", "--model", "models:/outfitter/1", "--data", str(data),
                     "--split", "test", *w],
        "index": ["index", "build", "--model", "models:/outfitter/1", "--data", str(data), *w],
    }  # fmt: skip
    row: dict = {"outfits": outfits, "stages": {}}
    for stage in STAGES:
        print(f"[{outfits} outfits] {stage} ...", flush=True)
        if stage == "serve":
            result = serve_stage(work, data, env, logs / "serve.log")
        else:
            result = run_stage(commands[stage], env, logs / f"{stage}.log")
        row["stages"][stage] = result
        print(f"[{outfits} outfits] {stage}: {result}", flush=True)
        if stage == "synth":
            row["items"] = len(json.loads((data / "polyvore_item_metadata.json").read_text()))
    row["train_with_embedding_s"] = round(
        row["stages"]["embed"]["seconds"] + row["stages"]["train"]["seconds"], 1
    )
    return row


# ---------------------------------------------------------------- table and plot


def table(results: dict) -> tuple[tuple[str, ...], list[list[str]]]:
    cols = ("outfits", "items", *(f"{s} s / GiB" for s in STAGES), "serve start-up s")
    rows = []
    for row in results["sizes"]:
        st = row["stages"]
        cells = [f"{st[s]['seconds']:,.0f} / {st[s]['peak_gib']:.1f}" if s in st else "—"
                 for s in STAGES]  # fmt: skip
        startup = st.get("serve", {}).get("startup_s")
        rows.append([f"{row['outfits']:,}", f"{row.get('items', 0):,}", *cells,
                     common.fmt(startup)])  # fmt: skip
    return cols, rows


def plot(results: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r for r in results["sizes"] if all(s in r["stages"] for s in STAGES)]
    items = [r["items"] for r in sizes]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    for stage in STAGES:
        ax.plot(items, [r["stages"][stage]["seconds"] for r in sizes], marker="o", label=stage)
        ax2.plot(items, [r["stages"][stage]["peak_gib"] for r in sizes], marker="o", label=stage)
    for a, label in ((ax, "wall time (s)"), (ax2, "peak PSS, process tree (GiB)")):
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlabel("catalog items")
        a.set_ylabel(label)
        a.grid(True, which="both", alpha=0.3)
    ax2.axhline(4, color="gray", linestyle=":")
    ax.legend(fontsize=7, ncol=2)
    fig.suptitle(f"Cost per stage as the catalog grows ({results['machine']['cpus']} CPUs)")
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--outfits", default="2000,10000,50000", help="catalog sizes")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--clip-steps", type=int, default=100, help="clip-pretrain budget")
    parser.add_argument("--workdir", type=Path, help="default: a temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the work folders")
    parser.add_argument("--out", type=Path, help="default: bench/results/scale.json")
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="outfitter-scale-"))
    sizes = [int(s) for s in args.outfits.split(",")]
    results = common.new_results("scale", "cpu", {k: str(v) for k, v in vars(args).items()})
    results["sizes"] = []
    for outfits in sizes:
        results["sizes"].append(run_size(outfits, root, args))
        out = common.write_results(results, args.out)  # after each size: nothing lost
        if not args.keep:
            subprocess.run(["rm", "-rf", str(root / str(outfits))], check=False)
    print(common.markdown_table(*table(results)))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
