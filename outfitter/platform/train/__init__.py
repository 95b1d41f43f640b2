"""Ray Train: a tracked training run, from the dataset check to a registered model version.

`settings` (TrainSettings, the validated run settings), `loop` (EpochRunner: one worker's data
shards, model, optimiser and checkpoints), `trainer` (`train_loop_per_worker` and `build_trainer`,
the one place that assembles the Ray scaffolding), `runs` (`train_and_register`: MLflow run,
evaluation, plots, registry; `shared_inputs`, shared with Tune).

May import `outfitter.model`, `outfitter.data` and the platform's top-level modules (`embed`,
`vectors`, `evaluation`, `plots`, `index`, `registry`, `redact`); never `serve/` or `tune/`.
"""
