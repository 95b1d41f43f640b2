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
    outfits: int = typer.Option(600, "--outfits", help="Number of outfits (all splits)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; same seed, same files."),
    image_size: int = typer.Option(64, "--image-size", help="Rendered image side in pixels."),
    fmt: str = typer.Option("polyvore", "--format", help="polyvore or amazon."),
) -> None:
    """Write a synthetic catalog in the Polyvore Outfits layout (or Amazon co-purchase format)."""
    raise NotImplementedError  # implemented by the data layer


@data_app.command("validate")
def data_validate(root: Path = typer.Argument(..., help="Dataset folder.")) -> None:
    """Check a dataset folder; exits non-zero when it is unusable."""
    raise NotImplementedError  # implemented by the data layer


# ---------------------------------------------------------------- model


@app.command("models")
def models() -> None:
    """List the named model configs."""
    from outfitter.model import list_configs

    for name in list_configs():
        typer.echo(name)


if __name__ == "__main__":
    app()
