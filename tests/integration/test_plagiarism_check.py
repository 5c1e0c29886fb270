"""`plagiarism_check` as an MLflow entry point on an embedded SQLite store: a pair through `mlflow run`, the verdicts
for a noise copy and an independent seed, lineage tags on a registry version, `screen poll` for stores without
webhooks, and bad input."""

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from entrypoints import plagiarism_check
from modeldiff.config import load_config
from modeldiff.platform import lineage_index
from modeldiff.platform.model_registry import register_model
from modeldiff.platform.screening import COUNTERPART_TAG, STATUS_TAG, VERDICT_TAG
from modeldiff.views import describe
from support import sqlite_store

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = "modeldiff-plagiarism-tests"
OVERRIDES = (
    "toy.train_steps=60 toy.batch_size=128 sampler.ladders=4 sampler.steps=200 sampler.burn_in=50 "
    "uncertainty.n_replicates=40 cross_eval.n_draws=500 plagiarism.permutations=19 plagiarism.simulations=49"
)
COPY = "noise:1e-2:relative:toy:small"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with sqlite_store(tmp_path_factory.mktemp("plagiarism"), EXPERIMENT) as store:
        yield store


def runs_of(store, entry_point):
    return MlflowClient().search_runs(
        [store["experiment_id"]],
        f"tags.`modeldiff.entry_point` = '{entry_point}'",
        order_by=["attributes.start_time DESC"],
    )


@pytest.fixture(scope="module")
def copy_check(store):
    cmd = [
        "mlflow",
        "run",
        str(ROOT),
        "-e",
        "plagiarism_check",
        "--env-manager",
        "local",
        "--experiment-name",
        EXPERIMENT,
        "-P",
        f"overrides={OVERRIDES}",
        "-P",
        "model_a=toy:small",
        "-P",
        f"model_b={COPY}",
    ]
    res = subprocess.run(cmd, cwd=ROOT, env=store["env"], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return runs_of(store, "plagiarism_check")[0]


def test_mlflow_run_pair_logs_the_verdict_and_its_evidence(copy_check):
    run = copy_check
    assert run.info.status == "FINISHED" and run.data.tags["modeldiff.verdict"] == "suspected_copy_of"
    rep = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/plagiarism.json")
    assert rep["verdict"] == "suspected_copy_of", rep["reason"]
    # the direction comes from evidence or is unknown, never from the order of the arguments
    if rep["direction_evidence"] == "unknown":
        assert rep["copy_model"] is None and rep["parent_model"] is None
    else:
        assert rep["copy_model"] == COPY and rep["parent_model"] == "toy:small"
    assert rep["white_box"]["p_value"] < 1e-6 and rep["white_box"]["structure_p_value"] > 1e-3
    for side in "AB":  # the asymmetry statistics with their intervals, from the draws
        s = rep["black_box"][side]
        assert s["interval"][0] <= s["other_wins"] <= s["interval"][1] and s["n_draws"] == 500
    assert set(rep["runs"]) == {"sample_outdist_A", "sample_outdist_B", "cross_eval_AB", "cross_eval_BA", "normalize"}
    for child in rep["runs"].values():
        assert MlflowClient().get_run(child).data.tags["mlflow.parentRunId"] == run.info.run_id
    files = {f.path for d in (None, "plots", "config") for f in MlflowClient().list_artifacts(run.info.run_id, d)}
    assert {"plagiarism.json", "plots/D_overlay.png", "config/resolved.yaml"} <= files
    assert run.data.metrics["weight_p_value"] == rep["white_box"]["p_value"]
    assert run.data.tags["modeldiff.model_a"] == "toy:small" and run.data.tags["modeldiff.model_b"] == COPY
    # its description (issue 17): the verdict, the copy and its parent, the evidence as logged, the chain's runs
    note = run.data.tags["mlflow.note.content"]
    assert note.startswith("### Verdict: suspected_copy_of\n") and "Which one is the copy: " in note
    if rep["copy_model"]:
        assert f"**`{COPY}` is a suspected copy of `toy:small` (its parent).**" in note
    bb = rep["black_box"]
    assert f"- median |D| over the pair's own z spread ({bb['scale']:.4f}): {bb['relative_D']:.3f} [" in note
    assert f"A has the lower NLL on {describe.percent(bb['B']['other_wins'])} of the draws" in note
    assert f"independence p = {rep['white_box']['p_value']:.3g}" in note
    assert (
        f"[normalize](#/experiments/{run.info.experiment_id}/runs/{rep['runs']['normalize']}?{describe.WORKFLOW})"
        in note
    )


def test_independent_seed_is_no_copy_and_steps_are_reused(store, copy_check):
    before = len(runs_of(store, "sample_outdist"))
    rep = plagiarism_check.main(["--overrides", OVERRIDES, "--model_a", "toy:small", "--model_b", "toy:small:seed=1"])
    assert rep["verdict"] in ("independent", "inconclusive"), rep["reason"]
    assert rep["white_box"]["p_value"] > 1e-6
    assert len(runs_of(store, "sample_outdist")) == before + 1  # toy:small's distribution came from the first check


def test_white_box_mode_runs_no_chain(store, copy_check):
    """plagiarism.mode=white_box: the weights alone, no sampling; inconclusive (with why) across architectures."""
    before = {stage: len(runs_of(store, stage)) for stage in ("sample_outdist", "cross_eval", "normalize")}
    white_box = ["--overrides", OVERRIDES + " plagiarism.mode=white_box", "--model_a", "toy:small"]
    rep = plagiarism_check.main(white_box + ["--model_b", COPY])
    assert (rep["mode"], rep["verdict"]) == ("white_box", "suspected_copy_of"), rep["reason"]
    assert rep["copy_model"] in (COPY, None) and (rep["copy_model"] is None) == (rep["direction_evidence"] == "unknown")
    assert rep["black_box"] is None and rep["runs"] == {} and rep["ratio"] is None
    assert rep["white_box"]["p_value"] < 1e-6 and "white box only" in rep["reason"]
    rep = plagiarism_check.main(white_box + ["--model_b", "toy:large"])
    assert (rep["mode"], rep["verdict"]) == ("white_box", "inconclusive") and "architectures differ" in rep["reason"]
    assert {stage: len(runs_of(store, stage)) for stage in before} == before
    run = runs_of(store, "plagiarism_check")[0]
    assert run.data.tags["modeldiff.verdict"] == "inconclusive" and "q_A" not in run.data.metrics


def test_registry_versions_get_lineage_tags_and_poll_screens_them(store, copy_check):
    cfg = load_config("toy", OVERRIDES)
    register_model("toy:small", "origin", cfg)
    register_model(COPY, "derived", cfg)
    # an explicit pair check on a registry version writes its tags too
    plagiarism_check.main(["--overrides", OVERRIDES, "--model_a", "models:/origin/1", "--model_b", "models:/derived/1"])
    tags = MlflowClient().get_model_version("derived", "1").tags
    assert tags[VERDICT_TAG] == "suspected_copy_of" and tags[COUNTERPART_TAG] == "models:/origin/1"
    # a store without webhooks: `screen poll --once` screens every version not screened yet (origin/1 here)
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "modeldiff.cli",
            "screen",
            "poll",
            "--once",
            "--overrides",
            OVERRIDES,
            "--state-dir",
            str(store["tmp"] / "state"),
        ],
        cwd=ROOT,
        env=store["env"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    origin = MlflowClient().get_model_version("origin", "1").tags
    assert origin[STATUS_TAG] == "done" and origin[VERDICT_TAG] == "independent", origin.get("modeldiff.lineage.error")
    assert "1 unscreened version(s) found" in res.stderr
    assert json.loads(origin["modeldiff.lineage.statistic"])["note"].startswith("no model of its vocabulary")
    # the lineage index: origin/1 got its fingerprint when screened; derived/1 (checked as a pair, never screened) gets
    # one from the next screening that meets it; with a shortlist of 1, one of the two is checked (white box: cheap)
    assert lineage_index.load(origin[lineage_index.FINGERPRINT_TAG]) is not None
    register_model("noise:1e-1:relative:toy:small", "third", cfg)
    body = plagiarism_check.main(
        ["--overrides", OVERRIDES + " plagiarism.mode=white_box screening.shortlist=1", "--version", "models:/third/1"]
    )
    index = body["lineage"]
    assert len(index["checked"]) == 1 and [c["version"] for c in index["screened_out"]] != index["checked"]
    assert list(body["pairs"]) == index["checked"] and body["verdict"] in ("suspected_copy_of", "related")
    for name in ("derived", "third"):
        tag = MlflowClient().get_model_version(name, "1").tags[lineage_index.FINGERPRINT_TAG]
        assert (
            lineage_index.load(tag).vocabulary == lineage_index.load(origin[lineage_index.FINGERPRINT_TAG]).vocabulary
        )


def _fails(capsys, argv, match):
    with pytest.raises(SystemExit) as e:
        plagiarism_check.main(["--overrides", OVERRIDES] + argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("modeldiff: error: ") and "\n" not in err, err
    assert match in err, err


def test_bad_input_is_one_line(store, capsys):
    _fails(capsys, ["--model_a", "toy:small"], "needs model_a and model_b, or version=")
    _fails(capsys, ["--version", "models:/nothing/1"], "names no model version")
    _fails(capsys, ["--model_a", "toy:small", "--model_b", "toy:nope"], "unknown toy model")
