"""Registry versions written the way anyone with access to the registry can: straight through MLflow's client, with
whatever `model/modeldiff_ref.json` and tags they like (modeldiff register would refuse most of these)."""

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from modeldiff.platform.model_registry import IDENTITY_TAG, REF_TAG, TOKENIZER_TAG


def craft_version(name: str, ref_info: dict | None, vocabulary: str, identity: str | None = None, tags=None):
    """A version of `name` whose model/ artifact holds `ref_info` as modeldiff_ref.json (None: no such file), tagged
    like a modeldiff registration of that vocabulary key; returns the ModelVersion."""
    with mlflow.start_run(run_name=f"crafted {name}") as run:
        mlflow.log_dict(ref_info if ref_info is not None else {"not": "a ref"}, "model/other.json")
        if ref_info is not None:
            mlflow.log_dict(ref_info, "model/modeldiff_ref.json")
        source = mlflow.get_artifact_uri("model")
    client = MlflowClient()
    try:
        client.create_registered_model(name)
    except MlflowException:
        pass  # exists
    version_tags = {
        REF_TAG: str((ref_info or {}).get("ref", "")),
        IDENTITY_TAG: identity or f"crafted:{name}:{run.info.run_id[:8]}",
        TOKENIZER_TAG: vocabulary,
        **(tags or {}),
    }
    version = client.create_model_version(name, source, run_id=run.info.run_id, tags=version_tags)
    return client.get_model_version(name, version.version)


def by_reference(ref: str) -> dict:
    return {"ref": ref, "copied": False}
