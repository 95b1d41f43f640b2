"""Unit tests of the model parts: towers, item encoder, outfit transformer, baseline, losses."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from outfitter.model import load_config
from outfitter.model.factory import build_model
from outfitter.model.losses import compatibility_loss, retrieval_loss, weighted_triplet_loss
from outfitter.model.sun2020 import WordVocab
from outfitter.model.task import OutfitTask, make_optimizer
from outfitter.model.towers import TowerWeightsError, create_towers
from outfitter.model.words import word_ids

D = 64
BUCKETS = load_config("hybrid-tiny").words.buckets
TITLES = ["red silk dress", "navy ankle boots", "black leather bag", "white sneakers", "gold hoops"]


def _words(u: int) -> torch.Tensor:
    """Word ids of `u` item titles, as the input builder gives them."""
    return word_ids([TITLES[i % len(TITLES)] for i in range(u)], BUCKETS)


def _features(u: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "image_feat": torch.randn(u, D, generator=g),
        "text_feat": torch.randn(u, D, generator=g),
        "words": _words(u),
    }


@pytest.mark.parametrize("fusion", ["concat", "sum", "gated"])
def test_hybrid_shapes_and_normalised_vectors(fusion):
    model = build_model(load_config("hybrid-tiny", {"item.fusion": fusion})).eval()
    vecs = model.encode_items(_features(6))
    assert vecs.shape == (6, D)
    assert torch.allclose(vecs.norm(dim=-1), torch.ones(6), atol=1e-5)
    items = vecs[torch.tensor([[0, 1, 2], [3, 4, 0]])]  # (B=2, N=3, D)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    assert model.compatibility_logits(items, mask).shape == (2,)
    text = {"text_feat": torch.randn(2, D), "words": _words(2)}
    query = model.query(items, mask, text, torch.tensor([8, 3]))
    assert query.shape == (2, D)
    assert torch.allclose(query.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_padding_does_not_change_the_outputs():
    model = build_model(load_config("hybrid-tiny")).eval()
    vecs = model.encode_items(_features(5))
    short = vecs[torch.tensor([[0, 1, 2]])]
    padded = vecs[torch.tensor([[0, 1, 2, 3, 4]])]
    mask = torch.tensor([[True, True, True, False, False]])
    with torch.no_grad():
        a = model.compatibility_logits(short, torch.ones(1, 3, dtype=torch.bool))
        b = model.compatibility_logits(padded, mask)
        text, cat = {"text_feat": torch.randn(1, D), "words": _words(1)}, torch.tensor([2])
        qa = model.query(short, torch.ones(1, 3, dtype=torch.bool), text, cat)
        qb = model.query(padded, mask, text, cat)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(qa, qb, atol=1e-5)


def test_item_order_does_not_matter():
    model = build_model(load_config("hybrid-tiny")).eval()
    vecs = model.encode_items(_features(4))
    mask = torch.ones(1, 4, dtype=torch.bool)
    with torch.no_grad():
        a = model.compatibility_logits(vecs[torch.tensor([[0, 1, 2, 3]])], mask)
        b = model.compatibility_logits(vecs[torch.tensor([[3, 1, 0, 2]])], mask)
    assert torch.allclose(a, b, atol=1e-5)


def test_ablations_ignore_the_other_modality():
    feats = _features(3)
    swapped = {**feats, "text_feat": torch.randn(3, D)}
    image_only = build_model(load_config("image-only")).eval()
    assert torch.allclose(image_only.encode_items(feats), image_only.encode_items(swapped))
    assert image_only.target_text is None  # the target token reads the category only
    text_only = build_model(load_config("text-only")).eval()
    assert not torch.allclose(text_only.encode_items(feats), text_only.encode_items(swapped))


def test_too_long_outfit_is_rejected_with_the_limit():
    model = build_model(load_config("hybrid-tiny", {"transformer.max_items": 3}))
    vecs = torch.randn(1, 4, D)
    with pytest.raises(ValueError, match=r"4 items; the model takes 1\.\.3"):
        model.compatibility_logits(vecs, torch.ones(1, 4, dtype=torch.bool))


def test_losses():
    logits, labels = torch.tensor([3.0, -2.0, 0.1]), torch.tensor([1.0, 0.0, 0.0])
    bce = compatibility_loss(logits, labels, "bce")
    focal = compatibility_loss(logits, labels, "focal", gamma=2.0)
    assert 0 < focal < bce  # focal down-weights the easy outfits
    q = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    assert retrieval_loss(q, q, torch.arange(4), 0.01) < 1e-3  # each query is its own candidate
    a, p, n = torch.eye(3)[:1], torch.eye(3)[1:2], torch.eye(3)[2:]
    w = torch.tensor([1.0])
    assert weighted_triplet_loss(a, p, n, w, margin=0.2) == pytest.approx(0.2)
    assert weighted_triplet_loss(a, p, n, w * 0.5, margin=0.2) == pytest.approx(0.1)
    assert weighted_triplet_loss(a, a, n, w, margin=0.2) == 0.0


def test_sun2020_model_and_vocab():
    vocab = WordVocab.build(["red silk dress", "blue denim jeans", "red boots"])
    assert WordVocab.from_json(vocab.to_json()).words == vocab.words
    assert vocab.encode("red unknown", 16) == [vocab.index["red"], 1]
    assert vocab.encode("", 16) == [1]
    model = build_model(load_config("sun2020-tiny"), vocab=vocab).eval()
    inputs = {
        "pixels": torch.randn(3, 3, 32, 32),
        "tokens": torch.tensor([[2, 3, 0], [4, 0, 0], [5, 6, 7]]),
    }
    vecs = model.encode_items(inputs)
    assert vecs.shape == (3, 64)
    items, mask = (
        vecs[torch.tensor([[0, 1, 2], [0, 1, 0]])],
        torch.tensor([[1, 1, 1], [1, 1, 0]]).bool(),
    )
    logits = model.compatibility_logits(items, mask)
    p01 = model.pair_scores(vecs[None])[0, 0, 1]
    assert torch.allclose(torch.sigmoid(logits[1]), p01, atol=1e-5)  # one pair: its own score
    assert model.query(items, mask).shape == (2, 64)
    with pytest.raises(ValueError, match="vocabulary"):
        build_model(load_config("sun2020-tiny"))


def test_optimizer_groups_use_tower_lr_and_skip_decay_on_tokens():
    cfg = load_config("sun2020-tiny", {"optim.tower_lr": 1e-5})
    model = build_model(cfg, vocab=WordVocab.build(["a b"]))
    groups = make_optimizer(cfg, model).param_groups
    assert {g["lr"] for g in groups} == {1e-5, cfg.optim.lr}
    hybrid = build_model(load_config("hybrid-tiny"))
    no_decay = [
        g for g in make_optimizer(hybrid.cfg, hybrid).param_groups if g["weight_decay"] == 0
    ]
    assert any(p is hybrid.outfit_token for g in no_decay for p in g["params"])


def test_fused_optimizer_steps_like_the_default_one():
    """make_optimizer's fused AdamW: same weights as PyTorch's default loop after some steps,
    and it resumes from a state saved by either."""
    cfg = load_config("hybrid-tiny")
    torch.manual_seed(0)
    fused_model, plain_model = build_model(cfg), build_model(cfg)
    plain_model.load_state_dict(fused_model.state_dict())
    fused = make_optimizer(cfg, fused_model)
    assert all(g["fused"] for g in fused.param_groups)
    plain = torch.optim.AdamW(_same_groups(fused, fused_model, plain_model))
    for _ in range(5):
        for a, b in zip(fused_model.parameters(), plain_model.parameters(), strict=True):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        fused.step()
        plain.step()
    for a, b in zip(fused_model.parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    resumed = make_optimizer(cfg, plain_model)
    resumed.load_state_dict(plain.state_dict())
    resumed.step()  # a checkpoint of the default loop opens in the fused one


def _same_groups(optimizer, model, other):
    """`optimizer`'s groups (lr, decay) over `other`'s parameters, without the fused flag."""
    index = {id(p): n for n, p in model.named_parameters()}
    params = dict(other.named_parameters())
    return [
        {
            "params": [params[index[id(p)]] for p in g["params"]],
            "lr": g["lr"],
            "weight_decay": g["weight_decay"],
        }
        for g in optimizer.param_groups
    ]


def test_task_sums_the_weighted_losses():
    cfg = load_config("hybrid-tiny", {"loss.retrieval_weight": 0.5})
    task = OutfitTask(build_model(cfg), cfg)
    compat = {
        "inputs": _features(4),
        "items": torch.tensor([[0, 1], [2, 3]]),
        "mask": torch.ones(2, 2, dtype=torch.bool),
        "label": torch.tensor([1.0, 0.0]),
    }
    retrieval = {
        "inputs": _features(5),
        "items": torch.tensor([[0, 1], [2, 0]]),
        "mask": torch.tensor([[True, True], [True, False]]),
        "target": torch.tensor([3, 4]),
        "negatives": torch.tensor([[1], [2]]),
        "target_category": torch.tensor([1, 2]),
        "target_text": {"text_feat": torch.randn(2, D), "words": _words(2)},
    }
    out = task({"compatibility": compat, "retrieval": retrieval})
    assert set(out) >= {"compatibility_loss", "retrieval_loss", "category_loss", "loss"}
    total = sum(float(v.detach()) for k, v in out.items() if k.endswith("_loss"))
    assert float(out["loss"].detach()) == pytest.approx(total)
    out["loss"].backward()


def test_missing_weights_say_what_to_pass(tmp_path):
    cfg = load_config("hybrid-tiny", {"clip.pretrained": str(tmp_path / "missing.bin")}).clip
    with pytest.raises(TowerWeightsError) as err:
        create_towers(cfg)
    message = str(err.value)
    assert "clip.pretrained=/path/to/open_clip_pytorch_model.bin" in message
    assert "clip.pretrained=null" in message
    bad = load_config("hybrid-tiny", {"clip.arch": "no-such-arch"}).clip
    with pytest.raises(TowerWeightsError, match="not an open_clip architecture"):
        create_towers(bad)


def test_tiny_towers_encode_and_check_the_width():
    towers = create_towers(load_config("hybrid-tiny").clip)
    assert towers.image_size == 64 and towers.embed_dim == 64
    feats = towers.encode_texts(["a photo of shoes", "red silk dress"])
    assert feats.shape == (2, 64)
    with pytest.raises(TowerWeightsError, match="clip.embed_dim=64"):
        create_towers(load_config("hybrid-tiny", {"clip.embed_dim": 32}).clip)


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's heap, RSS read from /proc")
def test_release_free_heap_gives_freed_memory_back():
    """What a training step's tensors free stays in glibc's heap until trimmed."""
    import numpy as np

    from outfitter.platform.train.loop import release_free_heap

    def rss_mib() -> float:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

    release_free_heap()
    before = rss_mib()
    first = np.ones(300_000 // 8)
    del first  # glibc now serves blocks of this size from its heap, not mmap
    blocks = [np.ones(300_000 // 8) for _ in range(1000)]  # ~290 MiB
    last = blocks[-1]  # one block in use at the top: the heap cannot just shrink
    del blocks
    held = rss_mib()
    release_free_heap()
    assert held - before > 200  # freed, still held
    assert rss_mib() - before < 50, f"{rss_mib() - before:.0f} MiB still held after the trim"
    assert last.sum() == len(last)


def test_an_epoch_gives_its_freed_heap_back_after_its_last_step(synth_dir, monkeypatch):
    """Trimmed every `TRIM_EVERY` steps and once more after the last: rank 0's validation and
    the other workers' wait for it start on a trimmed heap, not on the last steps' garbage."""
    import outfitter.platform.train.loop as loop
    from outfitter.platform.train.settings import TrainSettings

    cfg = load_config("hybrid-tiny")
    settings = TrainSettings(epochs=1, batch_size=8, max_steps_per_epoch=5).resolve(cfg)
    runner = loop.EpochRunner(cfg, settings, synth_dir, None, None, 0, 1, torch.device("cpu"))
    events = []
    build = type(runner.builder).__call__

    def built(self, *args, **kwargs):
        events.append("step")
        return build(self, *args, **kwargs)

    monkeypatch.setattr(type(runner.builder), "__call__", built)
    monkeypatch.setattr(loop, "release_free_heap", lambda: events.append("trim"))
    monkeypatch.setattr(loop, "TRIM_EVERY", 2)
    runner.train_epoch(0)
    assert events == ["trim", "step", "step", "trim", "step", "step", "trim", "step", "trim"]


def test_a_workers_validation_imports_no_scikit_learn(synth_dir):
    """Rank 0 validates every epoch without the keyword baselines, so without scikit-learn: its
    import held 75 MB in the worker through the rest of the run."""
    code = (
        "import sys, torch\n"
        "from outfitter.model import load_config\n"
        "from outfitter.platform.train.loop import EpochRunner\n"
        "from outfitter.platform.train.settings import TrainSettings\n"
        "cfg = load_config('hybrid-tiny')\n"
        "settings = TrainSettings(epochs=1, batch_size=8, max_steps_per_epoch=1).resolve(cfg)\n"
        "runner = EpochRunner(cfg, settings, sys.argv[1], None, None, 0, 1, torch.device('cpu'))\n"
        "assert 'valid_compatibility_auc' in runner.validate()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'scipy')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(synth_dir)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_rank_zero_validates_on_its_nodes_idle_cpus_then_trains_on_its_own(synth_dir, monkeypatch):
    """While rank 0 validates, the node's other workers wait at the report: validation takes
    their CPUs (`_node_cpus`) and the worker's own thread count comes back for training."""
    from types import SimpleNamespace

    import outfitter.model.evaluate_pairs as evaluate_pairs
    from outfitter.platform.train.loop import EpochRunner
    from outfitter.platform.train.settings import TrainSettings
    from outfitter.platform.train.trainer import _node_cpus

    cfg = load_config("hybrid-tiny")
    settings = TrainSettings(epochs=1, batch_size=8, max_steps_per_epoch=1).resolve(cfg)
    runner = EpochRunner(cfg, settings, synth_dir, None, None, 0, 1, torch.device("cpu"))
    seen = []
    evaluate_split = evaluate_pairs.evaluate_split

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return evaluate_split(*args, **kwargs)

    monkeypatch.setattr(evaluate_pairs, "evaluate_split", spy)
    own = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        metrics = runner.validate(threads=3)
        assert torch.get_num_threads() == 1 and "valid_compatibility_auc" in metrics
        runner.validate()
        assert seen == [3, 1]
    finally:
        torch.set_num_threads(own)
    on_node = SimpleNamespace(get_local_world_size=lambda: 4)
    assert _node_cpus(on_node, settings.with_overrides(cpus_per_worker=2)) == 8
    assert _node_cpus(on_node, settings.with_overrides(cpus_per_worker=0.5)) == 2
    assert _node_cpus(SimpleNamespace(get_local_world_size=lambda: 1), settings) == 1
