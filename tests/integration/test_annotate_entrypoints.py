"""The `annotate` entry point for real: `main` with an automatic annotator on both sides, a sheet exported by
`mlflow run`, filled and imported, a judge by model ref, and bad sheets. Temporary SQLite store and model cache."""

import csv
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from entrypoints import annotate, main
from modeldiff.analysis.annotate import read_sheet
from modeldiff.platform import tracking
from support import artifacts
from support.chains import OVERRIDES, mlflow_run, runs_of

pytestmark = pytest.mark.integration
AUTO = OVERRIDES + " annotate.annotator=toy_rule annotate.in_main=true"
WINDOW = "-0.3,-0.05"


def _artifact(run_id: str, path: str) -> Path:
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path))


def _annotation(run_id: str) -> dict:
    return json.loads(_artifact(run_id, "annotation.json").read_text())


def _plug_in(draws: pd.DataFrame, inside: np.ndarray) -> tuple[float, float]:
    """Precision and recall when every draw in the window is scored by the toy rule (L=5, V=6, mod 10)."""
    valid = np.array([sum(t) % 10 == 0 for t in draws["tokens"]])
    return valid[inside].mean(), valid[inside].sum() / draws["in_z_other"].sum()


@pytest.fixture(scope="module")
def chain(store):  # noqa: F811
    """`main` with the toy rule on both sides: the chain's runs plus annotate_AB and annotate_BA."""
    runs = main.main(["--config", "configs/toy.yaml", "--overrides", AUTO])
    return runs, runs_of(store, "main", "FINISHED")[0]


def test_main_annotates_both_sides_with_the_toy_rule(store, chain):  # noqa: F811
    runs, parent = chain
    assert {"annotate_AB", "annotate_BA"} <= set(runs)
    for direction, side in (("AB", lambda d: d < 0), ("BA", lambda d: d > 0)):
        run_id = runs[f"annotate_{direction}"]
        ann = _annotation(run_id)
        draws = tracking.load_draws(runs[f"cross_eval_{direction}"])
        precision, recall = _plug_in(draws, side(draws["D"]).to_numpy())
        assert ann["precision"] == pytest.approx(precision, rel=1e-12)
        assert ann["recall"] == pytest.approx(recall, rel=1e-12)
        assert ann["annotator"] == "toy_rule" and ann["direction"] == direction and ann["per_bin"] == 0
        assert 0 < ann["precision_se"] < 0.05 and 0 < ann["recall_se"] < 0.05
        # the default window is the PD side, whose mass is the ratio's PD term
        ratio = json.loads(_artifact(runs["normalize"], "ratio.json").read_text())
        assert ann["window_mass"] == pytest.approx(ratio["terms"][f"PD_{direction}"], rel=1e-12)
        assert {
            "config/resolved.yaml",
            "annotation.json",
            "plots/r_D.png",
            "annotation/sheet.csv",
            "annotation/sheet.html",
        } <= set(artifacts(run_id))
        assert parent.data.metrics[f"precision_{direction}"] == ann["precision"]
        assert parent.data.metrics[f"recall_{direction}"] == ann["recall"]
        run = MlflowClient().get_run(run_id)
        assert run.data.tags["modeldiff.direction"] == direction and run.data.tags["modeldiff.model_a"] == "toy:small"
        assert run.data.metrics["precision"] == ann["precision"]
        # its description (issue 17), and the parent's: precision and recall with their errors, as logged
        note = run.data.tags["mlflow.note.content"]
        p, r = f"{ann['precision']:.3f} ± {ann['precision_se']:.3f}", f"{ann['recall']:.3f} ± {ann['recall_se']:.3f}"
        assert f"**Precision {p}, recall {r}** (± one standard error" in note
        arrow = direction[0] + "→" + direction[1]
        assert f"[cross_eval {arrow}](#/experiments/{run.info.experiment_id}/runs/" in note
        assert (
            f"annotate {arrow} (D in {ann['window']['text']}, toy_rule): precision {p}, recall {r}"
            in (MlflowClient().get_run(parent.info.run_id).data.tags["mlflow.note.content"])
        )
    # a rerun reuses every step, the annotations included
    before = len(runs_of(store, "annotate"))
    assert main.main(["--config", "configs/toy.yaml", "--overrides", AUTO]) == runs
    assert len(runs_of(store, "annotate")) == before


def test_export_fill_and_import_a_sheet(store, chain, tmp_path):  # noqa: F811
    """`mlflow run -e annotate` exports a stratified sheet; filled with the toy rule it imports to the
    stratified estimate Σ_b count(b)·r(b) / Σ_b count(b) computed here from the sheet and the draws."""
    runs, _ = chain
    ab = runs["cross_eval_AB"]
    over = OVERRIDES + " annotate.per_bin=5"
    res = mlflow_run(store, "annotate", config="configs/toy.yaml", overrides=over, cross_eval_run=ab, window=WINDOW)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "fill its score column" in res.stdout and f"-P cross_eval_run={ab}" in res.stdout
    assert f"MLFLOW_TRACKING_URI={store['env']['MLFLOW_TRACKING_URI']} mlflow artifacts download -r" in res.stdout
    export = runs_of(store, "annotate", "FINISHED")[0]
    assert export.data.tags["modeldiff.annotate.mode"] == "export"
    assert f"-P cross_eval_run={ab}" in export.data.tags["mlflow.note.content"]  # its description says what next
    assert set(artifacts(export.info.run_id)) == {
        "config/resolved.yaml",
        "annotation/sheet.csv",
        "annotation/sheet.html",
    }
    sheet = read_sheet(_artifact(export.info.run_id, "annotation/sheet.csv"))
    draws = tracking.load_draws(ab)
    d = draws["D"].to_numpy()
    inside = (d >= -0.3) & (d <= -0.05)
    edges = np.linspace(-0.3, -0.05, 6)  # 5 bins of 0.05
    counts = np.bincount(np.clip(np.searchsorted(edges, d[inside], side="right") - 1, 0, 4), minlength=5)
    per_bin = sheet.groupby("bin")["n_draws"].sum().reindex(range(5), fill_value=0).to_numpy()
    assert (per_bin == np.minimum(counts, 5)).all() and sheet["score"].isna().all()
    assert sheet["D"].between(-0.3, -0.05).all() and sheet["id"].str.startswith("AB-").all()
    page = _artifact(export.info.run_id, "annotation/sheet.html").read_text()
    assert all(t in page for t in sheet["text"]) and ab in page

    sheet["score"] = [float(sum(map(int, t.split())) % 10 == 0) for t in sheet["tokens"]]
    sheet["comment"] = "checked"  # extra columns are allowed
    filled = tmp_path / "filled.csv"
    sheet.to_csv(filled, index=False)  # as another tool would write it
    imported = annotate.main(
        [
            "--config",
            "configs/toy.yaml",
            "--overrides",
            over,
            "--cross_eval_run",
            ab,
            f"--window={WINDOW}",
            "--scores",
            str(filled),
        ]
    )
    ann = _annotation(imported)
    r = (
        sheet.assign(w=sheet["n_draws"] * sheet["score"])
        .groupby("bin")[["w", "n_draws"]]
        .sum()
        .pipe(lambda g: g["w"] / g["n_draws"])
        .reindex(range(5))
        .to_numpy()
    )
    assert ann["precision"] == pytest.approx(np.nansum(r * counts) / counts.sum(), rel=1e-12)
    assert ann["recall"] == pytest.approx(np.nansum(r * counts) / draws["in_z_other"].sum(), rel=1e-12)
    assert ann["annotator"] == "human" and ann["counts"]["n_annotated"] == len(sheet)
    assert [b["n_draws"] for b in ann["bins"]] == counts.tolist()
    assert {"annotation.json", "plots/r_D.png", "annotation/sheet.csv", "annotation/scores.csv"} <= set(
        artifacts(imported)
    )
    # the automatic toy rule scores every draw of the same window: the plug-in over all of them
    auto = annotate.main(
        ["--config", "configs/toy.yaml", "--overrides", AUTO, "--cross_eval_run", ab, f"--window={WINDOW}"]
    )
    assert _annotation(auto)["precision"] == pytest.approx(_plug_in(draws, inside)[0], rel=1e-12)


def test_judge_by_model_ref(chain):
    """Model B itself as the judge of A's draws: score 1 exactly where the draws' z_B is below the threshold."""
    runs, _ = chain
    ab = runs["cross_eval_AB"]
    run_id = annotate.main(
        [
            "--config",
            "configs/toy.yaml",
            "--cross_eval_run",
            ab,
            "--overrides",
            OVERRIDES + " annotate.annotator=judge annotate.judge.model=toy:large annotate.judge.threshold=1.75",
        ]
    )
    draws = tracking.load_draws(ab)
    inside = (draws["D"] < 0).to_numpy()
    good = (draws["z_B"] < 1.75).to_numpy()
    ann = _annotation(run_id)
    assert ann["precision"] == pytest.approx(good[inside].mean(), abs=1e-3)  # float32 z at the threshold
    assert ann["annotator"] == "judge"
    scored = read_sheet(_artifact(run_id, "annotation/sheet.csv"))
    assert ((scored["score"] == 1.0) == (scored["z_B"] < 1.75)).mean() > 0.99


def _fails(capsys, argv, match):
    with pytest.raises(SystemExit) as e:
        annotate.main(["--config", "configs/toy.yaml", "--overrides", OVERRIDES] + argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("modeldiff: error: ") and "\n" not in err, err
    assert match in err, err


def test_bad_input_is_one_line_and_exits_2(chain, capsys, tmp_path):
    runs, _ = chain
    ab = runs["cross_eval_AB"]
    _fails(capsys, ["--cross_eval_run", runs["normalize"]], "is a normalize run, not a cross_eval run")
    _fails(capsys, ["--cross_eval_run", ab, "--window=-0.6,-1"], "window '-0.6,-1' is empty or reversed")
    _fails(capsys, ["--cross_eval_run", ab, "--window=5,6"], "no draw has D in the window [5.0, 6.0]")
    bad = tmp_path / "bad.csv"
    with open(bad, "w", newline="") as f:
        csv.writer(f).writerows([["id", "score"], ["AB-1", "0.5"], ["AB-2", "1.5"]])
    _fails(
        capsys, ["--cross_eval_run", ab, "--scores", str(bad)], "data row 2 (id 'AB-2'): score '1.5' is outside [0, 1]"
    )
    _fails(capsys, ["--cross_eval_run", ab, "--scores", str(tmp_path / "none.csv")], "cannot read annotation sheet")
    with open(bad, "w", newline="") as f:
        csv.writer(f).writerows([["id", "score"], ["AB-x", "0.5"]])
    _fails(capsys, ["--cross_eval_run", ab, "--scores", str(bad)], "data row 1 (id 'AB-x'): unknown id")
    _fails(
        capsys,
        ["--cross_eval_run", ab, "--scores", str(bad), "--overrides", AUTO],
        "pass either a filled sheet (with annotator human) or an automatic annotator",
    )
