"""faiss on the GPU without a GPU: placement, the HNSW fallback and save-after-GPU, with faiss's
GPU functions replaced by fakes that behave as faiss-gpu's do (IVF and flat shards move, HNSW
raises "not implemented on GPU"); plus the packaging check that the `faiss` module imported is
the one the install asked for. The real faiss-gpu comparison is `test_gpu_shard_neighbours_match`
(gpu-marked).
"""

from __future__ import annotations

from importlib import metadata

import faiss
import numpy as np
import pytest
import torch

from outfitter.platform import index as index_module
from outfitter.platform.index import CatalogIndex, IndexConfig


class _FakeGpuIndex:
    """A CPU faiss index under a `Gpu*` class name: searches like it, is not writable by faiss."""

    def __init__(self, cpu_index, gpu: int):
        self.cpu_index, self.gpu = cpu_index, gpu
        self.ntotal = cpu_index.ntotal

    def search(self, queries, k, params=None):
        return self.cpu_index.search(queries, k, params=params)


class FakeFaissGpu:
    """Installs fake StandardGpuResources / get_num_gpus / index_cpu_to_gpu / index_gpu_to_cpu."""

    def __init__(self, monkeypatch, gpus: int = 1):
        self.moved: list[tuple[str, int]] = []  # (CPU class name, GPU id) of each move
        self.kept: list[str] = []
        monkeypatch.setattr(faiss, "StandardGpuResources", lambda: object(), raising=False)
        monkeypatch.setattr(faiss, "get_num_gpus", lambda: gpus)
        monkeypatch.setattr(faiss, "index_cpu_to_gpu", self.to_gpu, raising=False)
        monkeypatch.setattr(faiss, "index_gpu_to_cpu", self.to_cpu, raising=False)

    def to_gpu(self, resources, gpu, index):
        name = type(index).__name__
        if "HNSW" in name:  # as faiss-gpu's GpuCloner: no GPU version of HNSW
            self.kept.append(name)
            raise RuntimeError("Error: 'This index type is not implemented on GPU.'")
        self.moved.append((name, gpu))
        return type(f"Gpu{name}", (_FakeGpuIndex,), {})(index, gpu)

    @staticmethod
    def to_cpu(index):
        return index.cpu_index


def clustered(n: int = 600, dim: int = 16, categories: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim))
    vectors = centres[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"item{i}" for i in range(n)]
    return vectors.astype(np.float32), ids, np.arange(n) % categories


def _on_gpu(index: CatalogIndex) -> bool:
    """Some shard is a faiss GPU index (`GpuIndexIVFFlat`, `GpuIndexFlatIP`)."""
    return any("Gpu" in kind for kind in index.shard_kinds().values())


def _hits(index: CatalogIndex, queries, k=10, category=None):
    return [[h.item_id for h in hits] for hits in index.search(queries, k, category)]


def test_auto_picks_ivf_for_large_shards_on_a_gpu_as_on_the_cpu(monkeypatch):
    vectors, ids, cats = clustered()
    cfg = IndexConfig(exact_below=200, target_recall=None)  # placement only: not calibrated
    assert cfg.kind_for(100, on_gpu=True) == "flat" and cfg.kind_for(300) == "ivf"
    cpu = CatalogIndex.build(vectors, ids, cats, cfg)
    assert set(cpu.shard_kinds().values()) == {"IndexIVFFlat"} and not _on_gpu(cpu)
    fake = FakeFaissGpu(monkeypatch)
    gpu = CatalogIndex.build(vectors, ids, cats, cfg)
    assert set(gpu.shard_kinds().values()) == {"GpuIndexIVFFlat"} and _on_gpu(gpu)
    assert fake.moved == [("IndexIVFFlat", 0), ("IndexIVFFlat", 0)] and not fake.kept
    small = CatalogIndex.build(vectors[:100], ids[:100], cats[:100], cfg)
    assert set(small.shard_kinds().values()) == {"GpuIndexFlatIP"}
    hnsw = IndexConfig(exact_below=200, approximate="hnsw", target_recall=None)
    assert set(CatalogIndex.build(vectors, ids, cats, hnsw).shard_kinds().values()) == {
        "IndexHNSWFlat"
    }


def test_hnsw_shards_stay_on_the_cpu_and_still_answer(monkeypatch):
    vectors, ids, cats = clustered()
    exact = CatalogIndex.build(vectors, ids, cats, IndexConfig(kind="flat", use_gpu=False))
    fake = FakeFaissGpu(monkeypatch)
    index = CatalogIndex.build(vectors, ids, cats, IndexConfig(kind="hnsw"))
    assert fake.kept == ["IndexHNSWFlat", "IndexHNSWFlat"] and not fake.moved
    assert not _on_gpu(index) and set(index.shard_kinds().values()) == {"IndexHNSWFlat"}
    queries = vectors[:20]
    pairs = zip(_hits(index, queries), _hits(exact, queries), strict=True)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in pairs])
    assert recall >= 0.9


def test_save_after_gpu_writes_cpu_shards_that_load_anywhere(monkeypatch, tmp_path):
    vectors, ids, cats = clustered()
    queries = vectors[::37]
    FakeFaissGpu(monkeypatch)
    for kind in ("flat", "ivf"):
        gpu = CatalogIndex.build(vectors, ids, cats, IndexConfig(kind=kind))
        assert _on_gpu(gpu)
        folder = gpu.save(tmp_path / kind)
        for path in folder.glob("index-*.faiss"):  # plain faiss files, no GPU class inside
            assert "Gpu" not in type(faiss.read_index(str(path))).__name__
        back = CatalogIndex.load(folder, use_gpu=False)
        assert not _on_gpu(back)
        assert _hits(back, queries) == _hits(gpu, queries)
        assert _hits(back, queries, category=1) == _hits(gpu, queries, category=1)
        again = CatalogIndex.load(folder)  # the saved config's use_gpu: back to the GPU
        assert _on_gpu(again) and _hits(again, queries) == _hits(gpu, queries)


def test_shards_follow_the_process_device(monkeypatch):
    vectors, ids, cats = clustered()
    fake = FakeFaissGpu(monkeypatch, gpus=2)
    cpu = CatalogIndex.build(vectors, ids, cats, IndexConfig(kind="ivf"), device="cpu")
    assert not _on_gpu(cpu) and not fake.moved, "a CPU worker's shards went to a GPU"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    gpu1 = CatalogIndex.build(vectors, ids, cats, IndexConfig(kind="ivf"), device="cuda:1")
    assert _on_gpu(gpu1) and {g for _, g in fake.moved} == {1}
    off = CatalogIndex.build(vectors, ids, cats, IndexConfig(kind="ivf", use_gpu=False))
    assert not _on_gpu(off)


# ---------------------------------------------------------------- packaging


def _installed(name: str) -> bool:
    try:
        metadata.distribution(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def test_the_imported_faiss_is_the_installed_one():
    """One faiss distribution, and the module imported is its build: faiss-cpu and faiss-gpu
    both install the `faiss` package, so with both present the last one installed wins."""
    gpu_dists = [
        d for d in ("faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss-cuda") if _installed(d)
    ]
    cpu_dists = [d for d in ("faiss-cpu",) if _installed(d)]
    installed = gpu_dists + cpu_dists
    assert len(installed) == 1, (
        f"faiss distributions {installed}: install exactly one (`pip install -e .[cpu]` or "
        "`.[gpu]`, never both)"
    )
    has_gpu_build = hasattr(faiss, "StandardGpuResources")
    assert has_gpu_build == bool(gpu_dists), (
        f"installed {installed[0]} but the imported faiss ({faiss.__file__}) "
        f"{'has' if has_gpu_build else 'lacks'} GPU support"
    )
    version = metadata.version(installed[0])
    assert faiss.__version__.split(".")[:2] == version.split(".")[:2], (faiss.__version__, version)


def test_pyproject_keeps_faiss_cpu_out_of_a_gpu_install():
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())[
        "project"
    ]
    names = [d.split(">")[0].split("=")[0].split("[")[0].strip() for d in project["dependencies"]]
    assert not [n for n in names if n.startswith("faiss")], "faiss must be an extra, not a dep"
    extras = project["optional-dependencies"]
    assert any(d.startswith("faiss-cpu") for d in extras["cpu"])
    assert any(d.startswith("faiss-gpu") for d in extras["gpu"])
    assert not any(d.startswith("faiss-cpu") for d in extras["gpu"] + extras["dev"])
    makefile = (Path(__file__).parent.parent / "Makefile").read_text()
    assert '".[dev,cpu]"' in makefile


@pytest.mark.gpu
def test_gpu_shard_neighbours_match_the_cpu_shard():
    """Real faiss-gpu: a flat shard on the GPU returns the CPU shard's neighbours."""
    if not index_module._gpu_available():
        pytest.skip("faiss was built without GPU support (install .[gpu])")
    vectors, ids, cats = clustered(n=5000, dim=64)
    cpu = CatalogIndex.build(vectors, ids, cats, IndexConfig(kind="flat", use_gpu=False))
    gpu = CatalogIndex.build(vectors, ids, cats, IndexConfig(kind="flat"), device="cuda")
    assert _on_gpu(gpu)
    queries = vectors[:200]
    assert _hits(gpu, queries) == _hits(cpu, queries)
    ivf = CatalogIndex.build(
        vectors, ids, cats, IndexConfig(exact_below=1000, target_recall=None), device="cuda"
    )
    assert set(ivf.shard_kinds().values()) == {"GpuIndexIVFFlat"}
