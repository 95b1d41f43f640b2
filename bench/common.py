"""Shared helpers of the benchmark scripts: the machine, the device, a synthetic catalog, a
server (free port, health), timing, JSON results and tables.

Every script writes `bench/results/<name>.json` with the same header (`benchmark`, `date`,
`machine`, `load_avg`, `args`) so that `bench/report.py` can say where and when each table was
measured. Imports stay light (no torch/ray at import) so `report.py` can load the scripts'
table functions without starting anything.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


# ---------------------------------------------------------------- machine and device


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (the machines are shared: a high load means noise)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not available on this platform
        return []


def load_1m() -> float | None:
    """The 1-minute load average now (recorded next to each measurement)."""
    return (load_average() or [None])[0]


def resolve_device(name: str) -> str:
    """`--device` as a device type: `auto` -> `cuda` when torch sees a GPU, else `cpu`; a GPU
    this machine lacks exits with the library's message (`outfitter.model.device`)."""
    from outfitter.model.device import DeviceError
    from outfitter.model.device import resolve_device as resolve

    try:
        return resolve(name).type
    except DeviceError as err:
        raise SystemExit(f"--device: {err}") from None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info(device: str = "cpu") -> dict:
    """Host, CPUs, the device the figures were measured on, and library versions."""
    info = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "device": device,
        "device_name": _cpu_model(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": {
            p: _version(p) for p in ("torch", "ray", "faiss-cpu", "faiss-gpu", "open-clip-torch")
        },
    }
    if device == "cuda":
        import torch

        info["device_name"] = torch.cuda.get_device_name(0)
        info["gpus"] = torch.cuda.device_count()
    return info


def quiet_ray_data() -> None:
    """No Ray Data progress logs between the benchmark's own lines (call after ray.init)."""
    import logging

    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


# ---------------------------------------------------------------- data


def synth_catalog(
    data: Path | None, n_outfits: int, image_size: int, workdir: Path, seed: int = 0
) -> Path:
    """`data` if given, else a fresh synthetic catalog in `workdir`/catalog."""
    if data is not None:
        return Path(data)
    from outfitter.data.synth import synthesize

    out = Path(workdir) / "catalog"
    print(f"synthetic catalog: {n_outfits} outfits, {image_size} px -> {out}", flush=True)
    return synthesize(out, n_outfits=n_outfits, seed=seed, image_size=image_size)


# ---------------------------------------------------------------- servers


def process_tree(root_pids: list[int]) -> list[int]:
    """`root_pids` and all their live descendants (from /proc: Ray's raylet, workers, actors)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], list(root_pids)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server a benchmark starts)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(base: str, timeout_s: float = 300) -> None:
    """Wait until the serving app at `base` answers `/healthz` with 200."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{base} not healthy after {timeout_s}s")


# ---------------------------------------------------------------- timing


def timed(fn: Callable, *args, **kwargs) -> tuple[object, float]:
    """(result, seconds) of one call."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def steady_mean(values: Sequence[float], skip: int = 1) -> float:
    """Mean of `values` after the first `skip` (warm-up) entries; all of them if too few."""
    kept = list(values[skip:]) or list(values)
    return statistics.fmean(kept) if kept else float("nan")


def steady_best(rates: Sequence[float], skip: int = 1) -> float:
    """Best rate after the first `skip` (warm-up) entries: on a shared machine other jobs only
    ever slow a measurement down, so the best epoch is the closest to what the code can do."""
    kept = list(rates[skip:]) or list(rates)
    return max(kept) if kept else float("nan")


# ---------------------------------------------------------------- results


def new_results(name: str, device: str, args: dict) -> dict:
    """The common header of a result file; `finish` adds the end load average."""
    return {
        "benchmark": name,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "load_avg": {"start": load_average()},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in args.items()},
    }


def write_results(results: dict, out: Path | None = None) -> Path:
    """Add the end load average and the run time, write JSON, return the path."""
    results["load_avg"]["end"] = load_average()
    started = datetime.fromisoformat(results["date"])
    results["seconds"] = round((datetime.now(timezone.utc) - started).total_seconds(), 1)
    out = Path(out or RESULTS / f"{results['benchmark']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return out


# ---------------------------------------------------------------- tables


def fmt(value, digits: int = 1) -> str:
    """A table cell: numbers rounded, None/NaN as an em dash."""
    if value is None or (isinstance(value, float) and value != value):
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table; text columns left-aligned, numeric ones right-aligned."""
    numeric = [
        all(_looks_numeric(r[i]) for r in rows) if rows else False for i in range(len(columns))
    ]
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _looks_numeric(cell: str) -> bool:
    """A number, a ratio (`1.5×`), a share (`25%`), a mean ± std, or an em dash."""
    parts = str(cell).replace(",", "").replace("×", "").replace("%", "").split("±")
    return all(
        (t := p.strip()) in ("—", "") or t.replace(".", "", 1).lstrip("-").isdigit() for p in parts
    )


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A rich table on the terminal (what each script shows when it ends)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, col in enumerate(columns):
        right = bool(rows) and all(_looks_numeric(r[i]) for r in rows)
        table.add_column(col, justify="right" if right else "left")
    for r in rows:
        table.add_row(*[str(c) for c in r])
    Console().print(table)


def describe(results: dict) -> str:
    """One line: where and when a result file was measured."""
    when = results.get("date", "?")[:16].replace("T", " ")
    m = results.get("machine")
    if not m:
        return f"{when} UTC (file date), machine not recorded"
    device = m.get("device_name") or m.get("platform", "?")
    if m.get("device") == "cuda":
        device = f"GPU {device}"
    load = results.get("load_avg", {})
    load_txt = ""
    if load.get("start"):
        end = load.get("end") or [float("nan")]
        load_txt = f", load avg {load['start'][0]:.1f} → {end[0]:.1f}"
    return f"{when} UTC, {m.get('cpus', '?')} CPUs ({device}){load_txt}"
