"""Outfit Studio test helpers: a tiny champion in a throwaway MLflow store, the plain serving app
on it under uvicorn, and headless Chromium (Debian's `chromium` + `chromium-driver`) to drive it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from serve_helpers import free_port, wait_http

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
APT_TIMEOUT_S = 300  # per apt-get command


def register_champion(checkpoint: Path, store: Path) -> str:
    """Register `checkpoint` and its `index/` as version 1 of `outfitter`, alias `champion`.

    The store is a fresh sqlite MLflow store under `store`; returns its tracking URI. The
    process's `MLFLOW_TRACKING_URI` is restored afterwards.
    """
    import mlflow

    from outfitter.platform import registry

    uri = f"sqlite:///{store / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        registry.configure_tracking()
        experiment = registry.ensure_experiment("studio-tests")
        # MLflow keeps the artifact folder's own name: stage it as `checkpoint`, without the index
        staged = store / "v1" / "checkpoint"
        shutil.copytree(checkpoint, staged, ignore=shutil.ignore_patterns("index"))
        with mlflow.start_run(experiment_id=experiment):
            info = registry.log_checkpoint_model(staged)
        number = registry.register_model(info.model_uri, alias="challenger")
        registry.log_index("outfitter", number, checkpoint / "index")
        registry.promote("outfitter", number)
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
    return uri


@contextlib.contextmanager
def serve_plain(
    model_uri: str, data_dir: Path, tracking_uri: str, log_path: Path, timeout_s: float = 120
) -> Iterator[str]:
    """The plain (Ray-free) serving app under uvicorn on 127.0.0.1; yields its base URL."""
    port = free_port()
    env = {
        **os.environ,
        "OUTFITTER_MODEL": model_uri,
        "OUTFITTER_DATA": str(data_dir),
        "OUTFITTER_DEVICE": "cpu",
        "MLFLOW_TRACKING_URI": tracking_uri,
    }
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "outfitter.platform.serve.plain:app_from_env",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_http(f"{base}/healthz", proc, timeout_s, log=log_path)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def ensure_chromium() -> str | None:
    """Install Chromium and its driver with apt when missing (as root); None when both are there,
    else why they are not."""
    if CHROMIUM.is_file() and CHROMEDRIVER.is_file():
        return None
    apt = shutil.which("apt-get")
    if os.geteuid() != 0 or apt is None:
        missing = f"{CHROMIUM} or {CHROMEDRIVER} is missing"
        return f"{missing}, and apt-get cannot install it here (not root, or no apt-get)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        for args in (["update"], ["install", "-y", "chromium", "chromium-driver"]):
            done = subprocess.run(
                [apt, *args], env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_S
            )
            if done.returncode != 0:
                return f"apt-get {' '.join(args)} failed: {done.stderr.strip()[-800:]}"
    except subprocess.TimeoutExpired:
        return f"apt-get took over {APT_TIMEOUT_S} s"
    if CHROMIUM.is_file() and CHROMEDRIVER.is_file():
        return None
    return f"apt-get ran but {CHROMIUM} or {CHROMEDRIVER} is still missing"


def chromium_driver(width: int = 1440, height: int = 1000):
    """A headless Chromium WebDriver on the system binaries (Selenium Manager never runs)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    return driver


def full_page_screenshot(driver, path: Path, width: int = 1440) -> Path:
    """Save the whole page (not only the viewport) as a PNG at `path`."""
    height = driver.execute_script("return Math.ceil(document.documentElement.scrollHeight)")
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": int(height), "deviceScaleFactor": 1, "mobile": False},
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    if not driver.save_screenshot(str(path)):
        raise RuntimeError(f"Chromium could not save a screenshot to {path}")
    return path
