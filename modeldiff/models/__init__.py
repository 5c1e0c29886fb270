"""Model references and loading: a ref (toy, GGUF, noise copy, directory, hub id, or a scheme plugged in by the
platform such as models:/) becomes a `LoadedModel` with an identity and an input space. No MLflow here."""

from .loaded import LoadedModel, cache_root, check_comparable, decode_digits, describe_space, vocabulary_key
from .refs import MODEL_REFS, RefScheme, load_model, toy_task

__all__ = [
    "LoadedModel",
    "MODEL_REFS",
    "RefScheme",
    "cache_root",
    "check_comparable",
    "decode_digits",
    "describe_space",
    "load_model",
    "toy_task",
    "vocabulary_key",
]
