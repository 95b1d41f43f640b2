"""MLflow tracking and model registry: where runs are logged and what Serve loads.

A model version is an MLflow pyfunc logged from code (`mlflow_pyfunc.py`) whose artifact
`checkpoint/` is the self-describing checkpoint folder. Its faiss index is logged later to the
same run (`index-v<version>/`) and recorded on the version as tag `outfitter.index`, so the served
model and its index always travel together. `champion` only ever moves to a version that has one.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from outfitter.platform.redact import redact_uri

DEFAULT_MODEL_NAME = "outfitter"
INDEX_TAG = "outfitter.index"
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")


class RegistryError(RuntimeError):
    """A model URI that cannot be resolved, with what to do about it."""


@dataclass
class ResolvedModel:
    """A model version resolved to local files."""

    checkpoint_dir: Path
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    metrics: dict = field(default_factory=dict)
    index_dir: Path | None = None

    @property
    def label(self) -> str:
        if self.version is None:
            return str(self.checkpoint_dir)
        return f"{self.name}/{self.version}" + (f"@{self.alias}" if self.alias else "")


def configure_tracking(workdir: Path | str | None = None) -> str:
    """Point MLflow at `MLFLOW_TRACKING_URI`, else at a sqlite store under `workdir`.

    Artifacts of the sqlite store go to `<workdir>/mlartifacts` (set on experiment creation).
    """
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        workdir = Path(workdir or "outfitter-work").resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{workdir / 'mlflow.db'}"
        os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def ensure_experiment(name: str, workdir: Path | str | None = None) -> str:
    """Create (or reuse) an experiment whose artifacts live beside a local sqlite store."""
    import mlflow

    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def log_checkpoint_model(checkpoint_dir: Path, *, name: str = "model", data_dir: str | None = None):
    """Log a checkpoint folder as a pyfunc model of the active run; returns MLflow's ModelInfo."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    example = pd.DataFrame({"item_ids": [["item-a", "item-b", "item-c"]]})
    signature = infer_signature(example, [0.5])
    with tempfile.TemporaryDirectory() as tmp:
        # The model needs the checkpoint's model files only (not the optimiser state), under a
        # fixed folder name: MLflow keeps the source folder's name inside `artifacts/`.
        staged = Path(tmp) / "checkpoint"
        shutil.copytree(checkpoint_dir, staged, ignore=shutil.ignore_patterns("training_state.pt"))
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(__file__).with_name("mlflow_pyfunc.py")),
            artifacts={"checkpoint": str(staged)},
            signature=signature,
            model_config={"data_dir": data_dir} if data_dir else None,
            pip_requirements=_pinned_requirements(),
        )


def _pinned_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for dist in (
        "torch",
        "open-clip-torch",
        "safetensors",
        "numpy",
        "pillow",
        "mlflow",
        "outfitter",
    ):
        try:
            reqs.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            continue
    return reqs


def register_model(
    model_uri: str,
    *,
    name: str = DEFAULT_MODEL_NAME,
    alias: str = "challenger",
    tags: dict | None = None,
) -> str:
    """Register a logged model as a new version of `name` and point `alias` at it."""
    import mlflow

    mv = mlflow.register_model(model_uri, name, tags=tags or None)
    _client().set_registered_model_alias(name, alias, mv.version)
    return str(mv.version)


def set_alias(name: str, alias: str, version: str | int) -> None:
    _client().set_registered_model_alias(name, alias, str(version))


def version_by_alias(name: str, alias: str):
    """The ModelVersion an alias points at, or None when the alias is unset."""
    from mlflow.exceptions import MlflowException

    try:
        return _client().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def version_metrics(version) -> dict:
    """The metrics of the run that produced a model version."""
    if not version.run_id:
        return {}
    return dict(_client().get_run(version.run_id).data.metrics)


def log_index(name: str, version: str | int, index_dir: Path) -> str:
    """Log a built faiss index folder to the version's run and record it on the version."""
    client = _client()
    mv = client.get_model_version(name, str(version))
    artifact_path = f"index-v{mv.version}"
    client.log_artifacts(mv.run_id, str(index_dir), artifact_path=artifact_path)
    client.set_model_version_tag(name, mv.version, INDEX_TAG, f"runs:/{mv.run_id}/{artifact_path}")
    return artifact_path


def promote(
    name: str, version: str | int, *, alias: str = "champion", require_index: bool = True
) -> None:
    """Move `alias` to `version`: one registry write, and only once the version has its index.

    The alias write is the single atomic step: a crash before it leaves the old champion (with
    its index) serving; after it, the new champion already has its index.
    """
    mv = _client().get_model_version(name, str(version))
    if require_index and INDEX_TAG not in (mv.tags or {}):
        raise RegistryError(
            f"version {version} of {name!r} has no faiss index yet; build it first with "
            f"`outfitter index build --model models:/{name}/{version} --data DIR`"
        )
    set_alias(name, alias, mv.version)


def promote_if_better(
    name: str, version: str | int, metric: str, *, mode: str = "max", require_index: bool = True
) -> bool:
    """Promote `version` to champion when it beats the current champion on `metric`."""
    current = version_by_alias(name, "champion")
    new = version_metrics(_client().get_model_version(name, str(version))).get(metric)
    if current is not None and str(current.version) != str(version):
        old = version_metrics(current).get(metric)
        if old is not None and new is not None:
            better = new > old if mode == "max" else new < old
            if not better:
                return False
    promote(name, version, require_index=require_index)
    return True


def resolve_model(uri: str, *, dst: Path | None = None) -> ResolvedModel:
    """Resolve a model URI (registry alias/version, runs:/ URI, local folder) to local files."""
    local = Path(uri)
    if "://" not in uri and local.is_dir():
        if not (local / "config.json").exists():
            raise RegistryError(f"{uri} is a folder but not a checkpoint (no config.json in it)")
        return ResolvedModel(checkpoint_dir=local)
    import mlflow
    from mlflow.exceptions import MlflowException

    match = _MODELS_URI.match(uri)
    mv = None
    try:
        if match:
            name, alias = match["name"], match["alias"]
            mv = (
                _client().get_model_version_by_alias(name, alias)
                if alias
                else _client().get_model_version(name, match["version"])
            )
            source = f"models:/{name}/{mv.version}"
        elif uri.startswith("runs:/"):
            source = uri
        else:
            raise RegistryError(
                f"cannot read model URI {uri!r}: use models:/NAME@ALIAS, models:/NAME/VERSION, "
                "runs:/RUN_ID/model, or a local checkpoint folder"
            )
        root = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=_dst(dst)))
    except MlflowException as err:
        # The message reaches the CLI, Serve logs and GET /v1/model: no credentials in it.
        raise RegistryError(
            redact_uri(
                f"cannot resolve {uri!r} against the MLflow store {mlflow.get_tracking_uri()!r}: "
                f"{err.message}. List versions and aliases with `mlflow ui`, or check "
                "MLFLOW_TRACKING_URI."
            )
        ) from err
    except OSError as err:
        raise RegistryError(redact_uri(f"cannot download the artifacts of {uri!r}: {err}")) from err
    checkpoint = root / "artifacts" / "checkpoint"
    if not (checkpoint / "config.json").exists():
        raise RegistryError(f"{uri!r} has no checkpoint artifact (expected artifacts/checkpoint/)")
    resolved = ResolvedModel(checkpoint_dir=checkpoint)
    if mv is not None:
        resolved.name, resolved.version, resolved.run_id = mv.name, str(mv.version), mv.run_id
        resolved.alias = match["alias"] if match else None
        resolved.metrics = version_metrics(mv)
        index_uri = (mv.tags or {}).get(INDEX_TAG)
        if index_uri:
            resolved.index_dir = Path(
                mlflow.artifacts.download_artifacts(artifact_uri=index_uri, dst_path=_dst(dst))
            )
    return resolved


def _dst(dst: Path | None) -> str | None:
    if dst is None:
        return None
    dst.mkdir(parents=True, exist_ok=True)
    return str(dst)
