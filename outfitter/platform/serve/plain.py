"""The serving app without Ray: one process, model in-process (`LocalBackend`), for uvicorn.

    OUTFITTER_MODEL=models:/outfitter@champion OUTFITTER_DATA=outfitter-work/data \\
        uvicorn --factory outfitter.platform.serve.plain:app_from_env --host 127.0.0.1

Same routes, schemas and guards as the Serve ingress; no batching across requests, no
autoscaling, no hot swap. `bench/serve_load.py` uses it as the baseline a user would pick instead.
"""

from __future__ import annotations

import os

from fastapi import FastAPI


def app_from_env() -> FastAPI:
    """Build the app from `OUTFITTER_MODEL`, `OUTFITTER_DATA` and optional `OUTFITTER_DEVICE`."""
    from outfitter.data import load_catalog
    from outfitter.platform.serve.app import create_app
    from outfitter.platform.serve.core import LocalBackend, load_state, settle_heap
    from outfitter.platform.serve.service import CatalogService

    missing = [k for k in ("OUTFITTER_MODEL", "OUTFITTER_DATA") if not os.environ.get(k)]
    if missing:
        raise RuntimeError(f"set {' and '.join(missing)} (model URI, catalog folder)")
    catalog = load_catalog(os.environ["OUTFITTER_DATA"])
    state = load_state(
        os.environ["OUTFITTER_MODEL"],
        os.environ["OUTFITTER_DATA"],
        device=os.environ.get("OUTFITTER_DEVICE", "auto"),
        catalog=catalog,
    )
    app = create_app(CatalogService(catalog, LocalBackend(state)))
    settle_heap()  # as a Serve replica does after loading: no full collections while serving
    return app
