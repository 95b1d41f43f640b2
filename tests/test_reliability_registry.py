"""Registry safety: promotion is atomic, so `champion` never points at a version without its index.

The design (registry.py): `log_index` uploads the index artifacts first and records the
`outfitter.index` tag last; `promote` refuses a version without the tag; the alias write is the
single step that moves `champion`. Crashes are injected between the steps (the MLflow client call
of the next step raises), and after each one the invariant is checked: the champion, if any,
has an index tag, and that tag resolves to downloadable index files.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from outfitter.platform import registry
from outfitter.platform.index import CatalogIndex, verify_index

NAME = "outfitter-reliability"


class Crash(RuntimeError):
    """A process dying between two registry steps."""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A private sqlite MLflow store (tracking + registry) for this module."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("registry")
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    registry.configure_tracking()
    experiment = registry.ensure_experiment("reliability")
    checkpoint = root / "model" / "artifacts" / "checkpoint"  # what resolve_model expects
    checkpoint.mkdir(parents=True)
    (checkpoint / "config.json").write_text("{}")
    yield root, experiment
    mp.undo()


def _new_version(store) -> str:
    """A registered version backed by a real run (the index is logged to that run)."""
    root, experiment = store
    client = MlflowClient()
    run = client.create_run(experiment)
    client.set_terminated(run.info.run_id)
    if not client.search_registered_models(f"name = '{NAME}'"):
        client.create_registered_model(NAME)
    mv = client.create_model_version(NAME, source=str(root / "model"), run_id=run.info.run_id)
    return str(mv.version)


def _index_folder(tmp_path: Path, tag: str) -> Path:
    """A real (tiny) index folder built for version `tag`, manifest included."""
    rng = np.random.default_rng(int(tag))
    vectors = rng.normal(size=(6, 4))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    ids = [f"v{tag}-{i}" for i in range(6)]
    index = CatalogIndex.build(vectors, ids, [0, 0, 1, 1, 2, 2], meta={"model_version": tag})
    return index.save(tmp_path / f"index-{tag}")


def _champion_is_sound() -> str | None:
    """The invariant; returns the champion's version (None when there is none yet)."""
    import mlflow

    champion = registry.version_by_alias(NAME, "champion")
    if champion is None:
        return None
    index_uri = (champion.tags or {}).get(registry.INDEX_TAG)
    assert index_uri, f"champion {champion.version} has no index tag"
    with tempfile.TemporaryDirectory() as tmp:
        files = Path(mlflow.artifacts.download_artifacts(artifact_uri=index_uri, dst_path=tmp))
        assert (files / "meta.json").is_file(), f"champion {champion.version} index has no files"
        verify_index(files, model_version=champion.version)  # whole, and built for it
    return str(champion.version)


def _crash_on(monkeypatch, method: str) -> None:
    def boom(self, *args, **kwargs):
        raise Crash(f"killed before {method}")

    monkeypatch.setattr(MlflowClient, method, boom)


def test_promote_without_index_is_refused(store, tmp_path, monkeypatch):
    old = _new_version(store)
    registry.log_index(NAME, old, _index_folder(tmp_path, old))
    registry.promote(NAME, old)
    new = _new_version(store)
    with pytest.raises(registry.RegistryError, match="no faiss index yet"):
        registry.promote(NAME, new)
    assert _champion_is_sound() == old


def test_promote_if_better_without_index_is_refused(store, tmp_path):
    old = _champion_is_sound() or _new_version(store)
    new = _new_version(store)
    with pytest.raises(registry.RegistryError, match="no faiss index yet"):
        registry.promote_if_better(NAME, new, "any_metric")
    assert _champion_is_sound() in (old, None)


def test_crash_after_index_upload_before_tag_keeps_old_champion(store, tmp_path, monkeypatch):
    old = _new_version(store)
    registry.log_index(NAME, old, _index_folder(tmp_path, old))
    registry.promote(NAME, old)
    new = _new_version(store)
    with monkeypatch.context() as m:
        _crash_on(m, "set_model_version_tag")  # artifacts uploaded, tag never written
        with pytest.raises(Crash):
            registry.log_index(NAME, new, _index_folder(tmp_path, new))
    with pytest.raises(registry.RegistryError):
        registry.promote(NAME, new)
    assert _champion_is_sound() == old


def test_crash_before_alias_write_keeps_old_champion_with_its_index(store, tmp_path, monkeypatch):
    old = _new_version(store)
    registry.log_index(NAME, old, _index_folder(tmp_path, old))
    registry.promote(NAME, old)
    new = _new_version(store)
    registry.log_index(NAME, new, _index_folder(tmp_path, new))
    with monkeypatch.context() as m:
        _crash_on(m, "set_registered_model_alias")
        with pytest.raises(Crash):
            registry.promote(NAME, new)
    assert _champion_is_sound() == old
    resolved = registry.resolve_model(f"models:/{NAME}@champion", dst=tmp_path / "dl")
    assert resolved.version == old and (resolved.index_dir / "meta.json").is_file()
    assert CatalogIndex.load(resolved.index_dir, model_version=old).ids[0] == f"v{old}-0"
    registry.promote(NAME, new)  # the retry after the crash completes the move
    assert _champion_is_sound() == new


def test_random_crash_sequences_never_break_the_invariant(store, tmp_path, monkeypatch):
    """40 random steps (new version, log index, promote), each crashing at a random point."""
    rng = random.Random(8)
    versions = [_new_version(store)]
    crash_points = {
        "log_index": ["log_artifacts", "set_model_version_tag", None],
        "promote": ["get_model_version", "set_registered_model_alias", None],
    }
    counts = {"crashed": 0, "promoted": 0, "refused": 0}
    for _ in range(40):
        step = rng.choice(["new", "log_index", "promote", "promote"])
        if step == "new":
            versions.append(_new_version(store))
            continue
        version = rng.choice(versions)
        point = rng.choice(crash_points[step])
        with monkeypatch.context() as m:
            if point:
                _crash_on(m, point)
            try:
                if step == "log_index":
                    registry.log_index(NAME, version, _index_folder(tmp_path, version))
                else:
                    registry.promote(NAME, version)
                    counts["promoted"] += 1
            except Crash:
                counts["crashed"] += 1
            except registry.RegistryError:
                counts["refused"] += 1
        _champion_is_sound()
    print(f"\nregistry: 40 random steps, {counts}; champion always had its index")
    assert counts["crashed"] and counts["promoted"] and counts["refused"], counts


def test_cli_promote_refuses_a_version_without_index(store, tmp_path):
    from outfitter.cli import app

    before = _champion_is_sound()
    new = _new_version(store)
    result = CliRunner().invoke(
        app, ["promote", "--version", new, "--model-name", NAME, "--workdir", str(tmp_path)]
    )
    assert result.exit_code != 0
    assert "no faiss index yet" in result.output and "Traceback" not in result.output
    assert _champion_is_sound() == before


def test_cli_index_build_of_a_version_leaves_no_temp_folder(store, tmp_path, monkeypatch):
    """`outfitter index build --model models:/NAME/V` without --out logs the index from a
    staging folder removed afterwards (it used to be a `mkdtemp` nobody removed)."""
    from outfitter.cli import app

    version = _new_version(store)
    built = _index_folder(tmp_path, version)

    def build(resolved, data, folder, **kwargs):  # the faiss build itself is tested elsewhere
        assert resolved.version == version
        shutil.copytree(built, folder, dirs_exist_ok=True)
        return CatalogIndex.load(folder, model_version=version)

    monkeypatch.setattr("outfitter.platform.index.build_index_for_model", build)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr("tempfile.tempdir", None)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "polyvore_item_metadata.json").write_text("{}")
    args = ["index", "build", "--model", f"models:/{NAME}/{version}", "--data"]
    result = CliRunner().invoke(app, [*args, str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    assert f"logged to {NAME}/{version}" in result.output
    assert list(tmp.iterdir()) == []  # nothing left behind
    assert _champion_is_sound() != version  # logged, not promoted
    registry.promote(NAME, version)
    assert _champion_is_sound() == version
