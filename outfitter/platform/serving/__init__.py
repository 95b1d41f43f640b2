"""Serving: the FastAPI app and its Ray Serve deployments over a model version and its faiss index.

`schemas` (request/response models and limits), `service` (endpoint semantics over a model
backend), `core` (plain model-side classes, no Ray), `app` (FastAPI app factory), `deployments`
(Ray Serve deployments and the application builder), `launch` (`outfitter serve`).
"""
