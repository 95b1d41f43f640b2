"""Ray Serve: the FastAPI app and its Ray Serve deployment over a model version and its faiss index.

`schemas` (request/response models and limits), `service` (endpoint semantics over a model
backend), `core` (plain model-side functions, no Ray), `app` (FastAPI app factory, admission
bound), `deployments` (the one Ray Serve deployment and the application builder), `launch`
(`outfitter serve`: config pinning, Serve's HAProxy ingress), `plain` (the uvicorn baseline),
`errors`, `security`.

May import `outfitter.model`, `outfitter.data` and the platform's top-level `vectors`, `index`,
`registry` and `redact`; never `train/` or `tune/` (a replica loads a registered version, it does
not know how it was trained). Serve configs name `outfitter.platform.serve.deployments:build_app`.
"""
