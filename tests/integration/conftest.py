"""Fixtures of the integration tier: one temporary tracking store per module and the toy chain run in it once."""

import pytest

from support import sqlite_store
from support.chains import EXPERIMENT, OVERRIDES, mlflow_run, runs_of


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Tracking store, experiment and model cache for this module, in the environment of this process
    (in-process entry points) and of its subprocesses."""
    with sqlite_store(tmp_path_factory.mktemp("mlflow"), EXPERIMENT) as store:
        yield store


@pytest.fixture(scope="module")
def chain(store):
    """`mlflow run . -e main` once: the parent run and its children."""
    res = mlflow_run(store, "main", config="configs/toy.yaml", overrides=OVERRIDES)
    assert res.returncode == 0, res.stderr[-3000:]
    store["main_output"] = res.stdout + res.stderr  # what a user sees at the end of the run
    parent = runs_of(store, "main", "FINISHED")[0]
    return parent, {
        k.removeprefix("modeldiff.run."): v for k, v in parent.data.tags.items() if k.startswith("modeldiff.run.")
    }
