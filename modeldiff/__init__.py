"""modeldiff: compare two language models in their input space (Model-diff).

The method modules here import neither MLflow nor Accelerate: they take arrays and models and
return plain results. `modeldiff.tracking` and `entrypoints/` do the logging.
"""
__version__ = "0.1.0"
