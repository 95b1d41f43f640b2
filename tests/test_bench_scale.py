"""bench/scale.py's measuring parts: peak memory of a whole process tree, table and plot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture
def scale():
    sys.path.insert(0, str(BENCH))
    import scale

    yield scale
    sys.path.remove(str(BENCH))


def test_peak_memory_counts_the_children_of_a_command(scale):
    """A command whose grandchild holds 300 MB peaks above 300 MB (Ray's workers are such)."""
    hold = (
        "import time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(3)"
    )
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {hold!r}])"
    proc = subprocess.Popen([sys.executable, "-c", parent])
    with scale.PeakMemory(proc.pid, every_s=0.1) as mem:
        proc.wait(timeout=60)
    assert mem.peak > 300 / 1024, mem.peak
    assert scale.tree_pss_gib(proc.pid) == 0.0  # gone: nothing counted


def test_table_and_plot_of_a_run(scale, tmp_path):
    stages = {s: {"seconds": 10.0 * (i + 1), "peak_gib": 0.5 + i / 10} for i, s in
              enumerate(scale.STAGES)}  # fmt: skip
    stages["serve"].update(startup_s=12.5, requests_ms={"retrieve": 9.0}, replica_gib=0.8)
    results = {
        "machine": {"cpus": 2},
        "sizes": [{"outfits": n, "items": 4 * n, "stages": stages} for n in (2000, 10000)],
    }
    cols, rows = scale.table(results)
    assert len(rows) == 2 and rows[1][:2] == ["10,000", "40,000"]
    assert rows[0][cols.index("train s / GiB")] == "50 / 0.9"
    scale.plot(results, tmp_path / "scale.png")
    assert (tmp_path / "scale.png").stat().st_size > 10_000
