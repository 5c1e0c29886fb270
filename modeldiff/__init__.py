"""modeldiff: compare two language models in their input space (Model-diff).

Layers, each importing only those before it: `plugins`, `method`, `models`, `analysis`, `views`, `config`,
`pipeline` (none of them imports MLflow or Accelerate: they take arrays and models and return plain results), then
`platform` (MLflow: tracking, registry, stages, screening) and `ops` (the team stack), then `cli` and the
`entrypoints/` launchers.
"""

__version__ = "0.1.0"
