"""The replicate algebra of modeldiff.method.uncertainty, on stage-1 results made from numpy samples (tempering
with perfectly mixed chains, ancestral importance samples in blocks): all-ones multiplicities give the point
estimate back exactly, a replicate equals the output distribution rebuilt from the resampled units themselves, the
draw law is the one stage 2 draws from, and the effective sample sizes and intervals behave as stated."""

import numpy as np
import pandas as pd
import pytest

from modeldiff.config import ConfigError, load_config
from modeldiff.method.cross_eval import draw_representatives
from modeldiff.method.normalize import TERMS, ratio_from_frames
from modeldiff.method.outdist import OutputDistribution, build_output_distribution
from modeldiff.method.tempering import TemperingResult
from modeldiff.method.toy import ToyTask
from modeldiff.method.uncertainty import (
    SideReplicates,
    expansion,
    input_ess,
    interval,
    kish_ess,
    ln_rho_normalised,
    multiplicities,
    point_ln_law,
    ratio_uncertainty,
    replicate_ln_law,
    side_replicates,
    side_term_replicates,
    stage_one,
    welch_dof,
)
from modeldiff.platform.stages.normalize import ratio_metrics, ratio_text
from support.samples import ancestral_outdist, draws_of, mixed_tempering

SPACE = ToyTask(length=3, vocab_size=5, modulus=5).space  # 125 inputs
Z_RANGE = (1.0, 2.2)
TEMPERATURES = np.geomspace(0.15, 1.5, 5)


def space_z(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.5, 3.0, SPACE.size)


def tempering_od(seed: int = 0, ladders: int = 6) -> OutputDistribution:
    pt = mixed_tempering(SPACE, space_z(0), TEMPERATURES, ladders, 150, np.random.default_rng(seed))
    return build_output_distribution(pt, SPACE, Z_RANGE, 0.1, n_replicates=0)


def ancestral_od(seed: int = 0) -> OutputDistribution:
    z = space_z(0)
    return ancestral_outdist(z, -z / 0.8, 8, 200, Z_RANGE, 0.1, np.random.default_rng(seed))


@pytest.fixture(params=["tempering", "ancestral"])
def od(request):
    return tempering_od() if request.param == "tempering" else ancestral_od()


def test_all_ones_multiplicities_reproduce_the_point_estimate_exactly(od):
    units = stage_one(od)
    ones = np.ones(units.n_units)
    ln_rho, ln_w, _ = units.replicate(ones)
    inside = od.in_z & np.isfinite(od.ln_rho)
    np.testing.assert_allclose(ln_rho_normalised(ln_rho, od.in_z)[inside], od.ln_rho_in_z()[inside], atol=1e-12)
    np.testing.assert_allclose(ln_w, od.representatives["ln_weight"], atol=1e-12)
    np.testing.assert_allclose(replicate_ln_law(od, units, ones), point_ln_law(od), atol=1e-12)


def test_the_draw_law_is_what_stage_2_draws(od):
    """Frequencies of 200,000 draws agree with exp(ln p) within 5 binomial σ per representative."""
    n = 200_000
    freq = (
        np.bincount(draw_representatives(od, n, seed=1, allow_empty_bins=True), minlength=len(od.representatives)) / n
    )
    p = np.exp(point_ln_law(od))
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-12)


def _pt_of_ladders(pt: TemperingResult, ladders: list[int]) -> TemperingResult:
    """The tempering result of the listed ladders (repeats allowed), relabelled as distinct ladders."""
    parts = []
    for new, old in enumerate(ladders):
        keep = pt.ladder == old
        parts.append(
            TemperingResult(
                pt.ids[keep],
                pt.z[keep],
                pt.replica[keep],
                np.full(keep.sum(), new, np.int32),
                pt.step[keep],
                pt.temperatures,
                pt.acceptance,
                pt.swap_acceptance,
                0.0,
                int(keep.sum()),
            )  # fmt: skip
        )
    return TemperingResult.concat(parts)


def test_a_tempering_replicate_is_the_outdist_of_the_resampled_ladders():
    """Multiplicities m equal rebuilding the output distribution from the ladders repeated m times: the same WHAM
    solution (to its tolerance) and the same representative weights."""
    pt = mixed_tempering(SPACE, space_z(0), TEMPERATURES, 6, 150, np.random.default_rng(3))
    od = build_output_distribution(pt, SPACE, Z_RANGE, 0.1, n_replicates=0)
    m = np.array([2, 0, 1, 3, 0, 0])
    rebuilt = build_output_distribution(_pt_of_ladders(pt, np.repeat(np.arange(6), m).tolist()), SPACE, Z_RANGE, 0.1, 0)
    ln_rho, ln_w, _ = stage_one(od).replicate(m.astype(float))
    inside = od.in_z & np.isfinite(rebuilt.ln_rho)
    np.testing.assert_allclose(ln_rho_normalised(ln_rho, od.in_z)[inside], rebuilt.ln_rho_in_z()[inside], atol=1e-7)
    assert not np.isfinite(ln_rho[od.in_z & ~np.isfinite(rebuilt.ln_rho)]).any()  # bins only dropped ladders reached
    ours = pd.Series(ln_w, index=[tuple(t) for t in od.representatives["tokens"]])
    theirs = pd.Series(
        rebuilt.representatives["ln_weight"].to_numpy(), [tuple(t) for t in rebuilt.representatives["tokens"]]
    )
    np.testing.assert_allclose(ours[theirs.index], theirs, atol=1e-7)  # the same gauge: WHAM's f_0 = 0
    assert not np.isfinite(ours.drop(theirs.index)).any()  # inputs only dropped ladders recorded weigh nothing


def test_an_ancestral_replicate_sums_the_resampled_blocks():
    od = ancestral_od(seed=4)
    m = np.array([0, 3, 1, 0, 2, 0, 1, 1], dtype=float)
    ln_rho, ln_w, records = stage_one(od).replicate(m)
    w_units = np.exp(od.rep_unit_ln_weight)
    np.testing.assert_allclose(np.exp(ln_w), w_units @ m, rtol=1e-12)
    np.testing.assert_allclose(np.exp(ln_rho), np.exp(od.unit_ln_rho).T @ m / (200 * m.sum()), rtol=1e-12)
    assert records is None
    with pytest.raises(ValueError, match="within_bin=uniform has no intervals for ancestral"):
        side_replicates(od, [0, 1], 5, seed=0, within_bin="uniform")


def test_multiplicities_draw_all_but_one_unit_and_sum_to_u():
    m = multiplicities(10, 500, np.random.default_rng(0))
    np.testing.assert_allclose(m.sum(1), 10)
    np.testing.assert_allclose(np.unique(np.round(m * 0.9, 9) % 1), [0.0])  # 9 whole draws, scaled by 10/9
    # the variance of a mean over the replicates is the unbiased s²/U, not (U−1)/U of it
    x = np.random.default_rng(1).normal(size=10)
    means = multiplicities(10, 40_000, np.random.default_rng(2)) @ x / 10
    assert means.var() == pytest.approx(x.var(ddof=1) / 10, rel=0.03)  # 40,000 replicates: ~1% relative error
    with pytest.raises(ValueError, match="at least 2 independent stage-1 units"):
        multiplicities(1, 5, np.random.default_rng(0))


def test_effective_sample_sizes_count_inputs_not_draws():
    assert kish_ess(np.ones(7)) == 7 and kish_ess([]) == 0.0
    assert input_ess([0] * 99 + [1]) == pytest.approx(100**2 / (99**2 + 1))
    assert input_ess(np.arange(50)) == pytest.approx(50)
    # weighted: draws of one input add their weights before squaring
    assert input_ess([3, 3, 5], weights=[1.0, 1.0, 0.0]) == pytest.approx(1.0)


def test_intervals_and_expansion():
    samples = np.linspace(0.0, 1.0, 1001)
    assert interval(0.5, samples, 0.95) == pytest.approx([0.025, 0.975])
    assert expansion(0.95, np.inf) == 1.0
    assert expansion(0.95, 15) == pytest.approx(2.1314 / 1.95996, rel=1e-4)
    wide = interval(0.5, samples, 0.95, dof=15)
    assert wide[1] == pytest.approx(0.5 + 0.475 * expansion(0.95, 15))
    assert wide[0] == 0.0  # widened below 0, raised to it: terms and ratios are never negative
    # an undefined replicate (x/0 or 0/0) is +∞: the upper end is unbounded (None), never NaN
    assert interval(1.0, np.r_[np.ones(90), np.full(10, np.nan)], 0.95)[1] is None
    # Welch–Satterthwaite: all of the spread from one part of U units leaves U − 1 degrees of freedom
    spread = np.random.default_rng(0).normal(size=200)
    assert welch_dof(spread, [(spread, 16), (np.zeros(200), 8)]) == pytest.approx(15)
    assert welch_dof(spread, [(np.zeros(200), 16), (np.zeros(200), 8)]) == np.inf


def _sides(seed: int, n_draws: int = 3000):
    """A→B and B→A draws of two synthetic ancestral output distributions, with their replicates."""
    z_a = space_z(0)
    z_b = z_a + np.random.default_rng(9).normal(0, 0.3, SPACE.size)
    ods = [ancestral_outdist(z, -z / 0.8, 8, 200, Z_RANGE, 0.1, np.random.default_rng(seed + i)) for i, z in
           enumerate((z_a, z_b))]  # fmt: skip
    ab = draws_of(ods[0], draw_representatives(ods[0], n_draws, seed=seed, allow_empty_bins=True), z_a, z_b, "A")
    ba = draws_of(ods[1], draw_representatives(ods[1], n_draws, seed=seed + 1, allow_empty_bins=True), z_b, z_a, "B")
    reps = [side_replicates(od, d["representative"], 60, seed, side) for od, d, side in zip(ods, (ab, ba), "AB")]
    return ab, ba, *reps


def test_ratio_uncertainty_has_the_contract_shape_and_the_point_inside():
    ab, ba, rep_a, rep_b = _sides(seed=0)
    point = ratio_from_frames(ab, ba)
    spread = ratio_uncertainty(ab, rep_a, ba, rep_b, 0.0, 0.95, seed=0)
    assert set(spread) == {"ci", "std", "ess"} and spread["ci"]["level"] == 0.95
    assert list(spread["ci"]["terms"]) == list(TERMS) == list(spread["std"]["terms"])
    assert spread["ci"]["ratio"][0] == [1.0, 1.0] and spread["std"]["ratio"][0] == 0.0
    for k in TERMS:
        lo, hi = spread["ci"]["terms"][k]
        assert lo < point["terms"][k] < hi and spread["std"]["terms"][k] > 0
    for r, (lo, hi) in zip(point["ratio"][1:], spread["ci"]["ratio"][1:]):
        assert lo < r < hi
    ess = spread["ess"]
    assert ess["n_units_A"] == ess["n_units_B"] == 8 and 1 < ess["ess_units_A"] <= 8
    assert 1 < ess["ess_inputs_A"] < ab["representative"].nunique() <= len(ab)
    # the point of the replicates' algebra: no resampling and f = 1 is the point estimate
    point_terms = side_term_replicates(ab, rep_a, "AB", 0.0, seed=0).point
    assert point_terms == pytest.approx({k: point["terms"][k] for k in ("PD_AB", "PA_AB")}, abs=1e-15)
    with pytest.raises(ValueError, match="same uncertainty.n_replicates"):
        ratio_uncertainty(ab, rep_a, ba, SideReplicates(rep_b.representative, rep_b.ln_f[:, :5], rep_b.unit_draws,
                                                         "ancestral"), 0.0, 0.95, 0)  # fmt: skip


def test_replicates_and_optional_fields_round_trip(tmp_path, od):
    od.save(tmp_path)
    back = OutputDistribution.load(tmp_path)
    for name in ("unit_hist", "rep_unit_count", "rep_unit_ln_weight", "unit_ln_rho"):
        mine, theirs = getattr(od, name), getattr(back, name)
        assert (mine is None and theirs is None) or np.array_equal(mine, theirs)
    assert back.meta["method"] == od.meta["method"]
    reps = side_replicates(od, [0, 0, 3], 40, seed=1)
    reps.save(tmp_path / "r.npz")
    again = SideReplicates.load(tmp_path / "r.npz")
    assert np.array_equal(again.ln_f, reps.ln_f) and again.method == od.meta["method"]
    with pytest.raises(ValueError, match="draws and replicates do not match"):
        again.of_draws([1])


def test_metrics_and_the_printed_ratio_show_the_intervals():
    ab, ba, rep_a, rep_b = _sides(seed=2)
    ratio = ratio_from_frames(ab, ba)
    ratio.update(ratio_uncertainty(ab, rep_a, ba, rep_b, 0.0, 0.95, seed=2))
    ratio["counts"].update(ratio.pop("ess"))
    ratio["ci"]["ratio"][3] = [0.5, None]  # a replicate with PD_AB = 0 leaves the upper end unbounded
    metrics = ratio_metrics(ratio)
    assert metrics["ratio_PA_AB_lo"] == ratio["ci"]["ratio"][1][0]
    assert metrics["PD_BA_hi"] == ratio["ci"]["terms"]["PD_BA"][1]
    assert metrics["PA_BA_std"] == ratio["std"]["terms"]["PA_BA"] and metrics["n_units_B"] == 8
    assert "ratio_PD_BA_hi" not in metrics and metrics["ratio_PD_BA_lo"] == 0.5  # never NaN
    text = ratio_text(ratio)
    lo, hi = ratio["ci"]["ratio"][1]
    assert text.startswith(f"1.000 : {ratio['ratio'][1]:.3f} [{lo:.2f}, {hi:.2f}] : ") and text.endswith(", ∞]")


def test_config_checks_the_replicates_and_names_the_renamed_key():
    assert load_config("toy").uncertainty.n_replicates == 200
    with pytest.raises(ConfigError, match=r"'uncertainty.n_replicates' must be >= 40 \(2 / \(1 - level\)"):
        load_config("toy", "uncertainty.n_replicates=20")
    assert load_config("toy", "uncertainty.n_replicates=20 uncertainty.level=0.9").uncertainty.level == 0.9
    with pytest.raises(ConfigError, match="'uncertainty.level' must be > 0 and < 1"):
        load_config("toy", "uncertainty.level=1.0")
    with pytest.raises(ConfigError, match="'reweighting.n_bootstrap' in overrides is now 'uncertainty.n_replicates'"):
        load_config("toy", "reweighting.n_bootstrap=50")
    with pytest.raises(ConfigError, match="'sampler.ladders' must be >= 2 \\(the ladders are the independent units"):
        load_config("toy", "sampler.ladders=1")
