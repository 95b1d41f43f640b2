"""Everything Ray and MLflow: embedding (Ray Data), training (Ray Train), search (Ray Tune),
registry (MLflow), catalog index (faiss) and serving (Ray Serve).

Modules import `ray` and `mlflow` inside, never `outfitter.model`/`outfitter.data` the other way.
"""
