"""MLflow tracking and model registry: where runs are logged and what Serve loads.

A model version is an MLflow pyfunc logged from code (`mlflow_pyfunc.py`) whose artifact
`checkpoint/` is the self-describing checkpoint folder. Its faiss index is logged later to the
same run, under a path of its own per build (`index-v<version>-<stamp>/`, so re-indexing never
overwrites the files a running champion was loaded from), and recorded on the version as tag
`outfitter.index`. `champion` only ever moves to a version whose index files download and match
their manifest, by a compare-and-set on the alias (`promote`).

Downloads go to one cache folder per model version (`$OUTFITTER_CACHE_DIR/models/`), reused by
the next load of the same version and bounded to the `MODEL_CACHE_KEEP` most recently used.
Every MLflow error leaves this module as a `RegistryError` with credentials masked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from outfitter.platform.redact import redact_uri

DEFAULT_MODEL_NAME = "outfitter"
INDEX_TAG = "outfitter.index"
MODEL_CACHE_KEEP = 3  # model versions kept in the download cache ($OUTFITTER_MODEL_CACHE_KEEP)
STAGING_MIN_FREE = 256 * 2**20  # free bytes the temp folder needs beyond what is staged
LOCK_STALE_S = 120.0  # a promotion lock older than this was left by a crashed process
LOCK_WAIT_S = 60.0
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")


class RegistryError(RuntimeError):
    """A model URI that cannot be resolved, with what to do about it."""


class PromotionConflict(RegistryError):
    """The alias moved between the caller's read and its write (compare-and-set failed)."""


@contextlib.contextmanager
def _mlflow_errors(what: str, hint: str = ""):
    """MLflow and I/O errors as one `RegistryError` line, credentials masked: the message
    reaches the CLI, Serve logs and `GET /v1/model`."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except RegistryError as err:
        raise type(err)(redact_uri(str(err))) from None
    except MlflowException as err:
        raise RegistryError(redact_uri(f"{what}: {err.message}{hint}")) from None
    except OSError as err:
        raise RegistryError(redact_uri(f"{what}: {err}")) from None


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
        store = workdir / "mlflow.db"
        if not store.exists():
            _seed_sqlite_store(store)
        uri = f"sqlite:///{store}"
        os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def _seed_sqlite_store(store: Path) -> None:
    """Start a new local store from a copy of an empty, migrated one.

    MLflow builds a new sqlite store by running its whole schema migration history, ~4 s here
    for every new workdir. The migrated schema, without any experiment, is kept once per MLflow
    version in `$OUTFITTER_CACHE_DIR/mlflow/`; a copy opens in ~0.2 s, and MLflow adds its
    `Default` experiment (artifact location resolved then, as for a new store) on first open.
    Anything unexpected leaves `store` absent, and MLflow creates it the usual way.
    """
    import sqlite3

    import mlflow

    from outfitter.platform.embed import default_cache_dir

    template = default_cache_dir() / "mlflow" / f"empty-store-{mlflow.__version__}.db"
    tag = uuid.uuid4().hex
    built, copied = template.with_name(f".{tag}.db"), store.with_name(f".{store.name}.{tag}")
    try:
        if not template.exists():
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

            template.parent.mkdir(parents=True, exist_ok=True)
            SqlAlchemyStore(f"sqlite:///{built}", str(template.parent)).engine.dispose()
            with contextlib.closing(sqlite3.connect(built)) as db, db:
                db.execute("DELETE FROM experiments")  # the Default one: made again on first open
            os.replace(built, template)  # whole or not at all; concurrent builders both succeed
        shutil.copyfile(template, copied)
        with contextlib.closing(sqlite3.connect(copied)) as db:
            db.execute("SELECT version_num FROM alembic_version").fetchone()
        os.link(copied, store)  # never over a store another process has just made
    except sqlite3.DatabaseError:  # a damaged template: rebuilt by the next new store
        template.unlink(missing_ok=True)
    except Exception:  # an MLflow whose store differs, or a lost race: MLflow opens it as usual
        pass
    finally:
        built.unlink(missing_ok=True)
        copied.unlink(missing_ok=True)


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
    need = sum(f.stat().st_size for f in Path(checkpoint_dir).rglob("*") if f.is_file())
    with staging_dir(need, prefix="outfitter-stage-") as tmp:
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


@contextlib.contextmanager
def staging_dir(need_bytes: int, *, prefix: str = "outfitter-"):
    """A temp folder with room for `need_bytes` (checked first), removed on every exit path."""
    root = Path(tempfile.gettempdir())
    free = shutil.disk_usage(root).free
    if free < need_bytes + STAGING_MIN_FREE:
        raise RegistryError(
            f"temp folder {root} has {free / 2**20:.0f} MiB free; staging needs "
            f"{(need_bytes + STAGING_MIN_FREE) / 2**20:.0f} MiB: free space or point TMPDIR "
            "at a larger disk"
        )
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield tmp


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
    with _mlflow_errors(f"cannot set alias {alias!r} of {name!r}"):
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
    with _mlflow_errors(f"cannot read the metrics of run {version.run_id}"):
        return dict(_client().get_run(version.run_id).data.metrics)


def log_index(name: str, version: str | int, index_dir: Path) -> str:
    """Log a built faiss index folder to the version's run and record it on the version.

    The folder is verified first (manifest, checksums, built for this version); it goes to a
    path no earlier build used, and the tag pointing at it is written last.
    """
    from outfitter.platform.index import IndexIntegrityError, verify_index

    with _mlflow_errors(f"cannot log the index of {name!r} version {version}"):
        client = _client()
        mv = client.get_model_version(name, str(version))
        try:
            verify_index(Path(index_dir), model_version=mv.version)
        except (IndexIntegrityError, FileNotFoundError) as err:
            raise RegistryError(f"not logging index {index_dir}: {err}") from err
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        artifact_path = f"index-v{mv.version}-{stamp}-{uuid.uuid4().hex[:8]}"
        client.log_artifacts(mv.run_id, str(index_dir), artifact_path=artifact_path)
        index_uri = f"runs:/{mv.run_id}/{artifact_path}"
        client.set_model_version_tag(name, mv.version, INDEX_TAG, index_uri)
    return artifact_path


def verify_version_index(name: str, version: str | int) -> str:
    """Download a version's tagged index and check it against its manifest; returns its URI.

    Raises RegistryError naming what is wrong (no tag, files pruned or damaged, another
    version's index)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from outfitter.platform.index import IndexIntegrityError, verify_index

    with _mlflow_errors(f"cannot verify the index of {name!r} version {version}"):
        mv = _client().get_model_version(name, str(version))
        index_uri = (mv.tags or {}).get(INDEX_TAG)
        if not index_uri:
            raise RegistryError(
                f"version {version} of {name!r} has no faiss index yet; build it first with "
                f"`outfitter index build --model models:/{name}/{version} --data DIR`"
            )
        with staging_dir(0, prefix="outfitter-verify-") as tmp:
            try:
                folder = mlflow.artifacts.download_artifacts(artifact_uri=index_uri, dst_path=tmp)
                verify_index(Path(folder), model_version=mv.version)
            except (IndexIntegrityError, FileNotFoundError, MlflowException) as err:
                raise RegistryError(
                    f"version {version} of {name!r}: its index {index_uri} is unusable ({err}); "
                    f"rebuild it with `outfitter index build --model models:/{name}/{version}`"
                ) from err
    return index_uri


def _lock_name(name: str, alias: str) -> str:
    return f"{name}.{alias}.promotion-lock"


@contextlib.contextmanager
def alias_lock(name: str, alias: str, *, wait_s: float = LOCK_WAIT_S):
    """Mutual exclusion for moving `alias` of `name`, across processes and hosts.

    MLflow has no conditional alias write, but creating a registered model is atomic in its
    store (a unique name): the lock is a registered model that exists while held. One left by a
    crashed process is taken over after `LOCK_STALE_S`.
    """
    from mlflow.exceptions import MlflowException

    client, lock = _client(), _lock_name(name, alias)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.create_registered_model(lock, tags={"pid": str(os.getpid())})
            break
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        with contextlib.suppress(MlflowException):
            held = client.get_registered_model(lock)
            if time.time() - held.creation_timestamp / 1000 > LOCK_STALE_S:
                client.delete_registered_model(lock)
                continue
        if time.monotonic() > deadline:
            raise RegistryError(
                f"another promotion of {name}@{alias} has held its lock for over {wait_s:.0f} s "
                f"(registered model {lock!r}; delete it if no promotion is running)"
            )
        time.sleep(0.05)
    try:
        yield
    finally:
        with contextlib.suppress(MlflowException):
            client.delete_registered_model(lock)


_ANY = object()


def promote(
    name: str,
    version: str | int,
    *,
    alias: str = "champion",
    require_index: bool = True,
    expected=_ANY,
) -> None:
    """Move `alias` to `version`, once the version's index files are verified.

    A compare-and-set: under the alias lock the alias is re-read, and with `expected` (a
    version, or None for unset) the move happens only if the alias is still there
    (`PromotionConflict` otherwise). The alias write is the single step that changes what is
    served: a crash before it leaves the old champion (with its index) serving.
    """
    if require_index:
        verify_version_index(name, version)
    with _mlflow_errors(f"cannot promote {name!r} version {version}"), alias_lock(name, alias):
        _compare_and_set(name, alias, version, expected)


def _compare_and_set(name: str, alias: str, version, expected) -> None:
    if expected is not _ANY:
        current = version_by_alias(name, alias)
        now = None if current is None else str(current.version)
        if now != (None if expected is None else str(expected)):
            raise PromotionConflict(
                f"{name}@{alias} is at version {now}, not {expected} as expected: another "
                "promotion moved it; re-read and retry"
            )
    set_alias(name, alias, str(version))


def promote_if_better(
    name: str, version: str | int, metric: str, *, mode: str = "max", require_index: bool = True
) -> bool:
    """Promote `version` to champion when it beats the current champion on `metric`.

    The champion is read and moved under one alias lock, so two concurrent runs cannot both
    beat the old champion and have the worse one written last.
    """
    if require_index:
        verify_version_index(name, version)
    with _mlflow_errors(f"cannot promote {name!r} version {version}"):
        new = version_metrics(_client().get_model_version(name, str(version))).get(metric)
        with alias_lock(name, "champion"):
            current = version_by_alias(name, "champion")
            if current is not None and str(current.version) != str(version):
                old = version_metrics(current).get(metric)
                if old is not None and new is not None:
                    better = new > old if mode == "max" else new < old
                    if not better:
                        return False
            set_alias(name, "champion", str(version))
    return True


def resolve_model(uri: str, *, dst: Path | None = None) -> ResolvedModel:
    """Resolve a model URI (registry alias/version, runs:/ URI, local folder) to local files.

    Registry and run URIs download into the model cache (see the module docstring), or into
    `dst` when given; a version's index is verified against its manifest and version.
    """
    local = Path(uri)
    if "://" not in uri and local.is_dir():
        if not (local / "config.json").exists():
            raise RegistryError(f"{uri} is a folder but not a checkpoint (no config.json in it)")
        return ResolvedModel(checkpoint_dir=local)
    import mlflow

    match = _MODELS_URI.match(uri)
    if not match and not uri.startswith("runs:/"):
        raise RegistryError(
            f"cannot read model URI {uri!r}: use models:/NAME@ALIAS, models:/NAME/VERSION, "
            "runs:/RUN_ID/model, or a local checkpoint folder"
        )
    store = mlflow.get_tracking_uri()
    hint = ". List versions and aliases with `mlflow ui`, or check MLFLOW_TRACKING_URI."
    with _mlflow_errors(f"cannot resolve {uri!r} against the MLflow store {store!r}", hint):
        mv = None
        if match:
            name, alias = match["name"], match["alias"]
            mv = (
                _client().get_model_version_by_alias(name, alias)
                if alias
                else _client().get_model_version(name, match["version"])
            )
            source = f"models:/{name}/{mv.version}"
        else:
            source = uri
        index_uri = (mv.tags or {}).get(INDEX_TAG) if mv is not None else None
        root = _download(store, source, index_uri, dst)
        metrics = version_metrics(mv) if mv is not None else {}
    checkpoint = root / "model" / "artifacts" / "checkpoint"
    if not (checkpoint / "config.json").exists():
        raise RegistryError(f"{uri!r} has no checkpoint artifact (expected artifacts/checkpoint/)")
    resolved = ResolvedModel(checkpoint_dir=checkpoint, metrics=metrics)
    if mv is not None:
        resolved.name, resolved.version, resolved.run_id = mv.name, str(mv.version), mv.run_id
        resolved.alias = match["alias"] if match else None
        if index_uri:
            resolved.index_dir = _verified_index(root / "index", mv, index_uri)
    return resolved


def _verified_index(folder: Path, mv, index_uri: str) -> Path:
    from outfitter.platform.index import IndexIntegrityError, verify_index

    try:
        verify_index(folder, model_version=mv.version)
    except (IndexIntegrityError, FileNotFoundError) as err:
        what = f"the index of {mv.name!r} version {mv.version} ({index_uri})"
        raise RegistryError(redact_uri(f"{what} is unusable: {err}")) from None
    return folder


def model_cache_root() -> Path:
    """`models/` under the cache root (`embed.default_cache_dir`)."""
    from outfitter.platform.embed import default_cache_dir

    return default_cache_dir() / "models"


def _download(store: str, source: str, index_uri: str | None, dst: Path | None) -> Path:
    """A folder with `model/` (the logged model) and `index/` (when the version has one).

    Without `dst`, the cache entry of (store, source, index) is reused when complete; else it
    is downloaded to a staging folder beside it and renamed into place, so a crashed or
    concurrent download never leaves a half entry that a later load would trust.
    """
    import mlflow

    def fetch(into: Path) -> None:
        # models:/ URIs download into the folder given, runs:/ URIs into a subfolder of it
        got = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=_dst(into / "dl"))
        os.rename(got, into / "model")
        shutil.rmtree(into / "dl", ignore_errors=True)
        if index_uri:
            got = mlflow.artifacts.download_artifacts(artifact_uri=index_uri, dst_path=str(into))
            os.rename(got, into / "index")

    if dst is not None:
        target = Path(dst) / uuid.uuid4().hex[:8]
        fetch(target)
        return target
    root = model_cache_root()
    key = hashlib.sha256(f"{redact_uri(store)}|{source}|{index_uri}".encode()).hexdigest()[:16]
    label = re.sub(r"[^\w.-]+", "-", source.split(":/", 1)[-1]).strip("-")[:60]
    entry = root / f"{label}-{key}"
    if (entry / ".complete").is_file():
        (entry / ".complete").touch()  # most recently used
        return entry
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp-", dir=root))
    try:
        fetch(staging)
        (staging / ".complete").write_text(json.dumps({"source": source, "index": index_uri}))
        try:
            os.rename(staging, entry)
        except OSError:  # another process completed the same entry first
            if not (entry / ".complete").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _evict(root, keep_entry=entry)
    return entry


def _evict(root: Path, keep_entry: Path) -> None:
    """Keep the `OUTFITTER_MODEL_CACHE_KEEP` most recently used entries; drop the rest and any
    staging folder a crashed download left over an hour ago."""
    keep = int(os.environ.get("OUTFITTER_MODEL_CACHE_KEEP", MODEL_CACHE_KEEP))
    entries = [e for e in root.iterdir() if (e / ".complete").is_file() and e != keep_entry]
    entries.sort(key=lambda e: (e / ".complete").stat().st_mtime, reverse=True)
    for old in entries[max(keep - 1, 0) :]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".*.tmp-*"):
        with contextlib.suppress(OSError):
            if time.time() - stale.stat().st_mtime > 3600:
                shutil.rmtree(stale, ignore_errors=True)


def _dst(dst: Path | None) -> str | None:
    if dst is None:
        return None
    dst.mkdir(parents=True, exist_ok=True)
    return str(dst)
