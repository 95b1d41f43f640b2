"""Everything Ray and MLflow; the folder maps onto the card's Ray Train, Ray Tune and Ray Serve.

- `train/`: Ray Train (settings, the per-worker loop, the trainer, a tracked run).
- `tune/`: Ray Tune (search YAML schema, trials, the `outfitter tune` driver); uses `train/`.
- `serve/`: Ray Serve (FastAPI app, deployment, launch, the plain uvicorn app).
- Shared by all three, at this level: `local_ray` (the commands' one `ray.init`), `embed` (Ray
  Data catalog embedding), `vectors` (open a checkpoint, cached catalog vectors), `evaluation`,
  `plots`, `index` and `index_tuning` (faiss), `registry` (MLflow models and aliases),
  `mlflow_pyfunc` (the models-from-code file registered versions load: keep its path), `redact`;
  `demo` and `demo_show` (`outfitter demo`) use them all.

Modules import `ray` and `mlflow` inside, never `outfitter.model`/`outfitter.data` the other way;
`serve/` never imports `train/` or `tune/`.
"""
