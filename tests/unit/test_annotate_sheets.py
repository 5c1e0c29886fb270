"""Sec. 3.4 annotation without sampling: the annotate config, D windows and bins, sheets (round trip of tricky
text, bad rows named), and a judge over another input space refused."""

import math

import numpy as np
import pandas as pd
import pytest

from modeldiff.analysis import annotate
from modeldiff.analysis.annotate import Window, parse_window
from modeldiff.config import load_config
from modeldiff.method.toy import ToyTask, make_toy_model
from support import toy_loaded, write_rows

CFG = load_config("toy")  # the tiny toy's space (L=5, V=6, mod 10) and Z = OUTDIST_Z_RANGE


@pytest.mark.parametrize(
    "overrides,match",
    [
        ("annotate.annotator=oracle", "unknown annotate.annotator 'oracle'"),
        ("annotate.per_bin=-1", "'annotate.per_bin' must be >= 0"),
        ("annotate.bin_width=0", "'annotate.bin_width' must be > 0"),
        ("annotate.in_main=true", "'annotate.in_main' must be false with annotate.annotator=human"),
        ("annotate.annotator=judge", "'annotate.judge.model' must be a model ref"),
        ("annotate.judge.threshold=low", "'annotate.judge.threshold' must be a number"),
        ("annotate.judge.softness=-1", "'annotate.judge.softness' must be >= 0"),
    ],
)
def test_bad_annotate_config_is_refused(overrides, match):
    with pytest.raises(ValueError, match=match):
        load_config("toy", overrides)
    ok = load_config("toy", "annotate.annotator=pkg.mod:fn annotate.in_main=true annotate.judge.threshold=2")
    assert ok.annotate.judge.threshold == 2 and ok.annotate.annotator == "pkg.mod:fn"


def test_windows_default_to_the_pd_side_and_parse_brackets():
    assert parse_window("", "AB", 0.0) == Window(-math.inf, 0.0, False, False)
    assert parse_window(" ", "BA", 0.1) == Window(0.1, math.inf, False, False)
    assert parse_window("", "AB", 0.1).text == "(-inf, -0.1)"
    w = parse_window("-1,-0.6", "AB", 0.0)
    assert w == Window(-1.0, -0.6) and w.text == "[-1.0, -0.6]"
    assert list(w.contains([-1.0, -0.8, -0.6, -0.59, -1.01])) == [True, True, True, False, False]
    assert parse_window("(-inf, 0]", "AB", 0.0) == Window(-math.inf, 0.0, False, True)
    assert parse_window("[0.6,1)", "BA", 0.0).contains([0.6, 1.0]).tolist() == [True, False]
    assert parse_window("", "AB", 0.0).record() == {
        "lo": None,
        "hi": 0.0,
        "lo_closed": False,
        "hi_closed": False,
        "text": "(-inf, 0.0)",
    }
    for bad, match in [
        ("-0.6,-1", "empty or reversed"),
        ("a,b", "not a number"),
        ("[-1,0", "not a D interval"),
        ("-1", "not a D interval"),
        ("0,0", "empty or reversed"),
    ]:
        with pytest.raises(ValueError, match=match):
            parse_window(bad, "AB", 0.0)
    with pytest.raises(ValueError, match="direction must be AB or BA"):
        parse_window("", None, 0.0)


def test_d_bins_split_finite_windows_and_tile_open_ones():
    near = np.array([-0.9])
    np.testing.assert_allclose(annotate.d_edges(Window(-1.0, -0.6), near, 0.1), [-1, -0.9, -0.8, -0.7, -0.6])
    np.testing.assert_allclose(
        annotate.d_edges(Window(-1.0, -0.6), near, 0.15), [-1, -0.8667, -0.7333, -0.6], atol=1e-4
    )  # equal bins that end on the window's edges
    edges = annotate.d_edges(Window(-math.inf, 0.0, False, False), np.array([-0.23, -0.01]), 0.1)
    np.testing.assert_allclose(edges, [-0.3, -0.2, -0.1, 0.0], atol=1e-12)
    np.testing.assert_allclose(
        annotate.d_edges(Window(0.1, math.inf), np.array([0.1, 0.35]), 0.1), [0.1, 0.2, 0.3, 0.4]
    )
    np.testing.assert_allclose(
        annotate.d_edges(Window(-math.inf, math.inf), np.array([-0.05, 0.12]), 0.1), [-0.1, 0.0, 0.1, 0.2], atol=1e-12
    )
    assert annotate.bin_index(np.array([-0.3, -0.2, -0.0001, 0.0]), edges).tolist() == [0, 1, 2, 2]


TRICKY = [
    "plain",
    "a, comma",
    'say "hi"',
    "two\nlines",
    "crlf\r\nand cr\r",
    "ünïcödé ✓ 中文 🙂",
    "",
    "  spaced  ",
    "=1+2",
    "tab\there",
    'mix, "of\n" all',
    "nul\x00 and \u2028 line separator",
]


def tricky_sheet(scores) -> pd.DataFrame:
    n = len(TRICKY)
    return pd.DataFrame(
        {
            "id": [f"AB-{i}" for i in range(n)],
            "bin": np.arange(n, dtype=np.int64) // 3,
            "D": np.array([-0.1, -1 / 3, 1e-17, -2.5e-300, -0.30000000000000004] + [-0.2] * (n - 5)),
            "z_A": np.linspace(1.3, 1.8, n) / 7,
            "z_B": np.linspace(1.3, 1.8, n) / 3,
            "n_draws": np.arange(1, n + 1, dtype=np.int64),
            "text": TRICKY,
            "tokens": [f"{i} 1 2" for i in range(n)],
            "score": np.asarray(scores, dtype=float),
        }
    )


@pytest.mark.parametrize("scores", ["empty", "filled"])
def test_sheets_survive_export_and_import_unchanged(tmp_path, scores):
    n = len(TRICKY)
    sheet = tricky_sheet(np.full(n, np.nan) if scores == "empty" else np.linspace(0, 1, n) ** 2 / 3)
    back = annotate.read_sheet(annotate.write_sheet(sheet, tmp_path / "sheet.csv"))
    pd.testing.assert_frame_equal(back, sheet, check_exact=True)


@pytest.mark.parametrize(
    "rows,match",
    [
        ([("AB-1", "x", "1"), ("", "y", "0")], r"data row 2: the id is empty"),
        ([("AB-1", "x", "1"), ("", "", ""), ("AB-2", "y", "0")], r"data row 2: the id is empty"),
        (
            [("AB-1", "x", "1"), ("AB-2", "y", "0.5"), ("AB-1", "z", "0")],
            r"data row 3 \(id 'AB-1'\): the id repeats data row 1",
        ),
        ([("AB-1", "x", "good")], r"data row 1 \(id 'AB-1'\): score 'good' is not a number"),
        ([("AB-1", "x", "0,5")], r"data row 1 \(id 'AB-1'\): score '0,5' is not a number.*decimal point"),
        ([("AB-1", "x", "1"), ("AB-2", "x", "1.5")], r"data row 2 \(id 'AB-2'\): score '1.5' is outside \[0, 1\]"),
        ([("AB-1", "x", "-0.1")], r"data row 1 \(id 'AB-1'\): score '-0.1' is outside"),
        ([("AB-1", "x", "nan")], r"data row 1 \(id 'AB-1'\): score 'nan' is outside"),
        ([("AB-1", "x")], r"data row 1: 2 cells under a header of 3"),
    ],
)
def test_bad_sheets_are_rejected_naming_the_row(tmp_path, rows, match):
    with pytest.raises(ValueError, match=match):
        annotate.read_sheet(write_rows(tmp_path / "bad.csv", rows))


def test_a_judge_over_another_input_space_is_refused(toy_pair, tiny_task):
    other = ToyTask(5, 8, 10)
    with pytest.raises(
        ValueError,
        match=r"annotate.judge.model 'v8' cannot score these inputs \(models 'v8' and 'a' "
        r"are not comparable: their input spaces differ",
    ):
        annotate.make_annotator(
            "judge",
            CFG,
            reference=lambda: toy_loaded(toy_pair[0], tiny_task, "a"),
            judge=toy_loaded(make_toy_model(other, n_embd=16, n_head=2, n_layer=1), other, "v8"),
        )
