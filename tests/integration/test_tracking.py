"""Where runs land: the experiment `modeldiff` by default (MLFLOW_EXPERIMENT_NAME names another), marked as MLflow's
"model training" kind so the UI opens on the runs table; a kind a user chose stays; child runs stay in their
parent's experiment. A temporary SQLite store."""

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from modeldiff.config import load_config
from modeldiff.platform import tracking

KIND = "mlflow.experimentKind"


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # new experiments keep their artifacts under ./mlruns
    for var in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    yield MlflowClient(uri)
    mlflow.set_tracking_uri(previous)


def test_runs_go_to_the_modeldiff_experiment_of_the_training_kind(store):
    tracking.setup()
    cfg = load_config("toy")
    with tracking.start_run("normalize", cfg) as parent:
        with tracking.start_run("cross_eval", cfg) as child:
            pass
    experiment = store.get_experiment(parent.info.experiment_id)
    assert experiment.name == "modeldiff" and experiment.tags[KIND] == "custom_model_development"
    assert store.get_run(child.info.run_id).info.experiment_id == experiment.experiment_id


def test_a_named_experiment_is_used_and_a_chosen_kind_kept(store, monkeypatch):
    chosen = store.create_experiment("mine", tags={KIND: "genai_development"})
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "mine")
    tracking.setup()
    with tracking.start_run("normalize", load_config("toy")) as run:
        pass
    assert run.info.experiment_id == chosen
    assert store.get_experiment(chosen).tags[KIND] == "genai_development"
