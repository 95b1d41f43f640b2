"""Serving: the FastAPI app and its Ray Serve deployment over a model version and its faiss index.

`schemas` (request/response models and limits), `service` (endpoint semantics over a model
backend), `core` (plain model-side functions, no Ray), `app` (FastAPI app factory, admission
bound), `deployments` (the one Ray Serve deployment and the application builder), `launch`
(`outfitter serve`: config pinning, Serve's HAProxy ingress), `plain` (the uvicorn baseline).
"""
