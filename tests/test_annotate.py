"""Sec. 3.4 annotation: windows and D bins, sheets (round trip, bad rows), annotators, and precision/recall
against exact enumeration of the tiny toy with its own rule as the annotator."""
import math

import numpy as np
import pandas as pd
import pytest

from conftest import OUTDIST_Z_RANGE, assert_within_sigma
from modeldiff import annotate
from modeldiff.annotate import Window, parse_window
from modeldiff.config import load_config
from modeldiff.cross_eval import cross_evaluate
from modeldiff.models import LoadedModel, decode_digits
from modeldiff.toy import ToyTask, make_toy_model

N_DRAWS = 40_000
CFG = load_config("toy")  # the tiny toy's space (L=5, V=6, mod 10) and Z = OUTDIST_Z_RANGE


@pytest.fixture(scope="module")
def draws(tiny_task, toy_scorers, outdists):
    """A→B and B→A cross-evaluations of the toy pair, decoded as digits (like the pipeline's)."""
    sides = {}
    for role, (od, src, other) in {"A": (outdists[0], *toy_scorers), "B": (outdists[1], *toy_scorers[::-1])}.items():
        sides[role] = cross_evaluate(od, tiny_task.space, src, other, N_DRAWS, role=role, seed=11 + (role == "B"),
                                     allow_empty_bins=True, decode=decode_digits)
    return sides


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


# ------------------------------------------------------------------------------------------- config

@pytest.mark.parametrize("overrides,match", [
    ("annotate.annotator=oracle", "unknown annotate.annotator 'oracle'"),
    ("annotate.per_bin=-1", "'annotate.per_bin' must be >= 0"),
    ("annotate.bin_width=0", "'annotate.bin_width' must be > 0"),
    ("annotate.in_main=true", "'annotate.in_main' must be false with annotate.annotator=human"),
    ("annotate.annotator=judge", "'annotate.judge.model' must be a model ref"),
    ("annotate.judge.threshold=low", "'annotate.judge.threshold' must be a number"),
    ("annotate.judge.softness=-1", "'annotate.judge.softness' must be >= 0"),
])
def test_bad_annotate_config_is_refused(overrides, match):
    with pytest.raises(ValueError, match=match):
        load_config("toy", overrides)
    ok = load_config("toy", "annotate.annotator=pkg.mod:fn annotate.in_main=true annotate.judge.threshold=2")
    assert ok.annotate.judge.threshold == 2 and ok.annotate.annotator == "pkg.mod:fn"


# ------------------------------------------------------------------------------------------- windows and bins

def test_windows_default_to_the_pd_side_and_parse_brackets():
    assert parse_window("", "AB", 0.0) == Window(-math.inf, 0.0, False, False)
    assert parse_window(" ", "BA", 0.1) == Window(0.1, math.inf, False, False)
    assert parse_window("", "AB", 0.1).text == "(-inf, -0.1)"
    w = parse_window("-1,-0.6", "AB", 0.0)
    assert w == Window(-1.0, -0.6) and w.text == "[-1.0, -0.6]"
    assert list(w.contains([-1.0, -0.8, -0.6, -0.59, -1.01])) == [True, True, True, False, False]
    assert parse_window("(-inf, 0]", "AB", 0.0) == Window(-math.inf, 0.0, False, True)
    assert parse_window("[0.6,1)", "BA", 0.0).contains([0.6, 1.0]).tolist() == [True, False]
    assert parse_window("", "AB", 0.0).record() == {"lo": None, "hi": 0.0, "lo_closed": False, "hi_closed": False,
                                                    "text": "(-inf, 0.0)"}
    for bad, match in [("-0.6,-1", "empty or reversed"), ("a,b", "not a number"), ("[-1,0", "not a D interval"),
                       ("-1", "not a D interval"), ("0,0", "empty or reversed")]:
        with pytest.raises(ValueError, match=match):
            parse_window(bad, "AB", 0.0)
    with pytest.raises(ValueError, match="direction must be AB or BA"):
        parse_window("", None, 0.0)


def test_d_bins_split_finite_windows_and_tile_open_ones():
    near = np.array([-0.9])
    np.testing.assert_allclose(annotate.d_edges(Window(-1.0, -0.6), near, 0.1), [-1, -0.9, -0.8, -0.7, -0.6])
    np.testing.assert_allclose(annotate.d_edges(Window(-1.0, -0.6), near, 0.15), [-1, -0.8667, -0.7333, -0.6],
                               atol=1e-4)  # equal bins that end on the window's edges
    edges = annotate.d_edges(Window(-math.inf, 0.0, False, False), np.array([-0.23, -0.01]), 0.1)
    np.testing.assert_allclose(edges, [-0.3, -0.2, -0.1, 0.0], atol=1e-12)
    np.testing.assert_allclose(annotate.d_edges(Window(0.1, math.inf), np.array([0.1, 0.35]), 0.1),
                               [0.1, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(annotate.d_edges(Window(-math.inf, math.inf), np.array([-0.05, 0.12]), 0.1),
                               [-0.1, 0.0, 0.1, 0.2], atol=1e-12)
    assert annotate.bin_index(np.array([-0.3, -0.2, -0.0001, 0.0]), edges).tolist() == [0, 1, 2, 2]


# ------------------------------------------------------------------------------------------- precision and recall

@pytest.mark.parametrize("role,window", [("A", ""), ("B", ""), ("A", "[-0.3,-0.05]")])
def test_toy_rule_precision_and_recall_match_enumeration(role, window, draws, rule, toy_exact_z, tiny_task):
    """The toy rule scores every draw in the window; the sampled precision and recall (recall on the terms'
    scale) agree with exact enumeration over X_src within 4σ of the delta method for N_DRAWS draws."""
    d = draws[role]
    direction = "AB" if role == "A" else "BA"
    w = parse_window(window, direction, 0.0)
    sel = annotate.select(d, w, 0.05, per_bin=0, seed=0, id_prefix=f"{direction}-")
    got = annotate.estimate(sel, annotate.score_rows(toy_rule(), sel.rows, "toy_rule"))
    exact = annotate.exact_precision_recall(*toy_exact_z, rule, w, OUTDIST_Z_RANGE, role)
    sigma = exact_sigmas(*toy_exact_z, rule, w, role, N_DRAWS)
    for key in ("precision", "recall"):
        assert sigma[key] < 0.006  # power: 4σ < 0.025
        assert_within_sigma(got[key], exact[key], sigma[key], what=f"{direction} {window or 'PD side'} {key}")
        assert 0.8 < got[f"{key}_se"] / sigma[key] < 1.25  # the reported standard error is the delta method's
    # every draw in the window was scored once per distinct input, and the plug-in is their mean
    inside = w.contains(d["D"])
    valid = tiny_task.is_valid(np.stack(d["tokens"].to_numpy()))
    assert got["counts"]["n_annotated_draws"] == got["counts"]["n_in_window"] == int(inside.sum())
    assert got["precision"] == pytest.approx(valid[inside].mean(), rel=1e-12)
    assert got["recall"] == pytest.approx(valid[inside].sum() / d["in_z_other"].sum(), rel=1e-12)
    if not window:  # the PD side's mass is the PD term of the ratio
        assert got["window_mass"] == pytest.approx(exact["window_mass"], abs=4 * 0.005)


def test_a_stratified_sheet_estimates_the_same_within_its_error(draws, rule, toy_exact_z, tiny_task):
    """People score per_bin draws per D bin: the stratified estimate agrees with enumeration within 4σ, σ from
    the draws plus the within-bin sampling (finite-population corrected), and the reported SE tracks that σ."""
    d, w = draws["A"], parse_window("", "AB", 0.0)
    sel = annotate.select(d, w, 0.025, per_bin=100, seed=3, id_prefix="AB-")
    c, m = sel.bin_draws, np.minimum(sel.bin_draws, 100)
    assert np.array_equal(np.bincount(sel.rows["bin"], weights=sel.rows["n_draws"], minlength=sel.n_bins), m)
    assert sel.rows["id"].is_unique and len(sel.rows) < m.sum() + 1
    got = annotate.estimate(sel, annotate.score_rows(toy_rule(), sel.rows, "toy_rule"))
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
        total = math.sqrt(sigma[key] ** 2 + float(np.sum(scale ** 2 * var_r)))
        assert total < 0.02  # power
        assert_within_sigma(got[key], exact[key], total, what=f"stratified {key}")
        assert 0.6 < got[f"{key}_se"] / total < 1.6
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
    with pytest.raises(ValueError, match=r"1 D bins of the window \[-0.3, -0.05\] have draws but no scored input "
                                         r"\(\[-0.3, -0.25\]\)"):
        annotate.estimate(broken, np.ones(len(broken.rows)))


def test_windows_without_draws_are_refused(draws):
    with pytest.raises(ValueError, match=r"no draw has D in the window \[5.0, 6.0\] \(the draws' D range is"):
        annotate.select(draws["A"], Window(5.0, 6.0), 0.05)


# ------------------------------------------------------------------------------------------- sheets

TRICKY = ["plain", "a, comma", 'say "hi"', "two\nlines", "crlf\r\nand cr\r", "ünïcödé ✓ 中文 🙂", "",
          "  spaced  ", "=1+2", "tab\there", 'mix, "of\n" all', "nul\x00 and \u2028 line separator"]


def tricky_sheet(scores) -> pd.DataFrame:
    n = len(TRICKY)
    return pd.DataFrame({
        "id": [f"AB-{i}" for i in range(n)], "bin": np.arange(n, dtype=np.int64) // 3,
        "D": np.array([-0.1, -1 / 3, 1e-17, -2.5e-300, -0.30000000000000004] + [-0.2] * (n - 5)),
        "z_A": np.linspace(1.3, 1.8, n) / 7, "z_B": np.linspace(1.3, 1.8, n) / 3,
        "n_draws": np.arange(1, n + 1, dtype=np.int64), "text": TRICKY, "tokens": [f"{i} 1 2" for i in range(n)],
        "score": np.asarray(scores, dtype=float)})


@pytest.mark.parametrize("scores", ["empty", "filled"])
def test_sheets_survive_export_and_import_unchanged(tmp_path, scores):
    n = len(TRICKY)
    sheet = tricky_sheet(np.full(n, np.nan) if scores == "empty" else np.linspace(0, 1, n) ** 2 / 3)
    back = annotate.read_sheet(annotate.write_sheet(sheet, tmp_path / "sheet.csv"))
    pd.testing.assert_frame_equal(back, sheet, check_exact=True)


def test_exported_selection_round_trips(tmp_path, draws):
    sel = annotate.select(draws["A"], Window(-0.3, -0.05), 0.05, per_bin=7, seed=2, id_prefix="AB-")
    sheet = annotate.to_sheet(sel)
    back = annotate.read_sheet(annotate.write_sheet(sheet, tmp_path / "s.csv"))
    pd.testing.assert_frame_equal(back, sheet, check_exact=True)
    page = annotate.sheet_html(sheet, sel, "a <title>", {"run": "x"}, "fill & go")
    assert page.startswith("<!DOCTYPE html>") and "a &lt;title&gt;" in page and "fill &amp; go" in page
    assert page.count("<tr") == len(sheet) + 1 and "<script" not in page and "http" not in page


def _write_rows(path, rows, header=("id", "text", "score")):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    return path


@pytest.mark.parametrize("rows,match", [
    ([("AB-1", "x", "1"), ("", "y", "0")], r"data row 2: the id is empty"),
    ([("AB-1", "x", "1"), ("", "", ""), ("AB-2", "y", "0")], r"data row 2: the id is empty"),
    ([("AB-1", "x", "1"), ("AB-2", "y", "0.5"), ("AB-1", "z", "0")],
     r"data row 3 \(id 'AB-1'\): the id repeats data row 1"),
    ([("AB-1", "x", "good")], r"data row 1 \(id 'AB-1'\): score 'good' is not a number"),
    ([("AB-1", "x", "0,5")], r"data row 1 \(id 'AB-1'\): score '0,5' is not a number.*decimal point"),
    ([("AB-1", "x", "1"), ("AB-2", "x", "1.5")], r"data row 2 \(id 'AB-2'\): score '1.5' is outside \[0, 1\]"),
    ([("AB-1", "x", "-0.1")], r"data row 1 \(id 'AB-1'\): score '-0.1' is outside"),
    ([("AB-1", "x", "nan")], r"data row 1 \(id 'AB-1'\): score 'nan' is outside"),
    ([("AB-1", "x")], r"data row 1: 2 cells under a header of 3"),
])
def test_bad_sheets_are_rejected_naming_the_row(tmp_path, rows, match):
    with pytest.raises(ValueError, match=match):
        annotate.read_sheet(_write_rows(tmp_path / "bad.csv", rows))


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
        sheet = annotate.read_sheet(_write_rows(tmp_path / "s.csv", rows))
        with pytest.raises(ValueError, match=match):
            annotate.check_scores(sheet, sel)
    trailing = full[::-1] + [("", "", ""), ()]  # blank lines at the end are not rows
    assert (annotate.check_scores(annotate.read_sheet(_write_rows(tmp_path / "ok.csv", trailing)), sel) == 1).all()
    with pytest.raises(ValueError, match="has no column 'score'"):
        annotate.read_sheet(_write_rows(tmp_path / "h.csv", [("AB-1", "x")], header=("id", "text")))
    with pytest.raises(ValueError, match=r"column 'D' holds 'abc', not a float"):
        annotate.read_sheet(_write_rows(tmp_path / "d.csv", [("AB-1", "abc", "1")], header=("id", "D", "score")))
    with pytest.raises(ValueError, match="cannot read annotation sheet"):
        annotate.read_sheet(tmp_path / "missing.csv")


# ------------------------------------------------------------------------------------------- annotators

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
    with pytest.raises(ValueError, match="has no function 'nope'"):
        annotate.make_annotator("test_annotate:nope", CFG)
    with pytest.raises(ValueError, match="unknown annotate.annotator 'oracle'"):
        annotate.make_annotator("oracle", CFG)
    with pytest.raises(ValueError, match="annotator human has no automatic scores"):
        annotate.make_annotator("human", CFG)


def _loaded(model, task: ToyTask, ref: str) -> LoadedModel:
    return LoadedModel(model, None, f"test:{ref}", task.space, ref, decode_digits)


@pytest.mark.parametrize("softness", [0.0, 0.05])
def test_judge_scores_by_its_own_nll(softness, draws, toy_pair, toy_exact_z, tiny_task):
    """Model B as the judge of A's draws: 1 where its exact (enumerated) z is below the threshold (by default the
    top of Z), or the sigmoid."""
    cfg = load_config("toy", f"annotate.annotator=judge annotate.judge.model=toy:large "
                             f"annotate.judge.softness={softness}")
    threshold = annotate.judge_threshold(cfg)
    assert threshold == OUTDIST_Z_RANGE[1]
    sel = annotate.select(draws["A"], parse_window("", "AB", 0.0), 0.05, per_bin=0)
    judge = annotate.make_annotator("judge", cfg, reference=lambda: _loaded(toy_pair[0], tiny_task, "a"),
                                    judge=_loaded(toy_pair[1], tiny_task, "b"))
    scores = annotate.score_rows(judge, sel.rows, "judge")
    z = toy_exact_z[1][tiny_task.space.ids_to_index(np.stack(sel.rows["tokens"].to_numpy()))].astype(float)
    if softness:
        np.testing.assert_allclose(scores, 1 / (1 + np.exp(-(threshold - z) / softness)), atol=1e-4)
    else:
        clear = np.abs(z - threshold) > 1e-4  # float32 scoring vs enumeration may differ in the last digits
        assert clear.sum() > 0.99 * len(z) and 0.1 < scores.mean() < 0.9
        np.testing.assert_array_equal(scores[clear], (z[clear] < threshold).astype(float))
    assert annotate.judge_threshold(load_config("toy", "annotate.judge.threshold=1.5")) == 1.5


def test_a_judge_over_another_input_space_is_refused(toy_pair, tiny_task):
    other = ToyTask(5, 8, 10)
    with pytest.raises(ValueError, match=r"annotate.judge.model 'v8' cannot score these inputs \(models 'v8' and 'a' "
                                         r"are not comparable: their input spaces differ"):
        annotate.make_annotator("judge", CFG, reference=lambda: _loaded(toy_pair[0], tiny_task, "a"),
                                judge=_loaded(make_toy_model(other, n_embd=16, n_head=2, n_layer=1), other, "v8"))
