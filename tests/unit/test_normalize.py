import numpy as np
import pytest

from modeldiff.method.enumeration import in_range
from modeldiff.method.normalize import lambda_sweep, multi_model_terms, ratio_from_draws, summarize_repeats


def draws(n_neg, n_pos, n_in, n_total):
    """n_total draws: n_neg with D<0, n_pos with D>0 (the rest D=0); the first n_in have z_other ∈ Z."""
    d = np.r_[-np.ones(n_neg), np.ones(n_pos), np.zeros(n_total - n_neg - n_pos)]
    return d, np.arange(n_total) < n_in


def test_paper_worked_example_sec_3_3():
    """100 A draws, 80 with z_B in Z, 60 PD / 40 PA; 300 B draws, 200 in Z, 150 PA / 150 PD."""
    d_ab, in_ab = draws(60, 40, 80, 100)
    d_ba, in_ba = draws(150, 150, 200, 300)
    r = ratio_from_draws(d_ab, in_ab, d_ba, in_ba)
    assert r["terms"] == pytest.approx({"PD_AB": 60 / 80, "PA_AB": 40 / 80, "PA_BA": 150 / 200, "PD_BA": 150 / 200})
    assert r["ratio"] == pytest.approx([1.0, 40 / 60, 1.0, 1.0])
    assert {k: r["counts"][k] for k in ("n_A", "n_A_in_B", "n_B", "n_B_in_A")} == dict(
        n_A=100, n_A_in_B=80, n_B=300, n_B_in_A=200
    )
    assert r["D_range"] == {"A": [-1.0, 1.0], "B": [-1.0, 1.0]}
    assert set(r) == {"lambda", "terms", "ratio", "counts", "D_range"}


def test_lambda_threshold_and_sweep():
    d_ab = np.array([-0.5, -0.05, 0.05, 0.3])
    d_ba = np.array([-0.2, 0.01, 0.4, 0.6])
    ones = np.ones(4, dtype=bool)
    r = ratio_from_draws(d_ab, ones, d_ba, ones, lam=0.1)
    assert r["terms"] == pytest.approx({"PD_AB": 0.25, "PA_AB": 0.25, "PA_BA": 0.25, "PD_BA": 0.5})
    sweep = lambda_sweep(d_ab, ones, d_ba, ones)
    assert sweep["lambda"].iloc[0] == 0 and sweep["lambda"].iloc[-1] == pytest.approx(0.6)
    for term in ("PD_AB", "PA_AB", "PA_BA", "PD_BA"):
        assert np.all(np.diff(sweep[term]) <= 0)  # a higher threshold never counts more
    with pytest.raises(ValueError, match="lambda must be >= 0"):
        ratio_from_draws(d_ab, ones, d_ba, ones, lam=-1)


def test_bad_draws_are_clear_errors():
    d, in_ = draws(1, 1, 0, 2)
    with pytest.raises(ValueError, match="widen z_range"):
        ratio_from_draws(d, in_, d, np.ones(2, bool))
    with pytest.raises(ValueError, match="NaN/inf"):
        ratio_from_draws(np.array([np.nan, 1.0]), np.ones(2, bool), d, np.ones(2, bool))


def test_summarize_repeats_mean_and_std():
    rs = [ratio_from_draws(*draws(60 + k, 40 - k, 80, 100), *draws(150, 150, 200, 300)) for k in (0, 2, 4)]
    s = summarize_repeats(rs)
    assert s["terms_mean"]["PD_AB"] == pytest.approx(62 / 80)
    assert s["terms_std"]["PD_AB"] == pytest.approx(np.std([60 / 80, 62 / 80, 64 / 80], ddof=1))
    assert s["ratio_std"][2] > 0 and s["n_repeats"] == 3


def test_multi_model_against_one_reference_matches_enumeration(rng):
    """Appendix B on a synthetic finite space: models B and C against A. Using *every* input of X_A
    (resp. X_X) once, the estimator must equal the exact counts divided by |X_A| exactly."""
    n = 5000
    z = {name: rng.normal(2.0, 0.3, n) for name in "ABC"}
    zr = (1.6, 2.3)
    in_ = {k: in_range(v, zr) for k, v in z.items()}
    forward = {x: ((z["A"] - z[x])[in_["A"]], in_[x][in_["A"]]) for x in "BC"}
    backward = {x: ((z["A"] - z[x])[in_[x]], in_["A"][in_[x]]) for x in "BC"}
    table = multi_model_terms(forward, backward).set_index("model")
    x_a = in_["A"].sum()
    for x in "BC":
        d = z["A"] - z[x]
        assert table.loc[x, "PD_AX"] == pytest.approx((in_["A"] & (d < 0)).sum() / x_a)
        assert table.loc[x, "PA_AX"] == pytest.approx((in_["A"] & (d > 0)).sum() / x_a)
        assert table.loc[x, "PA_XA"] == pytest.approx((in_[x] & (d < 0)).sum() / x_a)
        assert table.loc[x, "PD_XA"] == pytest.approx((in_[x] & (d > 0)).sum() / x_a)
    with pytest.raises(ValueError, match="same A draws"):
        multi_model_terms({"B": forward["B"], "C": (forward["C"][0][:10], forward["C"][1][:10])}, backward)
