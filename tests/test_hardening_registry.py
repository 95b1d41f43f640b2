"""Registry hardening: re-indexing the champion is crash-safe, `promote` verifies the index
files (not the tag) and is a compare-and-set, downloads are cached and bounded, the temp folder
is pre-flighted, and every MLflow error path masks credentials.

A "fresh replica" below is what a new Serve replica does at start: `resolve_model` of
`models:/NAME@champion` into an empty cache, then `CatalogIndex.load` of its index for that
version.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from outfitter.platform import registry
from outfitter.platform.index import CatalogIndex

NAME = "outfitter-hardening"
SECRET = "s3cr3t-Pa55"


class Crash(RuntimeError):
    """A process dying between two steps."""


@pytest.fixture(scope="module")
def module_store(tmp_path_factory):
    """One private sqlite MLflow store for the module (creating one costs seconds)."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("hardening-registry")
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    registry.configure_tracking()
    yield registry.ensure_experiment("hardening")
    mp.undo()


@pytest.fixture()
def store(module_store, tmp_path, monkeypatch):
    """The module's store with no model `NAME` in it yet, and a private model cache."""
    monkeypatch.setenv("OUTFITTER_CACHE_DIR", str(tmp_path / "cache"))
    checkpoint = tmp_path / "model" / "artifacts" / "checkpoint"
    checkpoint.mkdir(parents=True)
    (checkpoint / "config.json").write_text("{}")
    yield tmp_path, module_store
    client = MlflowClient()
    for model in (NAME, f"{NAME}.champion.promotion-lock"):
        if client.search_registered_models(f"name = '{model}'"):
            client.delete_registered_model(model)


def _new_version(store, metric: float | None = None) -> str:
    root, experiment = store
    client = MlflowClient()
    run = client.create_run(experiment)
    if metric is not None:
        client.log_metric(run.info.run_id, "auc", metric)
    client.set_terminated(run.info.run_id)
    if not client.search_registered_models(f"name = '{NAME}'"):
        client.create_registered_model(NAME)
    return str(client.create_model_version(NAME, str(root / "model"), run.info.run_id).version)


def _index(version: str, seed: int, n: int = 12) -> CatalogIndex:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, 8))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    ids = [f"s{seed}-{i}" for i in range(n)]
    return CatalogIndex.build(vectors, ids, np.arange(n) % 3, meta={"model_version": version})


def _indexed(store, seed: int, metric: float | None = None) -> str:
    version = _new_version(store, metric)
    folder = _index(version, seed).save(store[0] / f"build-{version}-{seed}")
    registry.log_index(NAME, version, folder)
    return version


def _fresh_replica(tmp_path: Path) -> tuple[str, CatalogIndex]:
    """A new replica's start: resolve the champion into a fresh cache, load its index."""
    resolved = registry.resolve_model(f"models:/{NAME}@champion", dst=tmp_path / "replica")
    return resolved.version, CatalogIndex.load(resolved.index_dir, model_version=resolved.version)


def _artifact_dir(index_uri: str) -> Path:
    """Where the sqlite store keeps an index artifact on disk."""
    run_id, path = index_uri.removeprefix("runs:/").split("/", 1)
    root = MlflowClient().get_run(run_id).info.artifact_uri.removeprefix("file://")
    return Path(root) / path


# ---------------------------------------------------------------- crash-safe re-indexing


def test_each_build_gets_its_own_artifact_path(store):
    version = _indexed(store, seed=0)
    first = MlflowClient().get_model_version(NAME, version).tags[registry.INDEX_TAG]
    folder = _index(version, seed=1).save(store[0] / "rebuild")
    registry.log_index(NAME, version, folder)
    second = MlflowClient().get_model_version(NAME, version).tags[registry.INDEX_TAG]
    assert first != second
    assert (_artifact_dir(first) / "manifest.json").is_file(), "the first build was overwritten"


def _partial_upload(self, run_id, local_dir, artifact_path=None):
    """Upload half the files of the folder, then die."""
    files = sorted(Path(local_dir).iterdir())
    for path in files[: len(files) // 2]:
        MlflowClient.log_artifact(self, run_id, str(path), artifact_path)
    raise Crash("killed mid-upload")


REINDEX_CRASHES = [
    ("get_model_version", None),  # before anything
    ("log_artifacts", _partial_upload),  # half the new files uploaded
    ("set_model_version_tag", None),  # all uploaded, tag not moved
    ("create_registered_model", None),  # promote: before taking the alias lock
    ("set_registered_model_alias", None),  # promote: the alias write itself
]


@pytest.mark.parametrize(("method", "crash"), REINDEX_CRASHES, ids=[m for m, _ in REINDEX_CRASHES])
def test_a_crash_at_each_step_of_reindexing_the_champion_leaves_it_servable(
    store, tmp_path, monkeypatch, method, crash
):
    """Re-index the champion (same version, a new catalog) and re-promote, crashing at `method`.
    A fresh replica then serves the champion with a whole index: the old or the new one."""
    version = _indexed(store, seed=0)
    registry.promote(NAME, version)
    old = _fresh_replica(tmp_path / "before")[1]
    new_build = _index(version, seed=1).save(tmp_path / "rebuild")

    def boom(self, *args, **kwargs):
        raise Crash(f"killed in {method}")

    with monkeypatch.context() as m:
        m.setattr(MlflowClient, method, crash or boom)
        with pytest.raises(Crash):
            registry.log_index(NAME, version, new_build)
            registry.promote(NAME, version)
    served_version, served = _fresh_replica(tmp_path / "after")
    assert served_version == version
    assert served.ids in (old.ids, _index(version, seed=1).ids)
    expected = old if served.ids == old.ids else _index(version, seed=1)
    np.testing.assert_array_equal(served.vectors, expected.vectors)


# ---------------------------------------------------------------- promote verifies the files


@pytest.mark.parametrize("damage", ["pruned", "truncated", "one-file-deleted"])
def test_promote_verifies_the_index_files_not_the_tag(store, damage):
    champion = _indexed(store, seed=0)
    registry.promote(NAME, champion)
    candidate = _indexed(store, seed=1)
    files = _artifact_dir(
        MlflowClient().get_model_version(NAME, candidate).tags[registry.INDEX_TAG]
    )
    if damage == "pruned":
        shutil.rmtree(files)
    elif damage == "truncated":
        path = files / "vectors.npy"
        path.write_bytes(path.read_bytes()[:-16])
    else:
        (files / "ids.json").unlink()
    with pytest.raises(registry.RegistryError, match="unusable"):
        registry.promote(NAME, candidate)
    with pytest.raises(registry.RegistryError, match="unusable"):
        registry.promote_if_better(NAME, candidate, "auc")
    assert registry.version_by_alias(NAME, "champion").version == int(champion)


def test_an_index_of_another_version_is_refused(store):
    v1 = _indexed(store, seed=0)
    v2 = _new_version(store)
    with pytest.raises(registry.RegistryError, match="built for model version"):
        registry.log_index(NAME, v2, _index(v1, seed=3).save(store[0] / "wrong"))
    tag = MlflowClient().get_model_version(NAME, v1).tags[registry.INDEX_TAG]
    MlflowClient().set_model_version_tag(NAME, v2, registry.INDEX_TAG, tag)  # a hand-set tag
    with pytest.raises(registry.RegistryError, match="built for model version"):
        registry.promote(NAME, v2)


# ---------------------------------------------------------------- compare-and-set


def test_promote_with_a_stale_expectation_is_a_conflict(store):
    v1, v2, v3 = (_indexed(store, seed=s) for s in range(3))
    registry.promote(NAME, v1, expected=None)
    registry.promote(NAME, v2, expected=v1)
    with pytest.raises(registry.PromotionConflict, match=f"at version {v2}, not {v1}"):
        registry.promote(NAME, v3, expected=v1)
    assert registry.version_by_alias(NAME, "champion").version == int(v2)
    assert not MlflowClient().search_registered_models(f"name = '{NAME}.champion.promotion-lock'")


def test_concurrent_promote_if_better_keeps_the_better_version(store, monkeypatch):
    """Two runs finish together, both better than the old champion. Each reads the champion,
    then writes; the worse run is slower, so it writes last. Without a compare-and-set the
    worse run ends as champion."""
    base = _indexed(store, seed=0, metric=0.5)
    registry.promote(NAME, base)
    good, worse = _indexed(store, seed=1, metric=0.9), _indexed(store, seed=2, metric=0.7)
    delay = {good: 0.2, worse: 0.8}
    real = registry.version_metrics

    def slow_metrics(mv):
        out = real(mv)
        if str(mv.version) == base:  # reading the champion's metrics: the race window
            time.sleep(delay[threading.current_thread().name])
        return out

    monkeypatch.setattr(registry, "version_metrics", slow_metrics)
    results = {}

    def run(version):
        results[version] = registry.promote_if_better(NAME, version, "auc")

    threads = [threading.Thread(target=run, args=(v,), name=v) for v in (good, worse)]
    threads[0].start()
    time.sleep(0.1)
    threads[1].start()
    for t in threads:
        t.join(timeout=60)
    assert registry.version_by_alias(NAME, "champion").version == int(good)
    assert results == {good: True, worse: False}


def test_a_stale_promotion_lock_is_taken_over(store, monkeypatch):
    version = _indexed(store, seed=0)
    MlflowClient().create_registered_model(f"{NAME}.champion.promotion-lock")  # a crashed holder
    monkeypatch.setattr(registry, "LOCK_STALE_S", 0.0)
    registry.promote(NAME, version)
    assert registry.version_by_alias(NAME, "champion").version == int(version)


# ---------------------------------------------------------------- downloads, temp space


def _tree_size(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []
    return len(files), sum(p.stat().st_size for p in files)


def test_downloads_are_cached_per_version_and_bounded(store, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr("tempfile.tempdir", None)
    monkeypatch.setenv("OUTFITTER_MODEL_CACHE_KEEP", "2")
    versions = [_indexed(store, seed=s) for s in range(4)]
    first = registry.resolve_model(f"models:/{NAME}/{versions[0]}")
    again = registry.resolve_model(f"models:/{NAME}/{versions[0]}")
    assert again.checkpoint_dir == first.checkpoint_dir and again.index_dir == first.index_dir
    for version in versions:
        registry.resolve_model(f"models:/{NAME}/{version}")
    entries = sorted(p.name for p in registry.model_cache_root().iterdir())
    assert {e.rsplit("-", 1)[0] for e in entries} == {f"{NAME}-{v}" for v in versions[2:]}, entries
    assert _tree_size(tmp_path / "tmp") == (0, 0), list((tmp_path / "tmp").rglob("*"))


def test_a_crashed_download_leaves_no_entry_that_is_trusted(store, monkeypatch):
    import mlflow

    version = _indexed(store, seed=0)
    real = mlflow.artifacts.download_artifacts
    with monkeypatch.context() as m:

        def dies_on_the_index(artifact_uri, dst_path=None, **kw):
            if "index-v" in artifact_uri:
                raise OSError("connection reset")
            return real(artifact_uri=artifact_uri, dst_path=dst_path, **kw)

        m.setattr(mlflow.artifacts, "download_artifacts", dies_on_the_index)
        with pytest.raises(registry.RegistryError, match="connection reset"):
            registry.resolve_model(f"models:/{NAME}/{version}")
    assert list(registry.model_cache_root().iterdir()) == []  # the staging folder went too
    resolved = registry.resolve_model(f"models:/{NAME}/{version}")
    assert len(CatalogIndex.load(resolved.index_dir, model_version=version)) == 12


def test_staging_space_is_checked_first(store, monkeypatch):
    import collections

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(registry.shutil, "disk_usage", lambda p: usage(2**30, 2**30, 2**20))
    with pytest.raises(registry.RegistryError, match="has 1 MiB free; staging needs"):
        registry.log_checkpoint_model(store[0] / "model" / "artifacts" / "checkpoint")


# ---------------------------------------------------------------- credentials in every error


def _leaks(monkeypatch, target, method: str):
    def boom(*args, **kwargs):
        raise MlflowException(f"error talking to 'http://bob:{SECRET}@10.0.0.1:5000/api'")

    monkeypatch.setattr(target, method, boom)


@pytest.mark.parametrize(
    "step", ["metrics", "index-download", "log_index", "promote", "promote_if_better"]
)
def test_every_registry_error_path_masks_credentials(store, monkeypatch, step):
    import mlflow

    version = _indexed(store, seed=0, metric=0.5)
    real = mlflow.artifacts.download_artifacts
    if step == "metrics":
        _leaks(monkeypatch, MlflowClient, "get_run")
        call = lambda: registry.resolve_model(f"models:/{NAME}/{version}")  # noqa: E731
    elif step == "index-download":

        def leaky(artifact_uri, dst_path=None, **kw):
            if "index-v" in artifact_uri:
                raise OSError(f"cannot reach http://bob:{SECRET}@10.0.0.1:9000/bucket")
            return real(artifact_uri=artifact_uri, dst_path=dst_path, **kw)

        monkeypatch.setattr(mlflow.artifacts, "download_artifacts", leaky)
        call = lambda: registry.resolve_model(f"models:/{NAME}/{version}")  # noqa: E731
    elif step == "log_index":
        folder = _index(version, seed=5).save(store[0] / "again")
        _leaks(monkeypatch, MlflowClient, "log_artifacts")
        call = lambda: registry.log_index(NAME, version, folder)  # noqa: E731
    elif step == "promote":
        _leaks(monkeypatch, MlflowClient, "set_registered_model_alias")
        call = lambda: registry.promote(NAME, version)  # noqa: E731
    else:
        _leaks(monkeypatch, MlflowClient, "get_run")
        call = lambda: registry.promote_if_better(NAME, version, "auc")  # noqa: E731
    with pytest.raises(registry.RegistryError) as err:
        call()
    assert SECRET not in str(err.value) and "bob:***@" in str(err.value), str(err.value)
    assert err.value.__cause__ is None  # the unmasked MLflow error is not chained into logs


def test_a_runs_uri_resolves_into_the_cache(store):
    root, experiment = store
    client = MlflowClient()
    run = client.create_run(experiment)
    client.log_artifacts(run.info.run_id, str(root / "model"), "model")
    resolved = registry.resolve_model(f"runs:/{run.info.run_id}/model")
    assert (resolved.checkpoint_dir / "config.json").is_file()
    assert registry.model_cache_root() in resolved.checkpoint_dir.parents


def test_every_cache_lives_under_one_root(monkeypatch, tmp_path):
    """Downloaded models sit under the same root as features and vectors; an empty
    OUTFITTER_CACHE_DIR counts as unset for all of them."""
    from outfitter.platform.embed import default_cache_dir

    monkeypatch.setenv("OUTFITTER_CACHE_DIR", str(tmp_path / "cache"))
    assert registry.model_cache_root() == tmp_path / "cache" / "models"
    monkeypatch.setenv("OUTFITTER_CACHE_DIR", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "outfitter"
    assert registry.model_cache_root() == default_cache_dir() / "models"
