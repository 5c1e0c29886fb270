"""MLflow bookkeeping: the only library module that imports mlflow.

Runs are found by tags: `modeldiff.entry_point` says which stage made a run, `modeldiff.config_hash`
fingerprints everything its result depends on (set once known; only finished runs are reused).
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from modeldiff.config import flatten
from modeldiff.method.outdist import OutputDistribution
from modeldiff.method.uncertainty import REPLICATES_FILE, SideReplicates

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "modeldiff"  # where runs go unless MLFLOW_EXPERIMENT_NAME/_ID or `mlflow run` say otherwise
# MLflow 3's UI opens an experiment of this kind on its runs table (without a kind it shows the GenAI view)
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
ENTRY_POINT = "modeldiff.entry_point"
CONFIG_HASH = "modeldiff.config_hash"
MODEL, MODEL_A, MODEL_B = "modeldiff.model", "modeldiff.model_a", "modeldiff.model_b"
DIRECTION = "modeldiff.direction"
# set when a run starts, so an interrupted run can be matched to the config that would resume it
PENDING_HASH = "modeldiff.pending_hash"
CHECKPOINT_STEP = "modeldiff.checkpoint_step"
CHECKPOINT_FILE = "checkpoints/pt_state.pt"
RESUMED_FROM = "modeldiff.resumed_from"


def setup():
    """An embedded SQLite store in the working directory unless MLFLOW_TRACKING_URI says otherwise."""
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri(DEFAULT_TRACKING_URI)


def default_experiment_id() -> str | None:
    """The experiment `modeldiff` (made if missing), or None where MLflow has been told one: MLFLOW_EXPERIMENT_NAME
    or _ID, or `mlflow run`, which has made the run already (`mlflow run ... --experiment-name modeldiff`)."""
    if any(os.environ.get(v) for v in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")):
        return None
    experiment = mlflow.get_experiment_by_name(DEFAULT_EXPERIMENT)
    return experiment.experiment_id if experiment else mlflow.create_experiment(DEFAULT_EXPERIMENT)


def mark_training_experiment(experiment_id: str):
    """Give the experiment MLflow's "model training" kind if it has no kind yet (a user's choice stays)."""
    client = MlflowClient()
    if EXPERIMENT_KIND_TAG not in client.get_experiment(experiment_id).tags:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


def identity_tag(model_tag: str) -> str:
    return f"{model_tag}.identity"


@contextmanager
def start_run(entry_point: str, cfg, params: dict | None = None, run_name: str | None = None):
    """A run (nested under the active one, if any) with its entry point tag, resolved config and params.
    An exception ends it FAILED, keeping what was logged before."""
    parent = mlflow.active_run()
    nested = parent is not None
    experiment_id = parent.info.experiment_id if nested else default_experiment_id()
    with mlflow.start_run(nested=nested, run_name=run_name, experiment_id=experiment_id) as run:
        if not nested:  # child runs stay in their parent's experiment, which is marked already
            mark_training_experiment(run.info.experiment_id)
        mlflow.set_tag(ENTRY_POINT, entry_point)
        mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config/resolved.yaml")
        known = run.data.params  # `mlflow run` has logged its parameters already; values are immutable
        fresh = {k: v for k, v in {**flatten(cfg), **(params or {})}.items() if k not in known}
        mlflow.log_params({k: "" if v is None else v for k, v in fresh.items()})
        yield run


def finish(config_hash: str, dist=None) -> str | None:
    """How every stage's run ends, once its results are logged: the config hash last (it marks the run reusable),
    then the run id. Called on the main process alone, or with `dist` by every process (each gets the run id)."""
    run_id = None
    if dist is None or dist.is_main:
        mlflow.set_tag(CONFIG_HASH, config_hash)
        run_id = mlflow.active_run().info.run_id
    return dist.broadcast(run_id) if dist is not None else run_id


def get_run(run_id: str, entry_point: str):
    """The finished run `run_id` of `entry_point`, or a ValueError saying what to pass instead."""
    try:
        run = MlflowClient().get_run(str(run_id).strip())
    except MlflowException as e:
        if e.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise
        raise ValueError(
            f"run {run_id!r} does not exist in {mlflow.get_tracking_uri()}: pass the run id of a "
            f"finished {entry_point} run (mlflow ui or `mlflow runs list`), and check "
            "MLFLOW_TRACKING_URI"
        ) from None
    actual = run.data.tags.get(ENTRY_POINT)
    if actual != entry_point:
        raise ValueError(
            f"run {run_id} is a {actual or 'non-modeldiff'} run, not a {entry_point} run: "
            f"pass the run id of a {entry_point} run"
        )
    if run.info.status != "FINISHED":
        raise ValueError(
            f"{entry_point} run {run_id} has status {run.info.status}: pass a finished run, or run {entry_point} again"
        )
    return run


def find_finished_run(entry_point: str, config_hash: str, experiment_id: str) -> str | None:
    """The newest finished run of `entry_point` with this config hash (for reuse), or None."""
    runs = MlflowClient().search_runs(
        [experiment_id],
        max_results=1,
        order_by=["attributes.start_time DESC"],
        filter_string=f"tags.`{ENTRY_POINT}` = '{entry_point}' and tags.`{CONFIG_HASH}` = '{config_hash}' "
        "and attributes.status = 'FINISHED'",
    )
    return runs[0].info.run_id if runs else None


def find_resumable_run(entry_point: str, config_hash: str, experiment_id: str) -> str | None:
    """The newest failed or killed run of `entry_point` for this config hash that left a checkpoint, or None.
    (A RUNNING one may still be alive: it is resumed only when asked for by run id.)"""
    runs = MlflowClient().search_runs(
        [experiment_id],
        max_results=20,
        order_by=["attributes.start_time DESC"],
        filter_string=f"tags.`{ENTRY_POINT}` = '{entry_point}' and tags.`{PENDING_HASH}` = '{config_hash}' "
        f"and tags.`{CHECKPOINT_STEP}` != ''",
    )
    return next((r.info.run_id for r in runs if r.info.status in ("FAILED", "KILLED")), None)


def log_checkpoint(ckpt: dict):
    """Overwrite the active run's checkpoint artifact (written to a temporary file first, then logged)."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / Path(CHECKPOINT_FILE).name
        torch.save(ckpt, local)
        mlflow.log_artifact(str(local), str(Path(CHECKPOINT_FILE).parent))
    mlflow.set_tag(CHECKPOINT_STEP, str(ckpt["step"]))


def load_checkpoint(run_id: str, entry_point: str, config_hash: str) -> dict:
    """The last checkpoint of an interrupted run, after checking that this config and model would resume it.
    A run left RUNNING by a killed process is marked KILLED."""
    import torch

    try:
        run = MlflowClient().get_run(str(run_id).strip())
    except MlflowException:
        raise ValueError(
            f"run {run_id!r} does not exist in {mlflow.get_tracking_uri()}: pass the run id of an "
            f"interrupted {entry_point} run to resume"
        ) from None
    tags = run.data.tags
    if tags.get(ENTRY_POINT) != entry_point:
        raise ValueError(
            f"run {run_id} is a {tags.get(ENTRY_POINT) or 'non-modeldiff'} run: resume needs the run id "
            f"of an interrupted {entry_point} run"
        )
    if run.info.status == "FINISHED":
        raise ValueError(
            f"{entry_point} run {run_id} finished: there is nothing to resume, use its results as they are"
        )
    if tags.get(PENDING_HASH) != config_hash:
        raise ValueError(
            f"run {run_id} was started with another config or model than this one: resume it with the "
            "same config, overrides and model (only checkpoint.every may differ)"
        )
    if CHECKPOINT_STEP not in tags:
        raise ValueError(
            f"run {run_id} stopped before its first checkpoint (every checkpoint.every steps): "
            "start it again without resume"
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=CHECKPOINT_FILE, dst_path=tmp)
        ckpt = torch.load(path, weights_only=True)
    if run.info.status == "RUNNING":
        MlflowClient().set_terminated(run.info.run_id, "KILLED")
    return ckpt


@contextmanager
def downloaded(run_id: str, entry_point: str, artifact_path: str):
    """A local copy of one artifact of a checked run, deleted afterwards."""
    get_run(run_id, entry_point)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=tmp)
        except (MlflowException, OSError) as e:
            raise ValueError(
                f"{entry_point} run {run_id} has no artifact {artifact_path!r} "
                f"({str(e).splitlines()[0]}): run {entry_point} again"
            ) from None
        yield Path(path)


def load_outdist(run_id: str) -> OutputDistribution:
    with downloaded(run_id, "sample_outdist", "outdist") as d:
        return OutputDistribution.load(d)


def load_draws(run_id: str) -> pd.DataFrame:
    with downloaded(run_id, "cross_eval", "cross_eval/draws.parquet") as f:
        return pd.read_parquet(f)


def load_replicates(run_id: str) -> SideReplicates:
    with downloaded(run_id, "cross_eval", f"cross_eval/{REPLICATES_FILE}") as f:
        return SideReplicates.load(f)


def has_artifact(run_id: str, artifact_path: str) -> bool:
    parent, _, _ = artifact_path.rpartition("/")
    return any(f.path == artifact_path for f in MlflowClient().list_artifacts(run_id, parent or None))


def log_replicates(replicates: SideReplicates):
    with tempfile.TemporaryDirectory() as tmp:
        replicates.save(Path(tmp) / REPLICATES_FILE)
        mlflow.log_artifact(str(Path(tmp) / REPLICATES_FILE), "cross_eval")


def load_json(run_id: str, entry_point: str, artifact_path: str) -> dict:
    with downloaded(run_id, entry_point, artifact_path) as f:
        return json.loads(f.read_text())


def log_figure(fig, artifact_file: str):
    mlflow.log_figure(fig, artifact_file)
    plt.close(fig)


def log_parquet(df: pd.DataFrame, artifact_file: str):
    out = df.copy()
    if "tokens" in out:
        out["tokens"] = [list(map(int, t)) for t in out["tokens"]]
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / Path(artifact_file).name
        out.to_parquet(local, index=False)
        mlflow.log_artifact(str(local), str(Path(artifact_file).parent))


def log_table(df: pd.DataFrame, artifact_file: str):
    """A table for the MLflow UI: tokens rendered as text so every cell is JSON."""
    out = df.copy()
    if "tokens" in out:
        out["tokens"] = [" ".join(map(str, t)) for t in out["tokens"]]
    mlflow.log_table(out, artifact_file)


WARNING = "modeldiff.warning"  # a run's warnings, "; "-joined: what the result cannot support
NOTE = "mlflow.note.content"  # a run's description (Markdown), shown on its overview page in the UI


def add_warnings(lines: list[str]):
    """Append warnings to the active run's `modeldiff.warning` tag (it may hold some already)."""
    run = mlflow.active_run()
    before = mlflow.get_run(run.info.run_id).data.tags.get(WARNING) if run else None
    mlflow.set_tag(WARNING, "; ".join([*([before] if before else []), *lines]))


def warnings_of(run_id: str) -> list[str]:
    """A run's warnings (its `modeldiff.warning` tag, split)."""
    text = MlflowClient().get_run(run_id).data.tags.get(WARNING)
    return [w for w in text.split("; ") if w] if text else []


def set_description(text: str, run_id: str | None = None):
    """A run's description (Markdown; default the active run): what it found, in words (modeldiff.views.describe)."""
    if run_id is None:
        mlflow.set_tag(NOTE, text)
    else:
        MlflowClient().set_tag(run_id, NOTE, text)


def located(runs: dict) -> dict:
    """label -> run id as label -> (experiment id, run id), for links to runs that may be in other experiments."""
    client = MlflowClient()
    return {label: (client.get_run(run_id).info.experiment_id, run_id) for label, run_id in runs.items()}


def active_experiment_id() -> str:
    return mlflow.active_run().info.experiment_id


def how_to_open(experiment_id: str, run_id: str) -> list[str]:
    """Where a run is and how to open it in the UI (modeldiff.views.describe.where_to_look)."""
    from modeldiff.views.describe import where_to_look

    uri = mlflow.get_tracking_uri()
    return where_to_look(uri, MlflowClient().get_experiment(experiment_id).name, experiment_id, run_id)
