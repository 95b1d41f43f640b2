"""The device check on a machine without a GPU: `bench/gpu_check.sh --dry-run` validates every
step (bench scripts' own argument parsers, the gpu tests it collects, the result files the report
renders), and `bench/report.py` renders `*-gpu.json` results with the device named."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"


def test_gpu_check_dry_run_validates_every_step():
    proc = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh"), "--dry-run"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.rstrip().endswith("dry run ok")
    steps = [line for line in out.splitlines() if line.startswith("== ") and "(budget " in line]
    assert len(steps) == 6 and out.count("  ok: ") == 6, out
    for name in ("gpu tests", "training throughput", "embedding throughput", "device auto",
                 "faiss-gpu at 1M", "faiss-cpu at 1M"):  # fmt: skip
        assert any(name in s for s in steps), name


def test_gpu_check_refuses_a_bad_step(tmp_path):
    """The dry run can fail: a step whose arguments its script rejects."""
    script = (BENCH / "gpu_check.sh").read_text()
    broken = script.replace("--e2e-max-steps 4", "--e2e-max-steps four")
    # and a tests step that collects too few gpu tests (one file: also keeps this test quick)
    broken = broken.replace('GPU_TESTS="tests/', 'GPU_TESTS="tests/test_gpu_faiss.py" # ')
    assert broken.count("four") == 1 and 'GPU_TESTS="tests/test_gpu_faiss.py" #' in broken
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "gpu_check.sh").write_text(broken)
    for name in ("train_throughput.py", "embed_throughput.py", "serve_gpu.py", "index.py",
                 "serve_load.py", "common.py", "report.py"):  # fmt: skip
        (tmp_path / "bench" / name).symlink_to(BENCH / name)
    (tmp_path / "bench" / "results").mkdir()
    (tmp_path / "tests").symlink_to(ROOT / "tests")
    (tmp_path / "pyproject.toml").symlink_to(ROOT / "pyproject.toml")
    proc = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--dry-run"], cwd=tmp_path, capture_output=True,
        text=True, timeout=300, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode != 0
    assert "INVALID: gpu tests collects 1 gpu tests" in proc.stderr
    assert "INVALID: training throughput" in proc.stderr
    assert proc.stdout.count("  ok: ") == 4, proc.stdout  # the other steps still check out


def _as_gpu(results: dict, name: str = "NVIDIA H200") -> dict:
    gpu = copy.deepcopy(results)
    gpu["machine"].update(device="cuda", device_name=name, gpus=1)
    return gpu


@pytest.fixture
def report():
    sys.path.insert(0, str(BENCH))
    import report

    yield report
    sys.path.remove(str(BENCH))


def test_report_renders_gpu_results_with_the_device(report, tmp_path):
    """GPU result files (here: the committed CPU results relabelled) get their own sections."""
    assert "No GPU figures yet" in report.render(tmp_path)
    sources = {
        "train_throughput-gpu.json": "train_throughput.json",
        "embed_throughput-gpu.json": "embed_throughput.json",
        "index-gpu.json": "index.json",
    }
    for gpu_name, cpu_name in sources.items():
        results = json.loads((BENCH / "results" / cpu_name).read_text())
        (tmp_path / gpu_name).write_text(json.dumps(_as_gpu(results)))
    serve = json.loads((BENCH / "results" / "serve_load.json").read_text())
    rows = next(iter(serve["targets"].values()))
    serve_gpu = _as_gpu(serve)
    serve_gpu["args"] = {"replicas": 2, "gpu_per_replica": 0.5, "window": 5.0, "warmup": 2.0}
    serve_gpu["targets"] = {"serve, device cpu": rows, "serve, device cuda": rows}
    (tmp_path / "serve_load-gpu.json").write_text(json.dumps(serve_gpu))
    text = report.render(tmp_path)
    assert "No GPU figures yet" not in text and "Measured by `bash bench/gpu_check.sh`" in text
    titles = [line for line in text.splitlines() if "on GPU: NVIDIA H200 x 1" in line]
    assert len(titles) == 4, titles
    assert "serve, device cuda" in text and "(GPU NVIDIA H200)" in text
