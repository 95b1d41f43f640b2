"""The `outfitter` command: one typer app over the data, model and platform layers.

Commands import their implementation lazily so that `outfitter --help` is instant and a command
that needs no Ray never starts one. Logging and MLflow set-up happen here, in entry points only.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    help="Outfitter: train, tune and serve outfit compatibility + complementary-item retrieval.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(help="Catalog data: synthesize, validate.", no_args_is_help=True)
index_app = typer.Typer(help="faiss catalog index of a model version.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(index_app, name="index")


def _fail(message: str) -> None:
    """Print a user-facing error and exit non-zero (no traceback)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


# ---------------------------------------------------------------- data


@data_app.command("synth")
def data_synth(
    out: Path = typer.Option(..., "--out", help="Folder to write the catalog to."),
    outfits: int = typer.Option(2000, "--outfits", help="Number of outfits (all splits)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; same seed, same files."),
    image_size: int = typer.Option(64, "--image-size", help="Rendered image side in pixels."),
    fmt: str = typer.Option("polyvore", "--format", help="polyvore or amazon."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a catalog in --out."),
) -> None:
    """Write a synthetic catalog in the Polyvore Outfits layout (or Amazon co-purchase format)."""
    import time

    from outfitter.data import DatasetError
    from outfitter.data.synth import synthesize

    start = time.perf_counter()
    try:
        synthesize(out, outfits, seed, image_size, fmt, progress=True, overwrite=overwrite)
    except (DatasetError, ValueError) as e:
        _fail(str(e))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    typer.echo(
        f"wrote {fmt} catalog ({outfits} outfits) to {out}: "
        f"{size / 2**20:.1f} MiB in {time.perf_counter() - start:.1f} s"
    )


@data_app.command("validate")
def data_validate(
    root: Path = typer.Argument(..., help="Dataset folder."),
    full: bool = typer.Option(False, "--full", help="Decode every image, not only a sample."),
    sample: int = typer.Option(2000, "--sample", help="Images to decode without --full."),
) -> None:
    """Check a dataset folder; exits non-zero when it is unusable."""
    from rich.progress import Progress

    from outfitter.data import validate_dataset

    with Progress(transient=True) as bar:

        def progress(description: str, total: int):
            task = bar.add_task(description, total=total)
            return lambda n: bar.advance(task, n)

        report = validate_dataset(root, full=full, sample=sample, progress=progress)
    typer.echo(report.format())
    if not report.ok:
        raise typer.Exit(code=1)


# ---------------------------------------------------------------- model


@app.command("models")
def models() -> None:
    """List the named model configs."""
    from outfitter.model import list_configs

    for name in list_configs():
        typer.echo(name)


@app.command("clip-pretrain")
def clip_pretrain(
    data: Path = typer.Option(..., "--data", help="Dataset folder (Polyvore layout)."),
    out: Path = typer.Option(..., "--out", help="Weights file to write (.safetensors)."),
    epochs: int = typer.Option(10, "--epochs", help="Passes over the train items."),
    arch: str = typer.Option("outfitter-tiny", "--arch", help="open_clip architecture."),
    embed_dim: int = typer.Option(64, "--embed-dim", help="The architecture's feature width."),
    pretrained: str = typer.Option(None, "--pretrained", help="Start from a tag or local file."),
    version: str = typer.Option("nondisjoint", "--version", help="Split whose train items train."),
    batch_size: int = typer.Option(128, "--batch-size"),
    lr: float = typer.Option(1e-3, "--lr"),
    max_steps: int = typer.Option(
        0, "--max-steps", help="Stop after this many steps (0 = --epochs full passes)."
    ),
    text_view_weight: float = typer.Option(
        1.0,
        "--text-view-weight",
        help="Weight of the text/text contrast of word-dropped views, which keeps the words no "
        "image shows (style, material) in the text features; 0 = the plain CLIP loss.",
    ),
) -> None:
    """Pre-train CLIP towers on the catalog's image/text pairs (use: clip.pretrained=OUT)."""
    from rich.progress import Progress

    from outfitter.data import DatasetError, load_catalog
    from outfitter.model.clip_pretrain import catalog_split_ids, pretrain
    from outfitter.model.config import ClipCfg
    from outfitter.model.towers import TowerWeightsError

    if out.suffix != ".safetensors":
        _fail(f"--out {out}: the weights are written as safetensors; name it *.safetensors")
    try:
        cfg = ClipCfg.from_dict({"arch": arch, "pretrained": pretrained, "embed_dim": embed_dim})
        catalog = load_catalog(data)
        train_ids, held = catalog_split_ids(data, version, catalog)
        with Progress() as bar:
            task = bar.add_task("clip-pretrain", total=None)

            def report(step: int, total: int, info: dict) -> None:
                bar.update(task, completed=step, total=total,
                           description=f"clip-pretrain loss {info['loss']:.3f}")  # fmt: skip

            result = pretrain(catalog, cfg, out, epochs, train_ids=train_ids, heldout_ids=held,
                              batch_size=batch_size, lr=lr, text_view_weight=text_view_weight,
                              max_steps=max_steps, progress=report)  # fmt: skip
    except (DatasetError, TowerWeightsError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    before = result["before"]
    typer.echo(
        f"held-out items: {result['n_heldout']}, recall@1 image->text "
        f"{result['image_to_text_r1']:.3f} (before {before['image_to_text_r1']:.3f}), "
        f"text->image {result['text_to_image_r1']:.3f} (before {before['text_to_image_r1']:.3f}), "
        f"chance {result['chance_r1']:.4f}"
    )
    typer.echo(f"wrote {out} ({result['seconds']:.0f} s); use it with clip.pretrained={out}")


# ---------------------------------------------------------------- platform


def _parse_overrides(pairs: list[str] | None) -> dict:
    """`--set transformer.layers=1` pairs → {"transformer.layers": "1"} (typed by the config)."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            _fail(f"--set takes KEY=VALUE (e.g. transformer.layers=1), got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def _check_towers(model_config: str, overrides: dict, data: Path, allow: bool) -> None:
    """Refuse (or, with `--allow-random-towers`, warn about) frozen towers never trained:
    `outfitter train` and `outfitter tune` both call it before Ray or MLflow start."""
    from outfitter.model import load_config
    from outfitter.model.config import untrained_frozen_towers

    cfg = load_config(model_config, overrides=overrides or None)
    untrained = untrained_frozen_towers(cfg)
    if not untrained:
        return
    problem = (
        f"model config {cfg.name!r} reads frozen CLIP {' and '.join(untrained)} tower(s) that were "
        f"never trained: clip.pretrained is unset, so they keep their random initialisation and "
        f"the model learns from random projections of the pixels and tokens, not CLIP features."
    )
    if allow:
        typer.secho(
            f"WARNING: {problem} Training anyway (--allow-random-towers): "
            "its metrics say nothing about the architecture.",
            fg=typer.colors.YELLOW,
            bold=True,
            err=True,
        )
        return
    _fail(
        f"{problem} Either pre-train the towers on your catalog, "
        f"`outfitter clip-pretrain --data {data} --out towers.safetensors "
        f"--arch {cfg.clip.arch} --embed-dim {cfg.clip.embed_dim}`, then pass "
        f"`--set clip.pretrained=towers.safetensors`; or load trained weights, "
        f"`--set clip.pretrained=FILE` (an open_clip tag or weights file). "
        f"To train on random towers anyway (tests, smoke runs), pass --allow-random-towers."
    )


def _user_errors():
    """Exceptions that are the user's to fix: printed as one line, never as a traceback."""
    from outfitter.data import DatasetError
    from outfitter.model import ConfigError
    from outfitter.platform.registry import RegistryError

    return (
        DatasetError,
        ConfigError,
        RegistryError,
        ValueError,
        FileNotFoundError,
        PermissionError,
    )


@app.command("embed")
def embed(
    data: Path = typer.Option(..., "--data", help="Dataset folder (Polyvore layout)."),
    model_config: str = typer.Option(
        "hybrid-tiny", "--model-config", help="Config name or YAML path."
    ),
    out: Path | None = typer.Option(None, "--out", help="Also copy the features here."),
    set_: list[str] = typer.Option(None, "--set", help="Model config override KEY=VALUE."),
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir", help="Feature cache (default ~/.cache/outfitter)."
    ),
    force: bool = typer.Option(False, "--force", help="Recompute even when cached."),
) -> None:
    """Embed every catalog item with the frozen CLIP towers on Ray Data (cached by content)."""
    import shutil
    import time

    from outfitter.data import load_catalog
    from outfitter.model import load_config
    from outfitter.platform.embed import embed_catalog

    try:
        cfg = load_config(model_config, overrides=_parse_overrides(set_) or None)
        catalog = load_catalog(data)
        t0 = time.perf_counter()
        table, folder, reused = embed_catalog(catalog, cfg.clip, cache_dir=cache_dir, force=force)
    except _user_errors() as err:
        _fail(str(err))
    seconds = time.perf_counter() - t0
    state = "reused cache" if reused else f"{len(table) / max(seconds, 1e-9):.0f} items/s"
    typer.echo(f"{len(table)} items embedded ({state}) -> {folder}")
    if out is not None:
        shutil.copytree(folder, out, dirs_exist_ok=True)
        typer.echo(f"copied to {out}")


@app.command("train")
def train(
    model_config: str = typer.Option(
        "hybrid-tiny", "--model-config", help="Config name or YAML path."
    ),
    data: Path = typer.Option(
        ..., "--data", help="Dataset folder (Polyvore layout or Amazon co-purchase metadata)."
    ),
    workers: int = typer.Option(1, "--workers", help="Ray Train workers (DDP processes)."),
    gpu: bool = typer.Option(False, "--gpu", help="One GPU per worker, bf16 autocast."),
    epochs: int | None = typer.Option(None, "--epochs", help="Max epochs (default: the config's)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Outfits per worker step."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate."),
    version: str = typer.Option("nondisjoint", "--version", help="nondisjoint or disjoint."),
    set_: list[str] = typer.Option(None, "--set", help="Model config override KEY=VALUE."),
    workdir: Path = typer.Option(
        Path("outfitter-work"), "--workdir", help="MLflow store + Ray results."
    ),
    storage_path: str | None = typer.Option(
        None, "--storage-path", help="Ray storage (folder or URI)."
    ),
    run_name: str | None = typer.Option(None, "--run-name", help="Stable name; re-run to resume."),
    metrics_out: Path | None = typer.Option(
        None, "--metrics-out", help="Write valid/test metrics JSON."
    ),
    model_name: str = typer.Option("outfitter", "--model-name", help="Registered model name."),
    promote_if_better: bool = typer.Option(
        False, "--promote-if-better", help="Index + promote to champion if better."
    ),
    max_steps: int = typer.Option(
        0, "--max-steps-per-epoch", help="Cap steps per epoch (0 = full)."
    ),
    patience: int | None = typer.Option(
        None, "--patience", help="Early stopping: epochs without a better valid AUC (0 = off)."
    ),
    data_format: str = typer.Option(
        "auto", "--format", help="Dataset format: auto (detected from the files), polyvore, amazon."
    ),
    allow_random_towers: bool = typer.Option(
        False,
        "--allow-random-towers",
        help="Train even though frozen CLIP towers were never trained (random init): tests only.",
    ),
) -> None:
    """Train on Ray Train, evaluate, log to MLflow and register a version (alias challenger)."""
    import json

    from outfitter.platform.train.runs import train_and_register
    from outfitter.platform.train.settings import TrainSettings

    try:
        overrides = _parse_overrides(set_)
        settings = TrainSettings().with_overrides(
            workers=workers,
            use_gpu=gpu,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            version=version,
            max_steps_per_epoch=max_steps,
            patience=patience,
            storage_path=storage_path or str(workdir / "ray_results"),
            run_name=run_name or f"{Path(model_config).stem}-{version}",
        )
        _check_towers(model_config, overrides, data, allow_random_towers)
        outcome = train_and_register(
            model_config,
            data,
            settings,
            workdir=workdir,
            overrides=overrides,
            model_name=model_name,
            promote_if_better=promote_if_better,
            data_format=data_format,
        )
    except _user_errors() as err:
        _fail(str(err))
    result = {
        "model_version": outcome.model_version,
        "model_name": outcome.model_name,
        "run_id": outcome.run_id,
        "valid": outcome.valid,
        "test": outcome.test,
    }
    typer.echo(json.dumps(result, indent=2))
    if metrics_out:
        metrics_out.parent.mkdir(parents=True, exist_ok=True)
        metrics_out.write_text(json.dumps(result, indent=2))


@app.command("evaluate")
def evaluate(
    model: str = typer.Option(
        ..., "--model", help="models:/outfitter@champion, models:/NAME/V or a folder."
    ),
    data: Path = typer.Option(..., "--data", help="Dataset folder."),
    split: str = typer.Option("test", "--split", help="valid or test."),
    version: str | None = typer.Option(
        None, "--version", help="nondisjoint/disjoint (default: trained one)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Write the metrics JSON here."),
    workdir: Path = typer.Option(
        Path("outfitter-work"), "--workdir", help="Where the local MLflow store is."
    ),
    data_format: str = typer.Option(
        "auto", "--format", help="Dataset format: auto (detected from the files), polyvore, amazon."
    ),
) -> None:
    """Compatibility AUC, FITB accuracy and recall@10 of a model version; logged to its run.

    On an Amazon co-purchase folder: pair AUC, hit@1/5/10 and MRR among same-category candidates.
    """
    import json

    from outfitter.platform.evaluation import evaluate_model

    try:
        result = evaluate_model(
            model, data, split, version=version, workdir=workdir, data_format=data_format
        )
    except _user_errors() as err:
        _fail(str(err))
    text = json.dumps(result, indent=2)
    typer.echo(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)


@app.command("promote")
def promote(
    version: str = typer.Option(..., "--version", help="Model version to promote."),
    model_name: str = typer.Option("outfitter", "--model-name", help="Registered model name."),
    if_better: bool = typer.Option(False, "--if-better", help="Only if it beats the champion."),
    metric: str = typer.Option("best_valid_compatibility_auc", "--metric", help="Metric compared."),
    workdir: Path = typer.Option(
        Path("outfitter-work"), "--workdir", help="Where the local MLflow store is."
    ),
) -> None:
    """Point alias `champion` at a version (which must have its faiss index)."""
    from outfitter.platform import registry

    try:
        registry.configure_tracking(workdir)
        if if_better:
            moved = registry.promote_if_better(model_name, version, metric)
        else:
            registry.promote(model_name, version)
            moved = True
    except _user_errors() as err:
        _fail(str(err))
    typer.echo(
        f"champion -> {model_name}/{version}"
        if moved
        else f"kept the champion: version {version} is not better on {metric}"
    )


@app.command("tune")
def tune(
    config: Path = typer.Option(..., "--config", help="Search YAML (see tune_configs/)."),
    data: Path = typer.Option(..., "--data", help="Dataset folder."),
    workdir: Path = typer.Option(
        Path("outfitter-work"), "--workdir", help="MLflow store + Ray results."
    ),
    storage_path: str | None = typer.Option(
        None, "--storage-path", help="Ray storage (folder or URI)."
    ),
    model_name: str = typer.Option("outfitter", "--model-name", help="Registered model name."),
    data_format: str = typer.Option(
        "auto", "--format", help="Dataset format: auto (detected from the files), polyvore, amazon."
    ),
    set_: list[str] = typer.Option(
        None, "--set", help="Model config override KEY=VALUE for every trial."
    ),
    allow_random_towers: bool = typer.Option(
        False,
        "--allow-random-towers",
        help="Search even though frozen CLIP towers were never trained (random init): tests only.",
    ),
) -> None:
    """Run (or resume) a Ray Tune search; registers the best trial as `challenger`."""
    from outfitter.platform.tune.config import TuneConfigError, load_search_config
    from outfitter.platform.tune.driver import run_search

    try:
        search = load_search_config(config)
        overrides = _parse_overrides(set_)
        _check_towers(search.model_config_name, overrides, data, allow_random_towers)
        outcome = run_search(
            search,
            data,
            workdir=workdir,
            model_name=model_name,
            storage_path=storage_path or str(workdir / "ray_results"),
            data_format=data_format,
            overrides=overrides,
        )
    except (TuneConfigError, *_user_errors()) as err:
        _fail(str(err))
    typer.echo(
        f"{outcome.trials} trials ({outcome.stopped_early} stopped early by the scheduler); best "
        f"{search.metric}={outcome.best_metric:.4f} with {outcome.best_params}; "
        f"registered version {outcome.model_version}; table {outcome.table_path}"
    )


# ---------------------------------------------------------------- index + serve


@index_app.command("build")
def index_build(
    model: str = typer.Option(..., "--model", help="models:/NAME@ALIAS, models:/NAME/V, folder."),
    data: Path = typer.Option(..., "--data", help="Dataset folder (the catalog to index)."),
    out: Path | None = typer.Option(
        None, "--out", help="Index folder (default: CHECKPOINT/index, or a temp one for a version)."
    ),
    kind: str = typer.Option("auto", "--kind", help="auto, flat, ivf or hnsw."),
    exact_below: int | None = typer.Option(
        None, "--exact-below", help="auto: exact below this many items per category (20000)."
    ),
    target_recall: float | None = typer.Option(
        None, "--target-recall", help="recall@10 approximate shards are calibrated to (0.95)."
    ),
    workdir: Path = typer.Option(
        Path("outfitter-work"), "--workdir", help="Where the local MLflow store is."
    ),
    data_format: str = typer.Option(
        "auto", "--format", help="Dataset format: auto (detected from the files), polyvore, amazon."
    ),
) -> None:
    """Build the faiss catalog index of a model version and log it to that version."""
    import contextlib

    from outfitter.data import detect_format
    from outfitter.platform import registry
    from outfitter.platform.index import IndexConfig, build_index_for_model

    try:
        detected = detect_format(data)  # the index reads the catalog as detected
        if detect_format(data, data_format) != detected:
            _fail(f"--format {data_format}: {data} is a {detected} folder")
        if "://" in model or model.startswith(("models:/", "runs:/")):
            registry.configure_tracking(workdir)
        resolved = registry.resolve_model(model)
        given = {"exact_below": exact_below, "target_recall": target_recall}
        config = IndexConfig(kind=kind, **{k: v for k, v in given.items() if v is not None})
        if out is None and resolved.version is None:
            out = Path(resolved.checkpoint_dir) / "index"  # where serving a folder looks
        with contextlib.ExitStack() as stack:  # a temporary folder only lives until it is logged
            tmp = None if out else stack.enter_context(registry.staging_dir(0, prefix="index-"))
            folder = out or Path(tmp, "index")
            index = build_index_for_model(resolved, data, folder, config=config)
            if resolved.version is not None:
                registry.log_index(resolved.name, resolved.version, folder)
    except _user_errors() as err:
        _fail(str(err))
    shards = ", ".join(f"{c}: {k}" for c, k in index.shard_kinds().items())
    target = f"logged to {resolved.label}" if resolved.version else f"saved to {folder}"
    typer.echo(f"indexed {len(index)} items ({index.dim}-d; {shards}); {target}")


@app.command("serve")
def serve(
    config: Path = typer.Option(
        Path("serve_configs/local.yaml"), "--config", help="Serve config YAML (as for `serve run`)."
    ),
    address: str | None = typer.Option(
        None, "--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)."
    ),
    blocking: bool = typer.Option(
        True, "--blocking/--detach", help="Stay up until Ctrl-C, or return (needs a cluster)."
    ),
    pin: bool = typer.Option(
        True, "--pin/--no-pin", help="Pin the model version an alias names (re-run to hot-swap)."
    ),
) -> None:
    """Deploy the Ray Serve applications of a config file and print their URL."""
    import os
    import time

    import ray

    from outfitter.platform.local_ray import ensure_ray
    from outfitter.platform.serve import launch

    try:
        prepared = launch.prepare_config(launch.load_serve_config(config), pin=pin)
        address = address or os.environ.get("RAY_ADDRESS")
        if not blocking and not address:
            _fail("--detach needs a running Ray cluster (`ray start --head`, then --address auto)")
        if not ray.is_initialized():
            launch.apply_serve_env()  # HAProxy ingress, where this starts the Ray instance
            ensure_ray(address, namespace="serve", log_to_driver=True)
        names = launch.deploy(prepared)
    except (launch.ServeConfigError, RuntimeError, TimeoutError, *_user_errors()) as err:
        _fail(str(err))
    typer.echo(f"serving {', '.join(names)} at {launch.url_of(prepared)} (OpenAPI at /docs)")
    if not blocking:
        return
    _stop_on_signals()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve as ray_serve

        typer.echo("shutting down Serve")
        ray_serve.shutdown()


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM (a service manager's stop) both shut Serve down gracefully: SIGTERM
    otherwise ended the process without it, and a command started in the background (which
    inherits SIGINT ignored) could not be stopped with SIGINT at all. The fallback, SIGKILL,
    leaves Ray's HAProxy running and holding its ports, so the next `outfitter serve` fails."""
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)


@app.command("demo")
def demo(
    workdir: Path = typer.Option(
        Path("outfitter-work"), "--workdir", help="Where everything lands."
    ),
    quick: bool = typer.Option(False, "--quick", help="A shortened run (tests)."),
    keep_serving: bool = typer.Option(False, "--keep-serving", help="Leave the endpoints up."),
    port: int = typer.Option(8000, "--port", help="HTTP port of Ray Serve (127.0.0.1)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic catalog and training."),
) -> None:
    """The whole pipeline on the embedded synthetic catalog, with a summary at the end."""
    import json

    from outfitter.platform.demo import run_demo

    try:
        summary = run_demo(workdir, quick=quick, keep_serving=keep_serving, port=port, seed=seed)
    except _user_errors() as err:
        _fail(str(err))
    (Path(summary["workdir"]) / "demo_summary.json").write_text(
        json.dumps({k: v for k, v in summary.items() if k != "responses"}, indent=2, default=str)
    )


if __name__ == "__main__":
    app()
