"""Crash-safe index folders: a manifest verified on load, and a save that never leaves a mix.

`CatalogIndex.save` writes a fresh sibling folder (manifest last) and renames it into place;
`load` checks every file against the manifest and the model it is loaded for. Crashes are
injected at each write and rename of a re-save; after each one the folder still loads as the
old index, whole.
"""

from __future__ import annotations

import json
import os

import faiss
import numpy as np
import pytest

from outfitter.data.types import CATEGORIES
from outfitter.platform import index as index_mod
from outfitter.platform.index import CatalogIndex, IndexConfig, IndexIntegrityError, verify_index


class Crash(RuntimeError):
    """The process dying at one step of a save."""


def _index(seed: int, n: int = 120, dim: int = 16, version: str = "1") -> CatalogIndex:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    ids = [f"s{seed}-{i}" for i in range(n)]
    cats = rng.integers(0, 3, n)
    meta = {"model_name": "m", "model_version": version}
    return CatalogIndex.build(vectors, ids, cats, IndexConfig(kind="flat"), meta)


def test_manifest_records_version_dim_count_and_checksums(tmp_path):
    folder = _index(0, version="7").save(tmp_path / "idx")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (manifest["model_version"], manifest["dim"], manifest["n_items"]) == ("7", 16, 120)
    on_disk = {p.name for p in folder.iterdir()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in manifest["files"].values())
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]  # no staging folder left behind


@pytest.mark.parametrize(
    "damage", ["truncate", "delete", "swap", "flip-byte", "no-manifest", "symlink"]
)
@pytest.mark.parametrize("name", ["ids.json", "vectors.npy", "categories.npy", "shard"])
def test_a_damaged_or_mixed_folder_is_refused(tmp_path, damage, name):
    folder = _index(0).save(tmp_path / "idx")
    other = _index(1).save(tmp_path / "other")
    if name == "shard":
        name = f"index-{CATEGORIES[0]}.faiss"
    path = folder / name
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-7])
    elif damage == "delete":
        path.unlink()
    elif damage == "swap":  # a file of another build: the mix a crashed in-place write leaves
        path.write_bytes((other / name).read_bytes())
    elif damage == "flip-byte":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "no-manifest":
        (folder / "manifest.json").unlink()
    else:
        path.unlink()
        path.symlink_to(other / name)
    with pytest.raises(IndexIntegrityError):
        CatalogIndex.load(folder)


def test_load_checks_the_model_version_and_dimension(tmp_path):
    folder = _index(0, version="3").save(tmp_path / "idx")
    assert len(CatalogIndex.load(folder, model_version="3", dim=16)) == 120
    with pytest.raises(IndexIntegrityError, match="built for model version 3, not 4"):
        CatalogIndex.load(folder, model_version=4)
    with pytest.raises(IndexIntegrityError, match="16-d vectors; the model makes 32-d"):
        CatalogIndex.load(folder, dim=32)
    with pytest.raises(FileNotFoundError, match="not an index folder"):
        verify_index(tmp_path)


def _crash_points():
    """(function, how many calls succeed before the crash) for each step of a re-save."""
    n_shards = 3
    points = [("write_text", 0), ("np.save", 0), ("np.save", 1)]
    points += [("write_index", i) for i in range(n_shards)]
    points += [("write_text", 1), ("_write_synced", 0), ("rename", 0), ("rename", 1)]
    return points


@pytest.mark.parametrize(("target", "after"), _crash_points())
def test_a_crash_at_each_step_of_a_resave_leaves_the_old_index_loadable(
    tmp_path, monkeypatch, target, after
):
    old = _index(0, version="1")
    folder = old.save(tmp_path / "idx")
    calls = {"n": 0}

    def crashing(real):
        def f(*args, **kwargs):
            if calls["n"] == after:
                raise Crash(f"killed in {target} call {after}")
            calls["n"] += 1
            return real(*args, **kwargs)

        return f

    with monkeypatch.context() as m:
        if target == "write_text":
            m.setattr(index_mod.Path, "write_text", crashing(index_mod.Path.write_text))
        elif target == "np.save":
            m.setattr(index_mod.np, "save", crashing(np.save))
        elif target == "write_index":
            m.setattr(index_mod.faiss, "write_index", crashing(faiss.write_index))
        elif target == "rename":
            m.setattr(index_mod.os, "rename", crashing(os.rename))
        else:
            m.setattr(index_mod, target, crashing(getattr(index_mod, target)))
        with pytest.raises(Crash):
            _index(1, version="2").save(folder)
    loaded = CatalogIndex.load(folder, model_version="1")
    assert loaded.ids == old.ids
    np.testing.assert_array_equal(loaded.vectors, old.vectors)
    # the next save completes and replaces it
    _index(1, version="2").save(folder)
    assert CatalogIndex.load(folder, model_version="2").ids[0] == "s1-0"
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]  # nothing left aside or staged
