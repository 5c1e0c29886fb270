"""Sec. 3.4 annotation: windows and D bins, sheets (round trip, bad rows), annotators, and precision/recall
against exact enumeration of the tiny toy with its own rule as the annotator."""

import math

import numpy as np
import pandas as pd
import pytest

from modeldiff.analysis import annotate
from modeldiff.analysis.annotate import Window, parse_window
from modeldiff.config import load_config
from modeldiff.method.cross_eval import cross_evaluate
from modeldiff.method.uncertainty import SideReplicates, side_replicates
from modeldiff.models import decode_digits
from modeldiff.views.sheet import sheet_html
from support import OUTDIST_Z_RANGE, assert_within_sigma, toy_loaded, write_rows

N_DRAWS = 40_000
REPLICATES = 200


CFG = load_config("toy")  # the tiny toy's space (L=5, V=6, mod 10) and Z = OUTDIST_Z_RANGE


@pytest.fixture(scope="module")
def draws(tiny_task, toy_scorers, outdists):
    """A→B and B→A cross-evaluations of the toy pair, decoded as digits (like the pipeline's)."""
    sides = {}
    for role, (od, src, other) in {"A": (outdists[0], *toy_scorers), "B": (outdists[1], *toy_scorers[::-1])}.items():
        sides[role] = cross_evaluate(
            od,
            tiny_task.space,
            src,
            other,
            N_DRAWS,
            role=role,
            seed=11 + (role == "B"),
            allow_empty_bins=True,
            decode=decode_digits,
        )
    return sides


@pytest.fixture(scope="module")
def replicates(draws, outdists):
    """Per side: the cross_eval replicates (stage 1's ladders resampled, as the pipeline logs them), and the same
    with stage 1 held fixed (f = 1: the draws' own noise alone)."""
    out = {}
    for (role, d), od in zip(draws.items(), outdists):
        stage1 = side_replicates(od, d["representative"], REPLICATES, seed=5, side=role)
        fixed = SideReplicates(stage1.representative, np.zeros_like(stage1.ln_f), stage1.unit_draws, "fixed")
        out[role] = {"stage1": stage1, "fixed": fixed}
    return out


@pytest.fixture(scope="module")
def rule(tiny_task):
    """The toy rule on every input of Ω, in enumeration order."""
    return tiny_task.is_valid(tiny_task.space.index_to_ids(np.arange(tiny_task.space.size))).astype(float)


def ratio_sigma(x: np.ndarray, y: np.ndarray, n: int) -> float:
    """Std of Σx/Σy over n draws uniform on the population of (x, y) pairs (delta method)."""
    ratio = x.mean() / y.mean()
    return math.sqrt(np.mean((x - ratio * y) ** 2) / n) / y.mean()


def exact_sigmas(z_a, z_b, r, window: Window, role: str, n: int) -> dict:
    """σ of the plug-in precision and recall for n draws uniform on X_src."""
    z_src, z_other = (z_a, z_b) if role == "A" else (z_b, z_a)
    lo, hi = OUTDIST_Z_RANGE
    src = (z_src >= lo) & (z_src <= hi)
    w = window.contains(z_a.astype(np.float64) - z_b)[src].astype(float)
    x = r[src] * w
    y = ((z_other >= lo) & (z_other <= hi))[src].astype(float)
    return {"precision": ratio_sigma(x, w, n), "recall": ratio_sigma(x, y, n)}


def toy_rule(cfg=CFG):
    return annotate.make_annotator("toy_rule", cfg)


@pytest.mark.parametrize("role,window", [("A", ""), ("B", ""), ("A", "[-0.3,-0.05]")])
def test_toy_rule_precision_and_recall_match_enumeration(role, window, draws, replicates, rule, toy_exact_z, tiny_task):
    """The toy rule scores every draw in the window; the sampled precision and recall (recall on the terms'
    scale) agree with exact enumeration over X_src within 4 reported standard errors. With stage 1 held fixed the
    standard error is the delta method's for N_DRAWS draws; stage 1's replicates add the output distribution's own
    error (tests/slow/test_uncertainty_coverage.py shows the sum covers at the stated rate)."""
    d = draws[role]
    direction = "AB" if role == "A" else "BA"
    w = parse_window(window, direction, 0.0)
    sel = annotate.select(d, w, 0.05, per_bin=0, seed=0, id_prefix=f"{direction}-")
    scores = annotate.score_rows(toy_rule(), sel.rows, "toy_rule")
    got = annotate.estimate(sel, scores, replicates[role]["stage1"])
    draws_only = annotate.estimate(sel, scores, replicates[role]["fixed"])
    exact = annotate.exact_precision_recall(*toy_exact_z, rule, w, OUTDIST_Z_RANGE, role)
    sigma = exact_sigmas(*toy_exact_z, rule, w, role, N_DRAWS)
    for key in ("precision", "recall"):
        assert sigma[key] < 0.006  # the draws' part is small: stage 1 dominates the error
        # the draws' part is the delta method's: 200 replicates estimate a standard error within ~10% (2σ)
        assert 0.8 < draws_only[f"{key}_se"] / sigma[key] < 1.25
        assert got[f"{key}_se"] > 0.9 * draws_only[f"{key}_se"] and got[f"{key}_se"] < 0.02  # power: 4 se < 0.08
        assert_within_sigma(got[key], exact[key], got[f"{key}_se"], what=f"{direction} {window or 'PD side'} {key}")
    # every draw in the window was scored once per distinct input, and the plug-in is their mean
    inside = w.contains(d["D"])
    valid = tiny_task.is_valid(np.stack(d["tokens"].to_numpy()))
    assert got["counts"]["n_annotated_draws"] == got["counts"]["n_in_window"] == int(inside.sum())
    assert got["precision"] == pytest.approx(valid[inside].mean(), rel=1e-12)
    assert got["recall"] == pytest.approx(valid[inside].sum() / d["in_z_other"].sum(), rel=1e-12)
    if not window:  # the PD side's mass is the PD term of the ratio
        assert got["window_mass"] == pytest.approx(exact["window_mass"], abs=4 * 0.005)


def test_a_stratified_sheet_estimates_the_same_within_its_error(draws, replicates, rule, toy_exact_z, tiny_task):
    """People score per_bin draws per D bin: with stage 1 held fixed the reported SE tracks σ from the draws plus
    the within-bin sampling (finite-population corrected), and the estimate agrees with enumeration within 4 of the
    SEs that include stage 1."""
    d, w = draws["A"], parse_window("", "AB", 0.0)
    sel = annotate.select(d, w, 0.025, per_bin=100, seed=3, id_prefix="AB-")
    c, m = sel.bin_draws, np.minimum(sel.bin_draws, 100)
    assert np.array_equal(np.bincount(sel.rows["bin"], weights=sel.rows["n_draws"], minlength=sel.n_bins), m)
    assert sel.rows["id"].is_unique and len(sel.rows) < m.sum() + 1
    scores = annotate.score_rows(toy_rule(), sel.rows, "toy_rule")
    got = annotate.estimate(sel, scores, replicates["A"]["fixed"])
    with_stage1 = annotate.estimate(sel, scores, replicates["A"]["stage1"])
    exact = annotate.exact_precision_recall(*toy_exact_z, rule, w, OUTDIST_Z_RANGE, "A")
    sigma = exact_sigmas(*toy_exact_z, rule, w, "A", N_DRAWS)
    # the annotation sample's variance, from the scores of all the bins' draws
    inside = w.contains(d["D"])
    valid = tiny_task.is_valid(np.stack(d["tokens"].to_numpy()[inside])).astype(float)
    b = annotate.bin_index(d["D"].to_numpy()[inside], sel.edges)
    pop_var = np.array([valid[b == k].var(ddof=1) if c[k] > 1 else 0.0 for k in range(sel.n_bins)])
    var_r = np.where(c > 0, pop_var / np.maximum(m, 1) * (1 - m / np.maximum(c, 1)), 0.0)
    n_in = int(d["in_z_other"].sum())
    for key, scale in (("precision", c / c.sum()), ("recall", c / n_in)):
        total = math.sqrt(sigma[key] ** 2 + float(np.sum(scale**2 * var_r)))
        assert total < 0.02 and with_stage1[f"{key}_se"] < 0.025  # power
        assert 0.75 < got[f"{key}_se"] / total < 1.3  # 200 replicates: ~10% (2σ) on a standard error, and its model
        assert_within_sigma(with_stage1[key], exact[key], with_stage1[f"{key}_se"], what=f"stratified {key}")
    assert got["counts"]["n_annotated_draws"] == m.sum() < got["counts"]["n_in_window"]


def test_a_sheet_of_every_draw_gives_the_automatic_result(draws):
    d, w = draws["B"], parse_window("", "BA", 0.0)
    auto = annotate.select(d, w, 0.05, per_bin=0, seed=0, id_prefix="BA-")
    every = annotate.select(d, w, 0.05, per_bin=10**9, seed=5, id_prefix="BA-")
    pd.testing.assert_frame_equal(auto.rows.drop(columns="tokens"), every.rows.drop(columns="tokens"))
    scores = annotate.score_rows(toy_rule(), auto.rows, "toy_rule")
    sheet = annotate.to_sheet(every, scores)
    from_sheet = annotate.estimate(every, annotate.check_scores(sheet, every))
    assert from_sheet == {**annotate.estimate(auto, scores), "per_bin": 10**9}


def test_bins_with_draws_but_no_scored_input_are_an_error(draws):
    sel = annotate.select(draws["A"], Window(-0.3, -0.05), 0.05, per_bin=5, seed=0)
    first = sel.rows["bin"] == sel.rows["bin"].min()
    broken = annotate.Selection(**{**sel.__dict__, "rows": sel.rows[~first].reset_index(drop=True)})
    with pytest.raises(
        ValueError,
        match=r"1 D bins of the window \[-0.3, -0.05\] have draws but no scored input "
        r"\(\[-0.3, -0.25\]\)",
    ):
        annotate.estimate(broken, np.ones(len(broken.rows)))


def test_windows_without_draws_are_refused(draws):
    with pytest.raises(ValueError, match=r"no draw has D in the window \[5.0, 6.0\] \(the draws' D range is"):
        annotate.select(draws["A"], Window(5.0, 6.0), 0.05)


def test_exported_selection_round_trips(tmp_path, draws):
    sel = annotate.select(draws["A"], Window(-0.3, -0.05), 0.05, per_bin=7, seed=2, id_prefix="AB-")
    sheet = annotate.to_sheet(sel)
    back = annotate.read_sheet(annotate.write_sheet(sheet, tmp_path / "s.csv"))
    pd.testing.assert_frame_equal(back, sheet, check_exact=True)
    page = sheet_html(sheet, sel, "a <title>", {"run": "x"}, "fill & go")
    assert page.startswith("<!DOCTYPE html>") and "a &lt;title&gt;" in page and "fill &amp; go" in page
    assert page.count("<tr") == len(sheet) + 1 and "<script" not in page and "http" not in page


def test_sheets_must_score_exactly_the_selection(tmp_path, draws):
    sel = annotate.select(draws["A"], Window(-0.3, -0.05), 0.05, per_bin=3, seed=2, id_prefix="AB-")
    ids = sel.rows["id"].tolist()
    full = [(i, "t", "1") for i in ids]
    cases = [
        (full + [("BA-1", "t", "1")], rf"data row {len(ids) + 1} \(id 'BA-1'\): unknown id, not one of the {len(ids)}"),
        (full[:2] + [(ids[2], "t", " ")] + full[3:], rf"data row 3 \(id '{ids[2]}'\): no score"),
        (full[1:], rf"no row for 1 of the {len(ids)} selected inputs \(ids {ids[0]}\)"),
    ]
    for rows, match in cases:
        sheet = annotate.read_sheet(write_rows(tmp_path / "s.csv", rows))
        with pytest.raises(ValueError, match=match):
            annotate.check_scores(sheet, sel)
    trailing = full[::-1] + [("", "", ""), ()]  # blank lines at the end are not rows
    assert (annotate.check_scores(annotate.read_sheet(write_rows(tmp_path / "ok.csv", trailing)), sel) == 1).all()
    with pytest.raises(ValueError, match="has no column 'score'"):
        annotate.read_sheet(write_rows(tmp_path / "h.csv", [("AB-1", "x")], header=("id", "text")))
    with pytest.raises(ValueError, match=r"column 'D' holds 'abc', not a float"):
        annotate.read_sheet(write_rows(tmp_path / "d.csv", [("AB-1", "abc", "1")], header=("id", "D", "score")))
    with pytest.raises(ValueError, match="cannot read annotation sheet"):
        annotate.read_sheet(tmp_path / "missing.csv")


def parity(rows):
    """A `module:function` annotator: even digit sums are good."""
    return [float(int(np.sum(t)) % 2 == 0) for t in rows["tokens"]]


def too_few(rows):
    return [1.0] * (len(rows) - 1)


def out_of_range(rows):
    return [1.0, 0.0, 2.0] + [0.0] * (len(rows) - 3)


def test_module_function_annotators_are_imported_and_checked_like_sheets(draws):
    sel = annotate.select(draws["A"], Window(-0.3, -0.05), 0.05, per_bin=4, seed=0, id_prefix="AB-")
    scores = annotate.score_rows(annotate.make_annotator("test_annotate:parity", CFG), sel.rows, "test_annotate:parity")
    assert scores.tolist() == [float(sum(t) % 2 == 0) for t in sel.rows["tokens"]]
    assert annotate.annotator_identity("test_annotate:parity").startswith("test_annotate:parity#sha256=")
    with pytest.raises(ValueError, match=rf"returned {len(sel.rows) - 1} scores for {len(sel.rows)} rows"):
        annotate.score_rows(too_few, sel.rows, "too_few")
    third = sel.rows["id"][2]
    with pytest.raises(ValueError, match=rf"annotator x, data row 3 \(id '{third}'\): score 2.0 is outside \[0, 1\]"):
        annotate.score_rows(out_of_range, sel.rows, "x")
    with pytest.raises(ValueError, match="cannot import 'no_such_module'"):
        annotate.make_annotator("no_such_module:f", CFG)
    with pytest.raises(ValueError, match="test_annotate has no 'nope'"):
        annotate.make_annotator("test_annotate:nope", CFG)
    with pytest.raises(ValueError, match="unknown annotate.annotator 'oracle'"):
        annotate.make_annotator("oracle", CFG)
    with pytest.raises(ValueError, match="annotator human has no automatic scores"):
        annotate.make_annotator("human", CFG)


@pytest.mark.parametrize("softness", [0.0, 0.05])
def test_judge_scores_by_its_own_nll(softness, draws, toy_pair, toy_exact_z, tiny_task):
    """Model B as the judge of A's draws: 1 where its exact (enumerated) z is below the threshold (by default the
    top of Z), or the sigmoid."""
    cfg = load_config(
        "toy", f"annotate.annotator=judge annotate.judge.model=toy:large annotate.judge.softness={softness}"
    )
    threshold = annotate.judge_threshold(cfg)
    assert threshold == OUTDIST_Z_RANGE[1]
    sel = annotate.select(draws["A"], parse_window("", "AB", 0.0), 0.05, per_bin=0)
    judge = annotate.make_annotator(
        "judge",
        cfg,
        reference=lambda: toy_loaded(toy_pair[0], tiny_task, "a"),
        judge=toy_loaded(toy_pair[1], tiny_task, "b"),
    )
    scores = annotate.score_rows(judge, sel.rows, "judge")
    z = toy_exact_z[1][tiny_task.space.ids_to_index(np.stack(sel.rows["tokens"].to_numpy()))].astype(float)
    if softness:
        np.testing.assert_allclose(scores, 1 / (1 + np.exp(-(threshold - z) / softness)), atol=1e-4)
    else:
        clear = np.abs(z - threshold) > 1e-4  # float32 scoring vs enumeration may differ in the last digits
        assert clear.sum() > 0.99 * len(z) and 0.1 < scores.mean() < 0.9
        np.testing.assert_array_equal(scores[clear], (z[clear] < threshold).astype(float))
    assert annotate.judge_threshold(load_config("toy", "annotate.judge.threshold=1.5")) == 1.5
