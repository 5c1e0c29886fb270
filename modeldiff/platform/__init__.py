"""The MLflow platform: tracking, the model registry, the stages (one module per MLproject entry point), the process
group (Accelerate) and registry screening. Method, analysis and models never import this package; it imports them.

`models:/<name>/<version>` refs load once modeldiff.platform.model_registry is imported (every entry point's set-up
imports it): that module plugs the scheme into the model loader.
"""
