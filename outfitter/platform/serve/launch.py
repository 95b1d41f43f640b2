"""`outfitter serve`: deploy a Serve config file the way Ray's own `serve run CONFIG` does.

The YAML is a standard Serve config (`http_options`, `applications[].import_path/args/deployments`),
so `serve run serve_configs/local.yaml` and `serve deploy` accept it unchanged. On top of what
Ray does, this entry point makes relative paths in our applications' `args` absolute (replicas
may start in another working directory) and pins the model: the deployment's `user_config` gets
the concrete `models:/NAME/N` the alias points at now. Re-running `outfitter serve` after a
promotion changes only that `user_config`, which hot-swaps the model and its index in place.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

BUILDER = "outfitter.platform.serve.deployments:build_app"
# Serve settings read by the Ray instance when Serve starts on it (not per application). HAProxy
# forwards HTTP straight to each replica's own HTTP server instead of through Ray's Python proxy
# and an actor call: on this 2-CPU machine /v1/compatibility at c=32 went from 147 to 564 req/s
# and its p50 at c=1 from 14.6 to 5.3 ms (bench/results/serve_load_flags.json). Its frontend
# and the replicas' ports still bind the `http_options.host` of the config (127.0.0.1 in
# local.yaml: HAProxy's port and the replicas' 30000 and 30001, measured there too).
# A replica leaving (scale-down, Ctrl-C, a new version) first stays reachable for Ray's "minimum
# draining period", 30 s by default, for a load balancer to drop it: here that balancer is the
# node's own HAProxy, whose backend list is reloaded ~0.5 s after the controller's update, and a
# stale HAProxy process that still routes to the replica afterwards is refused at connect and
# retries another (Ray's drain phase 2). 5 s keeps a 10x margin; the 30 s held every `outfitter
# serve` Ctrl-C and every scale-down for half a minute ("Controller failed to shut down").
SERVE_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5",
}


def apply_serve_env() -> None:
    """Set SERVE_ENV (where unset) in this process, for a Ray instance started after it."""
    import os

    for key, value in SERVE_ENV.items():
        os.environ.setdefault(key, value)


_PATH_ARGS = ("data_dir", "index_dir")


class ServeConfigError(ValueError):
    """A Serve config file that cannot be deployed; the message says what to fix."""


def load_serve_config(path: Path) -> dict[str, Any]:
    """Read and validate a Serve config file (Ray's `ServeDeploySchema`)."""
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    path = Path(path)
    if not path.is_file():
        raise ServeConfigError(f"serve config {path} does not exist")
    try:
        config = yaml.safe_load(path.read_text())
        ServeDeploySchema.model_validate(config)
    except (yaml.YAMLError, ValidationError) as err:
        raise ServeConfigError(f"{path} is not a valid Serve config: {err}") from None
    return config


def _absolute(value: str, base: Path) -> str:
    if value.startswith("sqlite:///") and not value.startswith("sqlite:////"):
        return "sqlite:///" + str((base / value.removeprefix("sqlite:///")).resolve())
    if "://" in value or value.startswith("models:/") or value.startswith("runs:/"):
        return value
    return str((base / value).resolve())


def absolute_args(args: dict[str, Any], base: Path | None = None) -> dict[str, Any]:
    """`args` of `build_app` with relative paths (and sqlite URIs) resolved against `base`."""
    base = Path(base or Path.cwd())
    out = dict(args)
    for key in (*_PATH_ARGS, "tracking_uri", "model_uri"):
        if out.get(key):
            out[key] = _absolute(str(out[key]), base)
    return out


def prepare_config(config: dict[str, Any], *, base: Path | None = None, pin: bool = True) -> dict:
    """A copy of `config` with our apps' paths made absolute and their model version pinned.

    Pinning writes the deployment's full `user_config` into `deployments[]` with `model_uri` =
    the concrete `models:/NAME/N` the URI's alias points at now (and `revision` = N, `alias` =
    the alias). Every replica, including one started later by a crash restart or the
    autoscaler, loads that version; after a promotion, re-running this changes only
    `user_config`, so Serve reconfigures the running replicas in place (a change of `args` would
    replace them instead).
    """
    from outfitter.platform.serve.deployments import DEPLOYMENT, AppArgs, user_config

    base = Path(base or Path.cwd())
    config = copy.deepcopy(config)
    for app in config.get("applications", []):
        if app.get("import_path") != BUILDER:
            continue
        args = app["args"] = absolute_args(app.get("args") or {}, base)
        entries = {d["name"]: d for d in app.setdefault("deployments", [])}
        entry = entries.get(DEPLOYMENT) or {"name": DEPLOYMENT}
        if DEPLOYMENT not in entries:
            app["deployments"].append(entry)
        default = user_config(AppArgs.model_validate(args))
        config_ = {**default, **(entry.get("user_config") or {})}
        uri = _absolute(str(config_["model_uri"]), base)
        config_["model_uri"] = uri
        if pin and uri.startswith("models:/"):
            config_["model_uri"], config_["alias"] = pin_model_uri(uri, args.get("tracking_uri"))
            config_["revision"] = config_["model_uri"].rsplit("/", 1)[-1]
        entry["user_config"] = config_
    return config


def pin_model_uri(model_uri: str, tracking_uri: str | None) -> tuple[str, str | None]:
    """(`models:/NAME/N`, alias) for a registry alias URI; other URIs come back as they are."""
    if not model_uri.startswith("models:/"):
        return model_uri, None
    name, _, alias = model_uri.removeprefix("models:/").partition("@")
    if not alias:
        return model_uri, None
    return f"models:/{name}/{_registry_version(model_uri, tracking_uri)}", alias


def _registry_version(model_uri: str, tracking_uri: str | None) -> str:
    """The version a registry URI points at now (aliases move; versions do not)."""
    import os

    from outfitter.platform import registry

    name, _, ref = model_uri.removeprefix("models:/").partition("@")
    if not ref:
        return model_uri.rsplit("/", 1)[-1]
    if tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    registry.configure_tracking()
    version = registry.version_by_alias(name, ref)
    if version is None:
        raise ServeConfigError(f"{model_uri}: registered model {name!r} has no alias {ref!r}")
    return str(version.version)


def deploy(config: dict[str, Any], *, timeout_s: float = 300.0) -> list[str]:
    """Start Serve (on the Ray instance this process is connected to) and apply `config`.

    Returns the application names once all are RUNNING; raises when one fails to deploy.
    """
    from ray.serve._private import api as serve_api  # what `serve run CONFIG` calls
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    client = serve_api.serve_start(
        http_options=schema.http_options.model_dump(),
        proxy_location=schema.proxy_location,
    )
    client.deploy_apps(schema, _blocking=False)
    names = [app.name for app in schema.applications]
    wait_until_running(names, timeout_s=timeout_s)
    return names


def wait_until_running(names: list[str], *, timeout_s: float = 300.0) -> None:
    """Poll `serve.status()` until every app in `names` is RUNNING (fails fast on DEPLOY_FAILED)."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        apps = serve.status().applications
        states = {n: (apps[n].status if n in apps else "NOT_STARTED") for n in names}
        failed = [
            _why(n, apps[n]) for n, s in states.items() if s in ("DEPLOY_FAILED", "UNHEALTHY")
        ]
        if failed:
            raise RuntimeError("Serve applications failed to deploy: " + "; ".join(failed))
        if all(s == "RUNNING" for s in states.values()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"Serve applications not running after {timeout_s:.0f}s: {states}")
        time.sleep(0.5)


def _why(name: str, status) -> str:
    """The failing deployments of an app and the last error line of each (not the traceback)."""
    reasons = []
    for deployment, info in status.deployments.items():
        lines = [ln.strip() for ln in (info.message or "").splitlines() if ln.strip()]
        errors = [ln for ln in lines if "Error" in ln or "Exception" in ln]
        if info.status not in ("HEALTHY", "UPDATING") and lines:
            reasons.append(f"{deployment}: {(errors or lines)[-1][:500]}")
    return f"{name}: " + ("; ".join(reasons) or status.message.strip().splitlines()[-1][:500])


def url_of(config: dict[str, Any]) -> str:
    http = config.get("http_options") or {}
    return f"http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}"
