"""Outfitter: outfit compatibility and complementary-item retrieval on Ray + MLflow + faiss.

Layout: `outfitter.data` (catalog formats, synthetic catalog, datasets), `outfitter.model`
(plain PyTorch models), `outfitter.platform` (Ray Data/Train/Tune/Serve, MLflow, faiss),
`outfitter.cli` (the `outfitter` command).
"""

__version__ = "0.1.0"
