"""MLproject entry points: parse arguments, load the config, call `modeldiff`, log to MLflow."""
