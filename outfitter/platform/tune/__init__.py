"""Ray Tune: hyperparameter searches whose trials are Ray Train runs of the same training loop.

`config` (the YAML schema of a search, `tune_configs/*.yaml`, validated before anything starts),
`search` (the trial function, the Tuner, results), `driver` (`outfitter tune`: MLflow parent run,
new or restored search, registry of the best trial).

May import `train/` (settings, trainer, runs), `outfitter.model` and the platform's top-level
modules (`registry`, `plots`); never `serve/`. A search's trainable is pickled by module path
(`outfitter.platform.tune.search.run_trial`), so renaming this module breaks the restore of a
search stored before the rename.
"""
