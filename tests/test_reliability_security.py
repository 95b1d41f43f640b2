"""Security defaults: nothing unpickled from a request or a dataset, the decompression-bomb limit,
request size limits, loopback by default, no credentials in MLflow params, artifacts or errors."""

from __future__ import annotations

import ast
import base64
import inspect
import json
import pickle
import struct
import types
import zlib
from pathlib import Path

import pytest
import torch
import yaml
from fastapi.testclient import TestClient
from PIL import Image

import outfitter
from outfitter.data import DatasetError, load_catalog
from outfitter.data.images import load_image, verify_image
from outfitter.platform.redact import redact, redact_uri

PACKAGE = Path(outfitter.__file__).resolve().parent
SERVE_CONFIGS = PACKAGE.parent / "serve_configs"
SECRET = "s3cr3t-Pa55"

# ---------------------------------------------------------------- deserialisation

# Modules whose load functions run code from the bytes they read (matched on the qualified name,
# so `ray.cloudpickle` and `from ray import cloudpickle` are caught like `cloudpickle`).
UNSAFE_MODULES = {"pickle", "cloudpickle", "dill", "joblib", "marshal", "shelve", "_pickle"}
UNSAFE_BUILTINS = {"eval", "exec"}
UNSAFE_METHODS = {"read_pickle", "unsafe_load", "full_load"}


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> qualified name, from every import in the module (`import torch as T`,
    `from torch import load as L`, `from ray import cloudpickle`)."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                top = a.name.split(".")[0]  # `import ray.cloudpickle` binds `ray`
                names[a.asname or top] = a.name if a.asname else top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _qualified(func: ast.expr, aliases: dict[str, str]) -> str:
    """`T.load` -> `torch.load`; `L` -> `torch.load`; a name no import bound stays as written."""
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        return ast.unparse(func) + "".join(f".{p}" for p in reversed(parts))
    return ".".join([aliases.get(func.id, func.id), *reversed(parts)])


def _is_unsafe_module(qualified: str) -> bool:
    return any(part in UNSAFE_MODULES for part in qualified.split("."))


def unsafe_loads(source: str, filename: str = "<src>") -> list[str]:
    """Calls in `source` that can unpickle (or execute) data, as `file:line: what`."""
    found = []

    def at(node, what):
        found.append(f"{filename}:{node.lineno}: {what}")

    tree = ast.parse(source)
    aliases = _aliases(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if _is_unsafe_module(a.name):
                    at(node, f"imports {a.name}")
        if isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                if _is_unsafe_module(f"{node.module}.{a.name}"):
                    at(node, f"imports {a.name} from {node.module}")
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = _qualified(func, aliases)
        last = name.rsplit(".", 1)[-1]
        kwargs = {k.arg: k.value for k in node.keywords}
        if (isinstance(func, ast.Name) and func.id in UNSAFE_BUILTINS) or (
            isinstance(func, ast.Attribute) and last in UNSAFE_METHODS
        ):
            at(node, f"calls {ast.unparse(func)}")
        if _is_unsafe_module(name.rsplit(".", 1)[0]) and "load" in last:
            at(node, f"calls {name}")
        if name == "torch.load":
            flag = kwargs.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                at(node, "torch.load without weights_only=True")
        if name == "yaml.load":
            loader = kwargs.get("Loader")
            if loader is None or "Safe" not in ast.unparse(loader):
                at(node, "yaml.load without a SafeLoader")
        if name == "numpy.load" or name == "np.load":
            flag = kwargs.get("allow_pickle")
            if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                at(node, "np.load with allow_pickle")
        if name.startswith("mlflow.") and last == "load_model":
            at(node, f"{name} (a logged model's loader runs its code)")
    return found


def test_the_scanner_catches_each_unsafe_form():
    planted = (
        "import pickle\nimport torch, yaml, numpy as np\nfrom cloudpickle import loads\n"
        "torch.load(f)\ntorch.load(f, weights_only=False)\nyaml.load(s)\n"
        "np.load(p, allow_pickle=True)\neval(x)\npd.read_pickle(p)\n"
    )
    assert len(unsafe_loads(planted)) == 8, unsafe_loads(planted)
    safe = "torch.load(f, weights_only=True)\nyaml.safe_load(s)\nnp.load(p)\nmodel.eval()\n"
    assert unsafe_loads(safe) == []


@pytest.mark.parametrize(
    "source",
    [
        "from torch import load\nload(f)\n",
        "from torch import load as L\nL(f, weights_only=False)\n",
        "import torch as T\nT.load(f)\n",
        "import ray.cloudpickle\n",
        "from ray import cloudpickle\n",
        "import ray\nray.cloudpickle.loads(b)\n",
        "import mlflow\nmlflow.pyfunc.load_model(uri)\n",
        "from mlflow import pyfunc\npyfunc.load_model(uri)\n",
        "from mlflow.pyfunc import load_model\nload_model(uri)\n",
        "from yaml import load\nload(s)\n",
        "import numpy\nnumpy.load(p, allow_pickle=True)\n",
    ],
)
def test_the_scanner_sees_through_aliases(source):
    assert unsafe_loads(source), source


def test_the_scanner_leaves_safe_namesakes_alone():
    safe = (
        "from safetensors.torch import load_model\nload_model(m, p)\n"
        "from torch import load\nload(f, weights_only=True)\nimport json\njson.loads(s)\n"
    )
    assert unsafe_loads(safe) == [], unsafe_loads(safe)


def test_package_never_unpickles_or_evaluates_data():
    """Weights go through safetensors or torch.load(weights_only=True); nothing else loads code."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        found += unsafe_loads(path.read_text(), str(path.relative_to(PACKAGE.parent)))
    assert found == [], "\n".join(found)


def test_open_clip_weight_files_load_weights_only():
    """`clip.pretrained=FILE` goes through open_clip's loader: weights-only is its default."""
    import open_clip

    for fn in (open_clip.load_checkpoint, open_clip.factory.load_state_dict):
        assert inspect.signature(fn).parameters["weights_only"].default is True


@pytest.fixture(scope="module")
def tiny(synth_dir, tmp_path_factory):
    from serve_helpers import tiny_versions

    from outfitter.model.checkpoint import load_checkpoint

    folder = tiny_versions(tmp_path_factory.getbasetemp() / "tiny-models", synth_dir)[0]
    model, cfg, _ = load_checkpoint(folder)
    return folder, model, cfg


def test_checkpoints_hold_only_safetensors_and_json(tiny):
    folder, _, _ = tiny
    files = {p.name for p in folder.iterdir() if p.is_file()}
    assert files <= {"config.json", "model.safetensors", "meta.json", "towers.safetensors",
                     "vocab.json"}, files  # fmt: skip


class _Payload:
    """A pickle that would run code on load."""

    ran = False

    def __reduce__(self):
        return (_mark_ran, ())


def _mark_ran():
    _Payload.ran = True
    return {}


def test_a_tampered_training_state_is_refused(tiny, tmp_path):
    """A checkpoint's `training_state.pt` carrying a pickled callable never runs it on resume."""
    from outfitter.model.checkpoint import save_checkpoint
    from outfitter.platform.train.loop import STATE_FILE, EpochRunner

    folder, model, cfg = tiny
    save_checkpoint(tmp_path, model, cfg, {})
    torch.save({"epoch": 0, "optimizer": _Payload()}, tmp_path / STATE_FILE)
    checkpoint = types.SimpleNamespace(as_directory=lambda: _Dir(tmp_path))
    runner = types.SimpleNamespace(model=model)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        EpochRunner.restore(runner, checkpoint)
    assert not _Payload.ran


class _Dir:
    def __init__(self, path):
        self.path = path

    def __enter__(self):
        return str(self.path)

    def __exit__(self, *exc):
        return False


# ---------------------------------------------------------------- decompression bombs


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` pixels in a few dozen bytes (no pixel data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


BOMBS = {  # PIL warns above MAX_IMAGE_PIXELS and raises above twice that: both are refused
    "warning-range": (10_000, 10_000),
    "error-range": (20_000, 20_000),
}


def test_pil_bomb_limit_is_kept():
    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS <= 89_478_485
    for w, h in BOMBS.values():
        assert w * h > Image.MAX_IMAGE_PIXELS


@pytest.mark.parametrize("name", list(BOMBS))
def test_load_image_refuses_a_decompression_bomb(tmp_path, name):
    path = tmp_path / "bomb.jpg"
    path.write_bytes(_png_header(*BOMBS[name]))
    for fn in (load_image, verify_image):
        with pytest.raises(
            DatasetError, match=r"bomb\.jpg: cannot decode image.*DecompressionBomb"
        ):
            fn(path)


class _StubBackend:
    """Answers `info` only: image checks happen before any model call."""

    async def info(self):
        return {"max_items": 8, "version": "stub"}

    async def encode_new(self, items):  # pragma: no cover - never reached by refused images
        raise AssertionError("a refused image reached the model")


@pytest.fixture(scope="module")
def api(polyvore_mini):
    from outfitter.platform.serve.app import create_app
    from outfitter.platform.serve.service import CatalogService

    catalog = load_catalog(polyvore_mini)
    app = create_app(CatalogService(catalog, _StubBackend()), static_dir=None)  # default limits
    return TestClient(app, raise_server_exceptions=False), catalog.item_ids[0]


@pytest.mark.parametrize("name", list(BOMBS))
def test_api_refuses_a_decompression_bomb_with_default_limits(api, name):
    client, item_id = api
    bomb = base64.b64encode(_png_header(*BOMBS[name])).decode()
    new = {"title": "bomb", "image_b64": bomb}
    r = client.post("/v1/compatibility", json={"items": [{"item_id": item_id}, new]})
    assert r.status_code == 413, r.text
    assert r.json()["errors"][0]["field"] == "items.1.image_b64"
    assert "Traceback" not in r.text


def test_default_request_limits():
    """The defaults every deployment gets; enforcement is tested in test_serve_app.py
    (test_bodies_over_the_limit_and_malformed_json, test_bad_images) and over HTTP in
    test_serve_ray.py (test_every_endpoint_over_http: a 9 MiB body gets a 413)."""
    from outfitter.platform.serve.schemas import LIMITS

    assert LIMITS.max_body_bytes == 8 * 1024 * 1024
    assert LIMITS.max_image_bytes == 4 * 1024 * 1024
    assert LIMITS.max_image_pixels < Image.MAX_IMAGE_PIXELS  # refused before PIL's own limit
    assert LIMITS.max_text_chars == 500 and LIMITS.max_outfit_items == 12


def test_api_refuses_an_oversized_body_with_default_limits(api):
    client, _ = api
    r = client.post(
        "/v1/retrieve",
        content=b" " * (8 * 1024 * 1024 + 1),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413 and "Traceback" not in r.text


# ---------------------------------------------------------------- loopback by default


def test_serve_configs_bind_loopback():
    """Every config a user runs on a machine binds 127.0.0.1; only the KubeRay manifest, inside
    its pod behind the cluster Service, binds all interfaces."""
    from ray.serve.config import HTTPOptions

    from outfitter.platform.serve import launch

    for path in sorted(SERVE_CONFIGS.glob("*.yaml")):
        if path.name.startswith("rayservice"):  # Kubernetes manifests
            continue
        config = launch.load_serve_config(path)
        assert config["http_options"]["host"] == "127.0.0.1", path
        assert launch.prepare_config(config, pin=False)["http_options"]["host"] == "127.0.0.1"
    assert launch.url_of({}).startswith("http://127.0.0.1:")
    assert HTTPOptions().host in ("127.0.0.1", "localhost")  # Ray's own default, if unset
    manifest = list(yaml.safe_load_all((SERVE_CONFIGS / "rayservice.yaml").read_text()))
    assert manifest, "rayservice.yaml is empty"


# ---------------------------------------------------------------- no secrets


@pytest.mark.parametrize(
    "uri",
    [
        f"http://alice:{SECRET}@mlflow.internal:5000",
        f"https://{SECRET}@mlflow.internal/api",
        f"postgresql://mlflow:{SECRET}@db:5432/mlflow",
        f"s3://bucket/runs?region=eu-west-1&access_key=AKIA&secret_key={SECRET}",
        f"gs://bucket/x?token={SECRET}",
        f"error talking to 'http://bob:{SECRET}@10.0.0.1:5000/api/2.0/mlflow/runs/get'",
    ],
)
def test_redact_masks_credentials(uri):
    out = redact_uri(uri)
    assert SECRET not in out and "***" in out
    assert redact({"a": [uri], "b": 3}) == {"a": [out], "b": 3}


def test_redact_keeps_plain_locations():
    for plain in ("sqlite:////tmp/mlflow.db", "/data/ray_results", "s3://bucket/path?region=eu",
                  "models:/outfitter@champion", "http://127.0.0.1:5000"):  # fmt: skip
        assert redact_uri(plain) == plain


def test_training_params_and_artifacts_hold_no_credentials(tmp_path, monkeypatch):
    """`runs._log_params` with a storage URI carrying keys: params and JSON artifacts masked."""
    import mlflow

    from outfitter.model import load_config
    from outfitter.platform import registry
    from outfitter.platform.train.runs import _log_params
    from outfitter.platform.train.settings import TrainSettings

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    registry.configure_tracking()
    experiment = registry.ensure_experiment("secrets")
    settings = TrainSettings(storage_path=f"s3://bucket/results?secret_key={SECRET}")
    cfg = load_config("hybrid-tiny")
    with mlflow.start_run(experiment_id=experiment) as run:
        _log_params(cfg, settings, f"/data?token={SECRET}")
    client = mlflow.MlflowClient()
    params = client.get_run(run.info.run_id).data.params
    assert params["settings.storage_path"] == "s3://bucket/results?secret_key=***"
    assert not [k for k, v in params.items() if SECRET in v]
    texts = {
        artifact: Path(
            client.download_artifacts(run.info.run_id, artifact, str(tmp_path))
        ).read_text()
        for artifact in ("config/train_settings.json", "config/model_config.json")
    }
    assert not [name for name, text in texts.items() if SECRET in text]
    assert "secret_key=***" in texts["config/train_settings.json"]


def test_checkpoint_meta_holds_no_credentials(tiny, tmp_path):
    """`EpochRunner.save` writes the settings into meta.json, which ships with the model."""
    from outfitter.platform.train.loop import EpochRunner
    from outfitter.platform.train.settings import TrainSettings

    _, model, cfg = tiny
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    runner = types.SimpleNamespace(
        settings=TrainSettings(storage_path=f"https://u:{SECRET}@store/x"),
        cfg=cfg,
        model=model,
        builder=types.SimpleNamespace(towers=None),
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
        best=None,
        bad_epochs=0,
    )
    EpochRunner.save(runner, tmp_path, 0, {"valid_loss": 1.0})
    for path in tmp_path.iterdir():
        assert SECRET.encode() not in path.read_bytes(), path.name
    assert json.loads((tmp_path / "meta.json").read_text())["settings"]["storage_path"] == (
        "https://u:***@store/x"
    )


def test_registry_errors_hold_no_credentials(monkeypatch):
    """An unreachable store named with a password: the error (CLI, Serve log, GET /v1/model) is
    clear and masked. Port 9 on loopback refuses at once; MLflow's retries are turned off."""
    from outfitter.platform import registry

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:{SECRET}@127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    registry.configure_tracking()
    with pytest.raises(registry.RegistryError) as err:
        registry.resolve_model("models:/outfitter@champion")
    message = str(err.value)
    assert SECRET not in message and "alice:***@127.0.0.1:9" in message, message
    assert "cannot resolve 'models:/outfitter@champion'" in message


def test_param_values_are_masked_text_within_mlflows_limit():
    """What a Train run and a Tune trial's child run log as MLflow params."""
    from outfitter.platform.redact import param_values

    out = param_values(
        {"storage": "s3://bucket/runs?secret_key=SECRET", "workers": 2, "long": "x" * 600}
    )
    assert "SECRET" not in out["storage"] and out["storage"].startswith("s3://bucket/runs")
    assert out["workers"] == "2" and len(out["long"]) == 500
