"""`outfitter demo`: the whole platform on the embedded synthetic catalog, stage by stage.

synthetic catalog → CLIP pre-training of the tiny towers → Ray Data embedding → Ray Train
(2 workers) → evaluation → registry (champion) → faiss index → Ray Serve → real HTTP requests →
`demo_results.png`. Every stage is timed; the summary says where to look next.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of a demo run: the full default, or `--quick` for tests."""

    outfits: int = 2000  # synthetic outfits (all splits)
    image_size: int = 64  # rendered image side
    clip_epochs: int = 6  # CLIP pre-training passes over the train items
    train_epochs: int = 30  # Ray Train epochs (early stopping may end sooner)
    batch_size: int = 32  # outfits per worker step (2 workers: 64 per optimiser step)
    patience: int = 5  # epochs without a better valid AUC before stopping
    max_steps_per_epoch: int = 0  # 0 = full passes
    workers: int = 2  # Ray Train workers

    @classmethod
    def quick(cls) -> DemoConfig:
        return cls(
            outfits=300,
            image_size=32,
            clip_epochs=1,
            train_epochs=2,
            batch_size=16,
            max_steps_per_epoch=6,
            patience=0,
        )


@dataclass
class Stages:
    """Wall time per stage, printed at the end."""

    seconds: dict = field(default_factory=dict)
    console: Console = field(default_factory=Console)

    def run(self, name: str, fn, *args, **kwargs):
        self.console.rule(f"[bold]{name}")
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.seconds[name] = time.perf_counter() - t0
        self.console.print(f"[green]✓[/] {name} ({self.seconds[name]:.1f} s)")
        return out


def run_demo(
    workdir: Path,
    *,
    quick: bool = False,
    keep_serving: bool = False,
    port: int = 8000,
    seed: int = 0,
) -> dict:
    """Run every stage; returns a summary dict (metrics, responses, timings, paths)."""
    import os

    import ray

    cfg = DemoConfig.quick() if quick else DemoConfig()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OUTFITTER_CACHE_DIR", str(workdir / "cache"))
    stages = Stages()
    console = stages.console
    data = stages.run("1. synthetic catalog", _synth, workdir / "data", cfg, seed)
    towers, clip_result = stages.run(
        "2. CLIP pre-training (tiny towers)",
        _clip_pretrain,
        data,
        workdir / "clip" / "towers.safetensors",
        cfg,
    )
    console.print(
        f"held-out recall@1 image→text {clip_result['image_to_text_r1']:.3f}, "
        f"text→image {clip_result['text_to_image_r1']:.3f} "
        f"(chance {clip_result['chance_r1']:.4f})"
    )
    if not ray.is_initialized():
        ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False)
    overrides = {"clip.pretrained": str(towers)}
    embedded = stages.run("3. Ray Data embedding", _embed, data, overrides)
    console.print(f"{embedded} items embedded")
    outcome = stages.run(
        "4. Ray Train (2 workers) + MLflow", _train, data, workdir, overrides, cfg, seed
    )
    test = outcome.test
    console.print(
        f"registered outfitter/{outcome.model_version} (challenger); test AUC "
        f"{test['compatibility_auc']:.3f}, FITB {test['fitb_accuracy']:.3f}"
    )
    evaluated = stages.run(
        "5. evaluation (registry → test split)", _evaluate, outcome, data, workdir
    )
    stages.run("6. faiss index + promotion to champion", _index_and_promote, outcome, data)
    url = stages.run("7. Ray Serve", _serve, workdir, data, port)
    responses = stages.run("8. HTTP requests", _requests, url, data)
    for name, text in responses["printed"]:
        console.print(f"[bold cyan]{name}[/]\n{text}")
    picture = stages.run("9. picture", _picture, data, responses, workdir / "demo_results.png")
    summary = {
        "workdir": str(workdir),
        "model_version": outcome.model_version,
        "valid": outcome.valid,
        "test": evaluated,
        "clip": clip_result,
        "stages_s": stages.seconds,
        "url": url,
        "picture": str(picture),
        "responses": responses["raw"],
    }
    _print_summary(console, summary, workdir)
    if keep_serving:
        _block(console, url)
    else:
        from ray import serve

        serve.shutdown()
    return summary


def _synth(out: Path, cfg: DemoConfig, seed: int) -> Path:
    from outfitter.data.synth import synthesize

    if (out / "polyvore_item_metadata.json").exists():
        return out  # re-run in the same workdir: keep the catalog (and the caches keyed on it)
    synthesize(out, n_outfits=cfg.outfits, seed=seed, image_size=cfg.image_size, progress=True)
    return out


def _clip_pretrain(data: Path, out: Path, cfg: DemoConfig):
    from rich.progress import Progress

    from outfitter.data import load_catalog
    from outfitter.model import load_config
    from outfitter.model.clip_pretrain import catalog_split_ids, pretrain

    catalog = load_catalog(data)
    train_ids, held = catalog_split_ids(data, "nondisjoint", catalog)
    clip_cfg = load_config("hybrid-tiny").clip
    out.parent.mkdir(parents=True, exist_ok=True)
    with Progress(transient=True) as bar:
        task = bar.add_task("clip-pretrain", total=None)

        def report(step, total, info):
            bar.update(
                task,
                completed=step,
                total=total,
                description=f"clip-pretrain loss {info['loss']:.3f}",
            )

        result = pretrain(
            catalog,
            clip_cfg,
            out,
            cfg.clip_epochs,
            train_ids=train_ids,
            heldout_ids=held,
            progress=report,
        )
    return out, result


def _embed(data: Path, overrides: dict) -> int:
    from outfitter.data import load_catalog
    from outfitter.model import load_config
    from outfitter.platform.embed import embed_catalog

    clip_cfg = load_config("hybrid-tiny", overrides=overrides).clip
    table, _, _ = embed_catalog(load_catalog(data), clip_cfg)
    return len(table)


def _train(data: Path, workdir: Path, overrides: dict, cfg: DemoConfig, seed: int):
    from outfitter.platform.runs import train_and_register
    from outfitter.platform.settings import TrainSettings

    settings = TrainSettings().with_overrides(
        workers=cfg.workers,
        epochs=cfg.train_epochs,
        batch_size=cfg.batch_size,
        seed=seed,
        max_steps_per_epoch=cfg.max_steps_per_epoch,
        storage_path=str(workdir / "ray_results"),
        run_name=f"demo-{time.strftime('%Y%m%d-%H%M%S')}",
        patience=cfg.patience,
    )
    return train_and_register("hybrid-tiny", data, settings, workdir=workdir, overrides=overrides)


def _evaluate(outcome, data: Path, workdir: Path) -> dict:
    from outfitter.platform.evaluation import evaluate_model

    uri = f"models:/{outcome.model_name}/{outcome.model_version}"
    return evaluate_model(uri, data, "test", workdir=workdir)


def _index_and_promote(outcome, data: Path) -> None:
    import tempfile

    from outfitter.platform import registry
    from outfitter.platform.index import build_index_for_model

    resolved = registry.resolve_model(f"models:/{outcome.model_name}/{outcome.model_version}")
    with tempfile.TemporaryDirectory() as tmp:
        build_index_for_model(resolved, data, Path(tmp) / "index")
        registry.log_index(outcome.model_name, outcome.model_version, Path(tmp) / "index")
    registry.promote(outcome.model_name, outcome.model_version)


def _serve(workdir: Path, data: Path, port: int) -> str:
    import yaml

    from outfitter.platform.serving import launch

    config = yaml.safe_load((REPO_ROOT / "serve_configs" / "local.yaml").read_text())
    config["http_options"]["port"] = port
    args = config["applications"][0]["args"]
    args.update(data_dir=str(data), tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    prepared = launch.prepare_config(config, base=workdir)
    launch.deploy(prepared)
    return launch.url_of(prepared)


def _requests(url: str, data: Path) -> dict:
    """A few real requests to every endpoint, built from a test-split FITB question."""
    import base64
    import json

    import httpx

    from outfitter.data import load_catalog, load_split

    catalog = load_catalog(data)
    test = load_split(data, "nondisjoint", "test", catalog)
    q = next(q for q in test.fitb if len(q.question) >= 2)
    right, wrong = q.answers[q.correct], q.answers[(q.correct + 1) % len(q.answers)]
    item = catalog.items[right]
    ref = lambda ids: [{"item_id": i} for i in ids]  # noqa: E731
    image_b64 = base64.b64encode(catalog.image_path(right).read_bytes()).decode()
    calls = [
        ("GET /healthz", "get", "/healthz", None),
        ("GET /v1/model", "get", "/v1/model", None),
        ("GET /v1/items?category=shoes&limit=3", "get", "/v1/items?category=shoes&limit=3", None),
        (
            "POST /v1/compatibility (a test outfit)",
            "post",
            "/v1/compatibility",
            {"items": ref([*q.question, right])},
        ),
        (
            "POST /v1/compatibility (one item swapped for a clash)",
            "post",
            "/v1/compatibility",
            {"items": ref([*q.question, wrong])},
        ),
        (
            f'POST /v1/retrieve ("{item.title}")',
            "post",
            "/v1/retrieve",
            {
                "items": ref(q.question),
                "target": {"description": item.title, "category": item.category},
                "k": 5,
            },
        ),
        (
            "POST /v1/complete (two blanks)",
            "post",
            "/v1/complete",
            {
                "items": ref(q.question[:1]),
                "k": 3,
                "targets": [
                    {"description": item.title},
                    {"description": catalog.items[q.question[1]].title},
                ],
            },
        ),
        (
            "POST /v1/compatibility (a new item, not in the catalog)",
            "post",
            "/v1/compatibility",
            {
                "items": [
                    *ref(q.question),
                    {"title": item.title, "description": item.description, "image_b64": image_b64},
                ]
            },
        ),
    ]
    raw, printed = {}, []
    with httpx.Client(base_url=url, timeout=120) as client:
        for name, method, path, body in calls:
            response = client.request(method.upper(), path, json=body)
            if response.status_code != 200:
                raise RuntimeError(f"{name} answered {response.status_code}: {response.text[:300]}")
            raw[name] = response.json()
            printed.append((name, _compact(json.dumps(raw[name], indent=1))))
        image = client.get(f"/v1/items/{right}/image")
        printed.append(
            (
                f"GET /v1/items/{right}/image",
                f"{image.status_code} {image.headers.get('content-type')} "
                f"{len(image.content)} bytes",
            )
        )
    return {"raw": raw, "printed": printed, "question": q, "right": right, "wrong": wrong}


def _compact(text: str, limit: int = 900) -> str:
    return text if len(text) <= limit else text[:limit] + " …"


def _picture(data: Path, responses: dict, out: Path) -> Path:
    """The outfit with its score, the clash, and the retrieved items for the described piece."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from outfitter.data import load_catalog
    from outfitter.data.images import load_image

    catalog = load_catalog(data)
    q, right, wrong = responses["question"], responses["right"], responses["wrong"]
    raw = list(responses["raw"].values())
    good, clash, retrieved = raw[3], raw[4], raw[5]["items"]
    rows = [
        ([*q.question, right], f"outfit: score {good['score']:.2f}", {right: "green"}),
        ([*q.question, wrong], f"clash swapped in: score {clash['score']:.2f}", {wrong: "red"}),
        (
            [r["item_id"] for r in retrieved],
            f'retrieved for "{catalog.items[right].title}"',
            {right: "green"},
        ),
    ]
    cols = max(len(ids) for ids, _, _ in rows)
    fig, axes = plt.subplots(3, cols, figsize=(1.6 * cols, 6.2))
    for r, (ids, title, boxes) in enumerate(rows):
        axes[r][0].set_title(title, loc="left", fontsize=10, x=0)
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(ids):
                ax.axis("off")
                continue
            ax.imshow(load_image(catalog.image_path(ids[c]), 96))
            label = catalog.items[ids[c]].title[:22]
            if r == 2:
                label = f"{retrieved[c]['score']:.2f} {label}"
            ax.set_xlabel(label, fontsize=6)
            for spine in ax.spines.values():
                spine.set_edgecolor(boxes.get(ids[c], "lightgrey"))
                spine.set_linewidth(3 if ids[c] in boxes else 1)
    fig.suptitle("Outfitter demo (green: the true item; red: the clash)", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _print_summary(console: Console, summary: dict, workdir: Path) -> None:
    table = Table(title="Outfitter demo")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for name, seconds in summary["stages_s"].items():
        table.add_row(name, f"{seconds:.1f}")
    table.add_row("[bold]total", f"[bold]{sum(summary['stages_s'].values()):.1f}")
    console.print(table)
    test = summary["test"]
    console.print(
        f"model outfitter/{summary['model_version']} (champion): test compatibility AUC "
        f"{test['compatibility_auc']:.3f}, FITB {test['fitb_accuracy']:.3f} (query) / "
        f"{test['fitb_accuracy_compat']:.3f} (scores), recall@10 {test['recall_at_10']:.3f}"
    )
    console.print(f"picture: {summary['picture']}")
    console.print(f"MLflow UI: mlflow ui --backend-store-uri sqlite:///{workdir / 'mlflow.db'}")
    console.print(
        "Ray dashboard: start Ray with `ray start --head --include-dashboard=true` and "
        "pass RAY_ADDRESS=auto; it listens on http://127.0.0.1:8265"
    )
    console.print(
        f"API docs: {summary['url']}/docs (with --keep-serving); Outfit Studio: {summary['url']}/"
    )


def _block(console: Console, url: str) -> None:
    from ray import serve

    console.print(f"[bold]serving at {url} — Ctrl-C to stop")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
