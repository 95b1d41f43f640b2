"""No leaks: hot swaps from a remote MLflow store leave the temp space flat.

A real `mlflow server` (a subprocess on a free loopback port, artifacts proxied) holds two
tiny model versions with their indexes; `champion` moves between them 20 times and each time a
replica's load resolves it (`registry.resolve_model`, what `core.load_state` starts with on a
`reconfigure`) and opens its checkpoint and index. Every load used to download into a new temp
folder that nobody removed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from serve_helpers import free_port, wait_http

SWAPS = 20
NAME = "outfitter-swap"


@pytest.fixture()
def server(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        uri = f"http://127.0.0.1:{port}"
        wait_http(uri + "/health", proc)
        yield uri
    finally:  # only the process this fixture started
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _usage(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def test_twenty_hot_swaps_from_a_server_leave_temp_space_flat(
    server, synth_dir, tmp_path, tmp_path_factory, monkeypatch
):
    from mlflow import MlflowClient
    from serve_helpers import tiny_versions

    from outfitter.model.config import ModelConfig
    from outfitter.platform import registry
    from outfitter.platform.index import CatalogIndex

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr("tempfile.tempdir", None)
    monkeypatch.setenv("OUTFITTER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    registry.configure_tracking()
    experiment = registry.ensure_experiment("swaps")
    client = MlflowClient()
    client.create_registered_model(NAME)
    versions = []
    for folder in tiny_versions(tmp_path_factory.getbasetemp() / "tiny-models", synth_dir):
        staged = tmp_path / "stage" / folder.name
        shutil.copytree(folder, staged / "artifacts" / "checkpoint",
                        ignore=shutil.ignore_patterns("index"))  # fmt: skip
        run = client.create_run(experiment)
        client.log_artifacts(run.info.run_id, str(staged), "model")
        mv = client.create_model_version(
            NAME, f"{run.info.artifact_uri}/model", run_id=run.info.run_id
        )
        registry.log_index(NAME, mv.version, folder / "index")
        versions.append(str(mv.version))
    shutil.rmtree(tmp_path / "stage")
    baseline = _usage(tmp)
    sizes = []
    for swap in range(SWAPS):
        version = versions[swap % 2]
        registry.promote(NAME, version)
        resolved = registry.resolve_model(f"models:/{NAME}@champion")
        assert resolved.version == version
        ModelConfig.from_dict(json.loads((resolved.checkpoint_dir / "config.json").read_text()))
        assert len(CatalogIndex.load(resolved.index_dir, model_version=version)) > 0
        sizes.append((_usage(tmp), _usage(registry.model_cache_root())))
    print(f"\ntemp (files, bytes) before: {baseline}; after each swap: {sizes[0]} .. {sizes[-1]}")
    assert all(s[0] == baseline for s in sizes), sizes  # nothing left in the temp folder
    assert all(s[1] == sizes[1][1] for s in sizes[1:]), sizes  # cache: 2 versions, reused
    assert len(list(registry.model_cache_root().iterdir())) == 2
