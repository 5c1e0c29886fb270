"""The plagiarism statistics: black-box shares with their intervals, the white-box tests' p-values (valid under
independence, decisive for copies, permuted copies and fine-tunes), the verdict table and its aggregation, and the
webhook deliveries' signature, timestamp and replay checks."""

import copy
import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.webhooks.delivery import _generate_hmac_signature
from scipy.optimize import linear_sum_assignment

from modeldiff import pipeline
from modeldiff.analysis.plagiarism import (
    BlackBox,
    SideStatistic,
    Thresholds,
    black_box,
    decide,
    report,
    screening_verdict,
    side_statistic,
    weighted_quantile_interval,
    wilson,
)
from modeldiff.analysis.relatedness import (
    HEADS,
    UNITS,
    Relatedness,
    apply_symmetry,
    assign,
    permutation_tail_bound,
    random_symmetry,
    spearman,
    symmetries,
    weight_relatedness,
)
from modeldiff.config import ConfigError, load_config
from modeldiff.method.toy import ToyTask, make_toy_model, train_toy_model
from modeldiff.models import LoadedModel
from modeldiff.models.derive import add_weight_noise
from modeldiff.platform.screening import (
    DeliveryLog,
    DeliveryRejected,
    check_delivery,
    content_length,
    created_version,
    failure_reason,
    signature,
)

TASK = ToyTask(length=5, vocab_size=6, modulus=10)


def toy(seed: int, n_embd: int = 16, n_layer: int = 1):
    return make_toy_model(TASK, n_embd=n_embd, n_head=2, n_layer=n_layer, seed=seed).eval()


def test_config_defaults_are_the_calibrated_thresholds():
    assert Thresholds.from_config(load_config("toy")) == Thresholds()


def test_wilson_interval_known_values():
    lo, hi = wilson(8, 10, 0.95)  # the textbook example: 8 of 10, 95%
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)


def test_side_statistic_counts_inputs_not_draws():
    # 99 draws of one input where the other model wins, 1 draw of another where it loses: q = 0.99, but the
    # evidence is two inputs, so the interval stays wide
    draws = pd.DataFrame({"D": [0.2] * 99 + [-0.1], "representative": [0] * 99 + [1]})
    s = side_statistic(draws, "A")
    assert s.other_wins == pytest.approx(0.99) and s.n_distinct == 2
    assert s.n_effective == pytest.approx(100**2 / (99**2 + 1))
    assert s.interval[0] < 0.25
    # on B's draws the other model (A) wins where D < 0; ties within float noise count for neither
    b = side_statistic(pd.DataFrame({"D": [-0.3, -0.2, 0.1, 1e-8], "representative": [0, 1, 2, 3]}), "B")
    assert b.other_wins == pytest.approx(2 / 3) and b.n_ties == 1 and b.n_effective == pytest.approx(3)


def _draws(side: str, z_own: np.ndarray, d: np.ndarray, per_input: int = 1) -> pd.DataFrame:
    """One side's cross_eval draws: each input (own z, D = z_A − z_B) drawn `per_input` times."""
    z_other = z_own - d if side == "A" else z_own + d
    z_a, z_b = (z_own, z_other) if side == "A" else (z_other, z_own)
    rep = np.repeat(np.arange(len(d)), per_input)
    return pd.DataFrame({"D": d[rep], "z_A": z_a[rep], "z_B": z_b[rep], "representative": rep})


def _pair(rng, n, d_a, d_b, spread=0.04, per_input=1):
    """Both sides with own z ~ N(1.4, spread²) and the given D samplers."""
    return (
        _draws("A", rng.normal(1.4, spread, n), d_a(n), per_input),
        _draws("B", rng.normal(1.4, spread, n), d_b(n), per_input),
    )


def test_black_box_regimes_on_synthetic_pairs():
    """Known answers: |D| ~ |N(0, τ²)| has median 0.6745·τ; selection ±s cancels in the balance, a parent offset c
    shows as −2c; dominance when A wins on nearly all of B's inputs."""
    rng = np.random.default_rng(0)
    t = Thresholds()
    n, spread = 400, 0.04
    # near identity (small σ): each wins on its own inputs by selection, |D| tiny against the z spread
    sel = 0.002
    ab, ba = _pair(rng, n, lambda k: rng.normal(-sel, 0.002, k), lambda k: rng.normal(sel, 0.002, k), spread)
    bb = black_box(ab, ba, t)
    assert bb.scale == pytest.approx(spread, rel=0.1)
    truth = np.median(np.abs(rng.normal(sel, 0.002, 200_000))) / spread
    assert bb.relative_D_interval[0] <= truth * 1.1 and bb.relative_D_interval[1] >= truth * 0.9
    assert bb.near_identical and not bb.distinct and bb.dominated is None and bb.own_wins
    assert bb.balance_copy is None and abs(bb.balance_z) < 3  # selection alone: the direction is unknown
    v = decide(bb, None, t, "black_box")
    assert (v.verdict, v.copy, v.direction_evidence) == ("suspected_copy_of", None, "unknown")
    # the same plus the parent's optimum: B's NLL higher by c on both sides' inputs
    c = 0.002
    ab, ba = _pair(rng, n, lambda k: rng.normal(-sel - c, 0.002, k), lambda k: rng.normal(sel - c, 0.002, k), spread)
    bb = black_box(ab, ba, t)
    assert bb.balance == pytest.approx(-2 * c, abs=4 * bb.balance_se) and bb.balance_copy == "B"
    assert decide(bb, None, t, "black_box").direction_evidence == "black_box_balance"
    # dominance (large σ): A has the lower NLL on B's inputs too, and the functions are far apart
    ab, ba = _pair(rng, n, lambda k: rng.normal(-0.1, 0.02, k), lambda k: -np.abs(rng.normal(0.2, 0.05, k)), spread)
    bb = black_box(ab, ba, t)
    assert bb.dominated == "B" and bb.b.interval[0] > 0.95 and not bb.near_identical
    v = decide(bb, None, t, "black_box")
    assert (v.verdict, v.copy, v.parent, v.direction_evidence) == ("suspected_copy_of", "B", "A", "black_box_dominance")
    # independent: each wins on its own inputs and |D| is many z spreads
    ab, ba = _pair(rng, n, lambda k: rng.normal(-0.3, 0.2, k), lambda k: rng.normal(0.3, 0.2, k), spread)
    bb = black_box(ab, ba, t)
    assert bb.distinct and not bb.near_identical and bb.dominated is None
    assert decide(bb, None, t, "black_box").verdict == "independent"
    # in between (as a σ = 1e-1 toy copy): neither near nor farther than copies -> the black box abstains
    ab, ba = _pair(rng, n, lambda k: rng.normal(-0.02, 0.03, k), lambda k: rng.normal(0.02, 0.03, k), spread)
    bb = black_box(ab, ba, t)
    assert not (bb.near_identical or bb.distinct or bb.dominated)
    assert decide(bb, None, t, "black_box").verdict == "inconclusive"


def test_black_box_intervals_count_inputs_not_draws():
    """50 inputs per side drawn 20 times each carry the evidence of 100 inputs, not 2000 draws."""
    rng = np.random.default_rng(1)
    ab, ba = _pair(rng, 50, lambda k: rng.normal(0, 0.01, k), lambda k: rng.normal(0, 0.01, k), per_input=20)
    bb = black_box(ab, ba)
    assert bb.n_effective == pytest.approx(100) and bb.a.n_effective == pytest.approx(50)
    once = black_box(
        *(f.drop_duplicates("representative").reset_index(drop=True) for f in (ab, ba))
    )  # the same inputs drawn once
    assert once.relative_D_interval == pytest.approx(bb.relative_D_interval)
    assert once.balance_se == pytest.approx(bb.balance_se)


def test_relative_median_interval_covers_the_truth():
    """By repetition against the exact median of |N(0, τ²)| / spread: the 95% order-statistic interval at the
    effective sample size covers it in about 95% of 300 repetitions (binomial sd 1.3%: accept 0.91–0.99)."""
    rng = np.random.default_rng(2)
    tau, spread, hits, reps = 0.01, 0.04, 0, 300
    truth = 0.6744897501960817 * tau / spread
    for _ in range(reps):
        ab, ba = _pair(rng, 60, lambda k: rng.normal(0, tau, k), lambda k: rng.normal(0, tau, k), spread)
        d = np.concatenate([ab["D"], ba["D"]])
        z = np.concatenate([ab["z_A"], ba["z_B"]])
        rel = np.abs(d) / spread  # the true scale: coverage of the median alone
        med, (lo, hi) = weighted_quantile_interval(rel, np.ones(len(rel)), 0.5, len(rel))
        hits += lo <= truth <= hi
        assert black_box(ab, ba).scale == pytest.approx(np.std(z[:60]) / 2 + np.std(z[60:]) / 2, rel=0.2)
    assert 0.91 <= hits / reps <= 0.99, hits / reps


def test_black_box_needs_nll_columns_and_a_spread():
    rng = np.random.default_rng(3)
    ab, ba = _pair(rng, 10, lambda k: rng.normal(0, 0.01, k), lambda k: rng.normal(0, 0.01, k))
    with pytest.raises(ValueError, match="lack z_A"):
        black_box(ab.drop(columns="z_A"), ba)
    flat = ab.assign(z_A=1.4)
    with pytest.raises(ValueError, match="widen z_range"):
        black_box(flat, ba.assign(z_B=1.4))


def test_independent_random_models_give_valid_p_values():
    """Independently initialised models are the null hypothesis exactly: the p-values must be roughly uniform
    (mean 1/2 ± 4·√(1/12/n)) and never decisive. (Trained pairs: tests/slow/test_relatedness_null.py.)"""
    n = 24
    results = [
        weight_relatedness(toy(2 * i), toy(2 * i + 1), permutations=19, simulations=19, seed=i) for i in range(n)
    ]
    tolerance = 4 * math.sqrt(1 / 12 / n)
    for name in ("cosine_p_value", "match_p_value"):
        p = np.array([getattr(r, name) for r in results])
        assert abs(p.mean() - 0.5) < tolerance, (name, p)
    assert min(r.p_value for r in results) > Thresholds().weight_alpha
    assert all(r.applicable and not r.identical_weights for r in results)
    assert max(abs(r.direction_z) for r in results) < 4.5  # z ~ N(0, 1) when neither carries extra noise


def test_noise_copy_is_related_noise_like_and_its_direction_shows():
    parent = toy(0, n_embd=32, n_layer=2)
    for sigma in (1e-1, 1e-3, 1e-5):
        child = add_weight_noise(copy.deepcopy(parent), sigma, seed=3, relative=True)
        r = weight_relatedness(parent, child, permutations=19, simulations=49)
        # beyond all 19 draws, the tail bound takes the p-value towards 1/32! ≈ 4e-36
        assert r.p_value < 1e-20 and r.cosine_median > 1 - sigma  # cos ≈ 1/√(1 + σ²)
        assert r.structure_p_value > 1e-3 and 0.85 < r.spectral_ratio_median < 1.1  # δ is i.i.d. noise
        assert r.units_moved == 0 and r.heads_moved == 0
    # large noise carries visible energy: the copy is named whichever side it is on
    big = add_weight_noise(copy.deepcopy(parent), 0.3, seed=4, relative=True)
    assert weight_relatedness(parent, big, permutations=9, simulations=9).direction_z > 4
    assert weight_relatedness(big, parent, permutations=9, simulations=9).direction_z < -4


@pytest.mark.parametrize("parts", [(UNITS,), (HEADS,), (UNITS, HEADS)])
def test_permuted_noise_copy_is_aligned_then_called_noise(parts):
    """A copier who relabels hidden units or heads keeps the function; the matching sees through it, the unit and head
    tensors' own cosines do not, and once aligned the difference is the noise again, not a structured change."""
    parent = toy(0, n_embd=32, n_layer=2)
    child = add_weight_noise(copy.deepcopy(parent), 1e-1, seed=3, relative=True)
    g = random_symmetry(symmetries(child), np.random.default_rng(0), parts)
    g.heads = {block: np.array([1, 0]) for block in g.heads}  # two heads: swapped, not left in place by chance
    apply_symmetry(child, g)
    r = weight_relatedness(parent, child, permutations=19, simulations=49)
    assert r.p_value < 1e-20 and r.structure_p_value > 1e-3
    if UNITS in parts:
        mlp = [t for t in r.tensors if ".mlp." in t.name]
        assert max(abs(t.cosine) for t in mlp) < 0.2  # the plain cosine is fooled on the permuted tensors...
        # ...the matching is not; its Monte Carlo p-value bottoms out at 1/(1 + permutations)
        assert r.match_p_value == pytest.approx(1 / 20) and all(b.spearman > 0.99 for b in r.blocks)
        assert all(b.identity_fraction < 0.1 for b in r.blocks) and r.units_moved > 0.9
    if HEADS in parts:
        assert r.heads_moved == 1


def test_spearman_of_permutations():
    assert spearman(np.arange(100), np.arange(100)) == pytest.approx(1.0)
    assert spearman(np.arange(100), np.arange(100)[::-1]) == pytest.approx(-1.0)
    assert spearman(np.array([3, 10, 7]), np.array([1, 2, 9])) == pytest.approx(0.5)


def test_permutation_tail_bound_holds_against_enumeration():
    """P(Σ_j C[j, r(j)] ≥ t) over all 7! permutations, against the bound: never below it, and for a copy-like C
    (a dominant diagonal) close to the 1/7! of the identity alone."""
    rng = np.random.default_rng(0)
    perms = np.array(list(itertools.permutations(range(7))))
    for c in (rng.normal(size=(7, 7)), np.eye(7) * 3 + rng.normal(size=(7, 7)) * 0.3, rng.exponential(size=(7, 7))):
        values = c[np.arange(7), perms].sum(1)
        for t in np.quantile(values, [0.5, 0.9, 0.99, 0.999, 1.0]):
            assert permutation_tail_bound(c, t) >= (values >= t - 1e-12).mean()
    copy_like = np.eye(7) * 3 + rng.normal(size=(7, 7)) * 0.3
    assert permutation_tail_bound(copy_like, np.trace(copy_like)) < 3 / math.factorial(7)


def test_assignment_shortcut_is_the_hungarian_optimum():
    rng = np.random.default_rng(1)
    for s in (rng.normal(size=(30, 30)), rng.normal(size=(30, 30)) + 5 * np.eye(30)[rng.permutation(30)]):
        cols = assign(s)
        assert sorted(cols) == list(range(30))
        assert s[np.arange(30), cols].sum() == pytest.approx(s[linear_sum_assignment(s, maximize=True)].sum())


def test_fine_tune_difference_is_structured():
    parent = toy(0)
    train_toy_model(parent, TASK, steps=40, seed=0, progress=False)
    tuned = copy.deepcopy(parent)
    train_toy_model(tuned, ToyTask(5, 6, 5), steps=15, lr=1e-3, seed=1, progress=False)
    r = weight_relatedness(parent, tuned, permutations=19, simulations=199)
    assert r.p_value < 1e-10 and r.spectral_ratio_median > 1.3
    assert r.structure_p_value < Thresholds().noise_alpha / 10  # not a noise copy


def test_different_architectures_are_not_compared():
    r = weight_relatedness(toy(0, n_layer=1), toy(1, n_layer=2))
    assert not r.applicable and "architectures differ" in r.reason and math.isnan(r.p_value)


def _side(side, q, lo, hi):
    return SideStatistic(side, 100, 100, 100.0, 0, q, (lo, hi), 0.0, 0.1, 0.05)


def _bb(dominated=None, near=False, distinct=False, balance=None):
    rel = 0.01 if near else 5.0 if distinct else 1.0
    return BlackBox(
        _side("A", 0.3, 0.2, 0.4),
        _side("B", 0.97 if dominated else 0.4, 0.96 if dominated else 0.3, 0.99),
        0.001 if near else 0.2,
        near,
        dominated,
        False,
        scale=0.05,
        relative_D=rel,
        relative_D_interval=(rel * 0.8, rel * 1.2),
        n_effective=200.0,
        distinct=distinct,
        balance={"A": 0.1, "B": -0.1, None: 0.0}[balance],
        balance_se=0.01,
        balance_copy=balance,
    )


def _wb(p=1e-30, structure=0.5, z=0.0, applicable=True):
    return Relatedness(
        applicable=applicable,
        reason="" if applicable else "architectures differ",
        tensors=[],
        blocks=[],
        cosine_median=0.99,
        cosine_p_value=p / 2,
        match_p_value=0.01,
        units_moved=0.0,
        heads_moved=0.0,
        structure_p_value=structure,
        spectral_ratio_median=1.0,
        direction_z=z,
    )


@pytest.mark.parametrize(
    "bb,wb,verdict,copy_side,evidence",
    [
        # related, noise-like, no evidence of direction: unknown, not B by argument order
        (_bb(), _wb(), "suspected_copy_of", None, "unknown"),
        (_bb(), _wb(z=-9.0), "suspected_copy_of", "A", "weight_energy"),  # A carries the noise energy
        (_bb(dominated="B"), _wb(z=-9.0), "suspected_copy_of", "B", "black_box_dominance"),  # the black box goes first
        (_bb(balance="A"), _wb(z=9.0), "suspected_copy_of", "B", "weight_energy"),  # the weights before the balance
        (_bb(balance="A"), _wb(), "suspected_copy_of", "A", "black_box_balance"),
        (_bb(dominated="B", balance="A"), _wb(), "suspected_copy_of", "B", "black_box_dominance"),
        (_bb(), _wb(structure=1e-9), "related", None, None),  # a fine-tune
        (_bb(near=True), _wb(structure=1e-9), "suspected_copy_of", None, "unknown"),  # same function anyway
        # a structured difference: weight energy shows which has more, not which was copied
        (_bb(near=True), _wb(structure=1e-9, z=-9.0), "suspected_copy_of", None, "unknown"),
        (_bb(distinct=True), _wb(p=0.3), "independent", None, None),
        (_bb(), _wb(p=0.3), "independent", None, None),  # the weights decide when the black box abstains
        (_bb(dominated="B"), _wb(p=0.3), "inconclusive", None, None),  # black box says copy, weights disagree
        (_bb(near=True), _wb(p=0.3), "inconclusive", None, None),
        (_bb(dominated="B"), _wb(applicable=False), "suspected_copy_of", "B", "black_box_dominance"),  # black box alone
        (_bb(near=True), None, "suspected_copy_of", None, "unknown"),
        (_bb(near=True, balance="B"), None, "suspected_copy_of", "B", "black_box_balance"),
        (_bb(distinct=True), _wb(applicable=False), "independent", None, None),
        (_bb(), _wb(applicable=False), "inconclusive", None, None),
        (_bb(dominated="A", distinct=True), None, "suspected_copy_of", "A", "black_box_dominance"),  # dominance first
    ],
)
def test_verdict_table(bb, wb, verdict, copy_side, evidence):
    v = decide(bb, wb, Thresholds())
    assert (v.verdict, v.copy, v.direction_evidence, v.mode) == (verdict, copy_side, evidence, "combined"), v.reason
    if verdict == "suspected_copy_of":
        assert v.parent == {"A": "B", "B": "A", None: None}[copy_side]
        assert ("unknown" in v.reason) == (copy_side is None)


def test_registration_order_is_the_last_resort_for_direction():
    """Screening knows which version came later; a pair check does not (argument order is no evidence)."""
    v = decide(_bb(near=True), None, Thresholds(), "black_box", order="registration_order")
    assert (v.copy, v.parent, v.direction_evidence) == ("B", "A", "registration_order")
    # the balance assumes a parent at an optimum of its loss; the registry's order goes first
    v = decide(_bb(near=True, balance="A"), _wb(), Thresholds(), "combined", order="registration_order")
    assert (v.copy, v.direction_evidence) == ("B", "registration_order")
    v = decide(_bb(near=True, balance="A"), _wb(z=-9.0), Thresholds(), "combined", order="registration_order")
    assert (v.copy, v.direction_evidence) == ("A", "weight_energy")  # evidence from the weights beats order


@pytest.mark.parametrize(
    "mode,bb,wb,verdict,copy_side,evidence",
    [
        # white_box: the weights alone; a black box, if given, is ignored
        ("white_box", None, _wb(), "suspected_copy_of", None, "unknown"),
        ("white_box", _bb(dominated="A"), _wb(z=9.0), "suspected_copy_of", "B", "weight_energy"),
        ("white_box", None, _wb(structure=1e-9), "related", None, None),
        ("white_box", _bb(dominated="B"), _wb(p=0.3), "independent", None, None),
        ("white_box", _bb(dominated="B"), _wb(applicable=False), "inconclusive", None, None),  # no guess
        ("white_box", None, None, "inconclusive", None, None),
        # black_box: the scores alone; weights, if given, are ignored
        ("black_box", _bb(dominated="B"), _wb(p=0.3), "suspected_copy_of", "B", "black_box_dominance"),
        ("black_box", _bb(distinct=True), _wb(p=1e-30), "independent", None, None),
        ("black_box", _bb(near=True), _wb(z=-9.0), "suspected_copy_of", None, "unknown"),
        ("black_box", _bb(), _wb(), "inconclusive", None, None),
    ],
)
def test_verdict_by_mode(mode, bb, wb, verdict, copy_side, evidence):
    v = decide(bb, wb, Thresholds(), mode)
    assert (v.verdict, v.copy, v.direction_evidence, v.mode) == (verdict, copy_side, evidence, mode), v.reason
    rep = report(bb, wb, v, Thresholds())
    assert rep["mode"] == mode and rep["verdict"] == verdict
    assert (rep["black_box"] is None) == (mode == "white_box")  # plagiarism.json holds only the evidence used
    assert ("white_box" in rep) == (mode != "black_box" and wb is not None)
    assert ("(white box only" in v.reason) == (mode == "white_box" and wb is not None and wb.applicable)
    if mode == "white_box" and (wb is None or not wb.applicable):
        assert "white box: " in v.reason


class WeightsNotAtHand(torch.nn.Module):
    """A model whose weights must not be read."""

    def named_parameters(self, *args, **kwargs):
        raise AssertionError("the black_box mode read the weights")


def test_pipeline_modes_use_only_their_evidence():
    """black_box never reads the weights; white_box needs no draws; both say so in plagiarism.json."""
    rng = np.random.default_rng(0)
    z = rng.normal(1.4, 0.05, 300)
    d = -np.abs(rng.normal(0.2, 0.05, 300))
    draws = pd.DataFrame({"D": d, "z_A": z, "z_B": z - d, "representative": np.arange(300)})
    hidden = [LoadedModel(WeightsNotAtHand(), None, f"hidden:{s}", TASK.space, s) for s in "AB"]
    verdict, rep = pipeline.plagiarism(load_config("toy", "plagiarism.mode=black_box"), *hidden, draws, draws)
    assert (verdict.mode, rep["mode"], verdict.verdict, verdict.copy) == ("black_box",) * 2 + ("suspected_copy_of", "B")
    assert "white_box" not in rep and rep["black_box"]["dominated"] == "B"
    parent = toy(0)
    models = [
        LoadedModel(m, None, f"toy:{i}", TASK.space, str(i)) for i, m in enumerate((parent, copy.deepcopy(parent)))
    ]
    cfg = load_config("toy", "plagiarism.mode=white_box plagiarism.permutations=9 plagiarism.simulations=9")
    verdict, rep = pipeline.plagiarism(cfg, *models, None, None)
    assert (verdict.mode, verdict.verdict, rep["black_box"]) == ("white_box", "suspected_copy_of", None)
    assert rep["white_box"]["identical_weights"] and "identical weights" in verdict.reason


def test_mode_errors():
    with pytest.raises(ValueError, match="combined, black_box, white_box"):
        decide(_bb(), _wb(), Thresholds(), "grey_box")
    with pytest.raises(ValueError, match="needs both sides' cross_eval draws"):
        decide(None, _wb(), Thresholds(), "combined")
    with pytest.raises(ConfigError, match="plagiarism.mode"):
        load_config("toy", "plagiarism.mode=grey_box")


def _report(verdict, copy_side=None, p=None, q95=0.1):
    wb = {"applicable": p is not None, "p_value": p, "structure_p_value": 0.5, "direction_z": 0.0}
    side = {"other_wins": 0.5, "interval": [0.4, 0.6]}
    return {
        "verdict": verdict,
        "copy": copy_side,
        "black_box": {"A": side, "B": side, "abs_D_q95": q95},
        "white_box": wb,
    }


def test_screening_names_the_strongest_parent():
    results = [
        ("models:/m/1", _report("independent", p=0.4)),
        ("models:/m/2", _report("suspected_copy_of", "B", 1e-9)),
        ("models:/m/3", _report("suspected_copy_of", "B", 1e-40)),
        ("models:/m/4", _report("related", p=1e-50)),
    ]
    verdict, counterpart, stat = screening_verdict(results)
    assert (verdict, counterpart) == ("suspected_copy_of", "models:/m/3") and stat["weight_p"] == 1e-40
    # an earlier model that is a copy of the new one makes the new one related (its parent), not a copy
    assert screening_verdict([("models:/m/1", _report("suspected_copy_of", "A", 1e-9))])[:2] == (
        "related",
        "models:/m/1",
    )
    assert screening_verdict([("models:/m/1", _report("independent", p=0.4))])[:2] == ("independent", "")
    assert screening_verdict([])[0] == "independent"
    # a counterpart that could not be compared: no finding is no evidence of independence; a finding stands
    only_independent = [("models:/m/1", _report("independent", p=0.4))]
    verdict, counterpart, stat = screening_verdict(only_independent, {"models:/bad/1": "cannot load"})
    assert (verdict, counterpart) == ("inconclusive", "") and stat["not_compared"] == ["models:/bad/1"]
    assert screening_verdict(results, {"models:/bad/1": "x"})[:2] == ("suspected_copy_of", "models:/m/3")


# ---- webhook deliveries ----

SECRET = "s3cret"


def _delivery(body: dict, delivery_id="d-1", timestamp=None, secret=SECRET):
    raw = json.dumps(body).encode()
    ts = str(int(timestamp if timestamp is not None else 1_700_000_000))
    return {
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": ts,
        "X-MLflow-Signature": signature(secret, delivery_id, ts, raw),
    }, raw


def test_signature_is_mlflows():
    raw = json.dumps({"entity": "model_version", "action": "created"})
    assert signature(SECRET, "abc", "123", raw.encode()) == _generate_hmac_signature(SECRET, "abc", "123", raw)


def test_check_delivery_accepts_authentic_and_rejects_forged_stale_or_incomplete():
    body = {"entity": "model_version", "action": "created", "data": {"name": "m", "version": "1"}}
    headers, raw = _delivery(body)
    assert check_delivery(headers, raw, SECRET, now=1_700_000_010, tolerance=300) == ("d-1", body)
    forged, raw_f = _delivery(body, secret="wrong")
    with pytest.raises(DeliveryRejected, match="signature") as e:
        check_delivery(forged, raw_f, SECRET, now=1_700_000_010, tolerance=300)
    assert e.value.status == 401
    with pytest.raises(DeliveryRejected, match="signature"):  # a body changed after signing
        check_delivery(headers, raw.replace(b'"1"', b'"2"'), SECRET, now=1_700_000_010, tolerance=300)
    with pytest.raises(DeliveryRejected, match=r"stale delivery: timestamp -301 s from now") as e:
        check_delivery(headers, raw, SECRET, now=1_700_000_000 + 301, tolerance=300)
    assert e.value.status == 401
    with pytest.raises(DeliveryRejected, match=r"stale delivery: timestamp \+400 s from now"):  # from the future
        check_delivery(headers, raw, SECRET, now=1_700_000_000 - 400, tolerance=300)
    with pytest.raises(DeliveryRejected, match="missing"):
        check_delivery({k: v for k, v in headers.items() if "Signature" not in k}, raw, SECRET, 1_700_000_000, 300)


def test_delivery_log_remembers_ids_across_restarts(tmp_path):
    log = DeliveryLog(tmp_path / "d.sqlite", tolerance=300)
    assert log.claim("a") and not log.claim("a") and log.claim("b")
    log.release("b")
    again = DeliveryLog(tmp_path / "d.sqlite", tolerance=300)
    assert not again.claim("a") and again.claim("b")


def test_content_length_is_strict():
    from email.message import Message

    def headers(*pairs):
        m = Message()
        for k, v in pairs:
            m[k] = v
        return m

    assert content_length(headers(("Content-Length", "17"))) == 17
    for pairs, status in [
        ((("Content-Length", "-1"),), 400),
        ((("Content-Length", "abc"),), 400),
        ((("Content-Length", "+5"),), 400),
        ((("Content-Length", str((1 << 20) + 1)),), 413),
        ((), 411),
        ((("Content-Length", "5"), ("Content-Length", "7")), 400),
        ((("Transfer-Encoding", "chunked"),), 411),
    ]:
        with pytest.raises(DeliveryRejected) as e:
            content_length(headers(*pairs))
        assert e.value.status == status, (pairs, e.value.reason)


@pytest.mark.parametrize("body", [[], "x", None, 3])
def test_a_body_that_is_json_but_not_an_object_is_400(body):
    headers, raw = _delivery(body)
    with pytest.raises(DeliveryRejected, match="not an object") as e:
        check_delivery(headers, raw, SECRET, now=1_700_000_000, tolerance=300)
    assert e.value.status == 400


def test_created_version_reads_the_event():
    event = {"entity": "model_version", "action": "created"}
    assert created_version({**event, "data": {"name": "m", "version": "3"}}) == ("m", "3")
    assert created_version({**event, "data": {"name": "m", "version": 3}}) == ("m", "3")
    assert created_version({"entity": "registered_model", "action": "created", "data": []}) is None
    for data in ([], {"name": "m"}, {"name": "", "version": "1"}, {"name": "m", "version": "1; drop"}):
        with pytest.raises(DeliveryRejected, match="needs data.name") as e:
            created_version({**event, "data": data})
        assert e.value.status == 400


def test_failure_reason_is_the_jobs_one_line_error_and_what_to_do(tmp_path):
    log = tmp_path / "m-1.log"
    lines = ["loading", "modeldiff: error: models:/m/1 refers to itself ...: register the model with its weights"]
    reason = failure_reason(lines, 2, None, "models:/m/1", log)
    assert reason.startswith("models:/m/1 refers to itself ...: register the model with its weights (log: ")
    assert reason.endswith("then rerun: modeldiff screen run models:/m/1)") and "\n" not in reason
    crashed = failure_reason(["Traceback (most recent call last):", "KeyError: 'x'"], 1, None, "models:/m/1", log)
    assert crashed.startswith("the job crashed (exit code 1; last line of its log: \"KeyError: 'x'\"): a bug")
    assert failure_reason(lines, -9, 600, "models:/m/1", log).startswith("the job ran longer than --job-timeout 600 s")
