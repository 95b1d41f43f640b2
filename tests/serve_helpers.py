"""Helpers of the tests that serve: tiny model versions, free ports, waiting for a server.

`tiny_versions`: two random-init hybrid-tiny checkpoints with indexes. Both share one set of frozen
CLIP towers (so catalog features and new-item features agree) and differ in their heads. Made
once per test session under pytest's base temp folder.
"""

from __future__ import annotations

import base64
import io
import os
import threading
from pathlib import Path

from PIL import Image


def tiny_versions(root: Path, data_dir: Path) -> tuple[Path, Path]:
    """Checkpoint folders `v1`, `v2` under `root`, each with its faiss index in `index/`."""
    import torch

    from outfitter.data import load_catalog
    from outfitter.model import load_config
    from outfitter.model.checkpoint import load_checkpoint, save_checkpoint
    from outfitter.model.factory import build_model
    from outfitter.model.inputs import InputBuilder
    from outfitter.model.towers import create_towers
    from outfitter.platform.index import build_index

    dirs = (root / "v1", root / "v2")
    if all((d / "index" / "meta.json").is_file() for d in dirs):
        return dirs
    catalog = load_catalog(data_dir)
    cfg = load_config("hybrid-tiny")
    torch.manual_seed(0)
    towers = create_towers(cfg.clip)
    features = None
    for seed, folder in enumerate(dirs):
        torch.manual_seed(seed)
        save_checkpoint(folder, build_model(cfg), cfg, {"seed": seed}, towers=towers)
        model, _, _ = load_checkpoint(folder)
        builder = InputBuilder.for_model(model, catalog, features)
        build_index(model, builder).save(folder / "index")
        features = builder.features  # computed once, by the shared towers
    return dirs


def image_b64(size: tuple[int, int] = (48, 48), color=(200, 30, 30), fmt: str = "PNG") -> str:
    """A small solid-colour image, base64-encoded."""
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return base64.b64encode(buf.getvalue()).decode()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc, timeout: float = 120, log: Path | None = None) -> None:
    """Wait until `url` answers 200; fails early if the server process `proc` exits. `log`: the
    server's output file, whose tail the error then shows."""
    import time
    import urllib.request

    def tail() -> str:
        return "" if log is None else ":\n" + log.read_text(errors="replace")[-3000:]

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server {proc.args!r} exited with {proc.returncode}{tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer in {timeout}s{tail()}")


def first_of(catalog, *categories: str) -> list[str]:
    """The first catalog id (sorted) of each category: an outfit to send."""
    first: dict[str, str] = {}
    for item_id in catalog.item_ids:
        first.setdefault(catalog.items[item_id].category, item_id)
    return [first[c] for c in categories]


def replica_pids(app: str, deployment: str) -> list[int]:
    """Live replica processes of `deployment` of `app`, started by this test process's Ray.

    Ray titles a replica process `ray::ServeReplica:<app>:<deployment>`; only descendants of
    this process are considered (`own_processes`), so another Ray instance on the machine is
    never touched.
    """
    title = f"ray::ServeReplica:{app}:{deployment}"
    # the whole deployment name: `Outfitter` must not match `OutfitterV2`
    return [p for p, t in _own_titles(os.getpid()).items() if _titled(t, title, ". ")]


def running_replicas(app: str, deployment: str) -> int:
    """Replicas of `deployment` that Serve reports RUNNING."""
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None or deployment not in status.deployments:
        return 0
    return int(status.deployments[deployment].replica_states.get("RUNNING", 0))


def rss_mb(pid: int) -> float:
    """Resident memory of process `pid`, MiB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for pid {pid}")


def own_processes(title: str, root: int | None = None) -> list[int]:
    """Live processes whose command line starts with `title` and that descend from `root` (this
    test process by default: the Ray it started, its raylet, the workers the raylet forked).

    A fault test on a shared machine must kill its own Ray's worker, never another user's
    `ray::RayTrainWorker` found by title alone.
    """
    return sorted(p for p, t in _own_titles(root or os.getpid()).items() if _titled(t, title))


def _titled(cmdline: str, title: str, ends: str | None = None) -> bool:
    """`cmdline` starts with `title`, followed by one of `ends` (or nothing) when given."""
    rest = cmdline[len(title) : len(title) + 1]
    return cmdline.startswith(title) and (ends is None or rest == "" or rest in ends)


def _own_titles(root: int) -> dict[int, str]:
    """Command line (NULs as spaces) of every live process that descends from `root`."""
    parents, titles = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "(comm)": state, ppid
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):  # ended while we looked
            continue
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])
        titles[pid] = cmdline.replace(b"\0", b" ").decode(errors="replace")

    def descends(pid: int) -> bool:
        seen = set()
        while pid > 1 and pid not in seen:
            if pid == root:
                return True
            seen.add(pid)
            pid = parents.get(pid, 0)
        return False

    return {p: t for p, t in titles.items() if p != root and descends(p)}


class ClientThreads:
    """Load-generating threads of a test: `client(n)` runs in each from `with` until its end.

    Subclasses define `client(n)` and loop until `self.stop` is set; `__exit__` sets it and
    waits up to `join_s` for each thread."""

    join_s: float = 60

    def __init__(self, clients: int):
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self.client, args=(n,), daemon=True) for n in range(clients)
        ]

    def client(self, n: int) -> None:
        raise NotImplementedError

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=self.join_s)
        return False
