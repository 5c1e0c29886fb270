"""Stage 1→3 on an enumerable toy: sampled ρ̃(z) and the ratio's four terms against enumeration."""

import numpy as np
import pandas as pd
import pytest

from modeldiff.method.cross_eval import EmptyBinsError, cross_evaluate, draw_representatives
from modeldiff.method.enumeration import exact_log_rho, exact_ratio
from modeldiff.method.normalize import ratio_from_frames
from modeldiff.method.outdist import OutputDistribution, make_edges
from support import OUTDIST_Z_RANGE as Z_RANGE
from support import assert_within_sigma, term_sigma

N_DRAWS = 40_000


def test_sampled_terms_match_enumeration(tiny_task, toy_scorers, toy_exact_z, outdists):
    z_a, z_b = toy_exact_z
    ab = cross_evaluate(
        outdists[0], tiny_task.space, toy_scorers[0], toy_scorers[1], N_DRAWS, role="A", seed=1, allow_empty_bins=True
    )
    ba = cross_evaluate(
        outdists[1], tiny_task.space, toy_scorers[1], toy_scorers[0], N_DRAWS, role="B", seed=2, allow_empty_bins=True
    )
    sampled = ratio_from_frames(ab, ba)
    exact = exact_ratio(z_a, z_b, Z_RANGE)
    d = z_a.astype(np.float64) - z_b
    masks = {
        "PD_AB": (z_a, z_b, d < 0),
        "PA_AB": (z_a, z_b, d > 0),
        "PA_BA": (z_b, z_a, d < 0),
        "PD_BA": (z_b, z_a, d > 0),
    }
    for term, (src, other, mask) in masks.items():
        sigma = term_sigma(src, other, exact["terms"][term], mask, N_DRAWS, Z_RANGE)
        assert sigma < 0.005  # the test has power: 4σ < 0.02
        assert_within_sigma(sampled["terms"][term], exact["terms"][term], sigma, what=term)
    # D is always A − B, on both sides
    np.testing.assert_allclose(ba["D"], ba["z_A"] - ba["z_B"])
    assert (ab["z_A"].between(*Z_RANGE)).all() and (ba["z_B"].between(*Z_RANGE)).all()


def test_sampled_rho_matches_enumeration(toy_exact_z, outdists):
    for z, od in zip(toy_exact_z, outdists):
        exact = exact_log_rho(z, od.edges)
        m = od.in_z & (np.exp(exact) >= 20)  # bins with enough inputs for a relative comparison
        assert m.sum() >= 10
        exact_norm = exact[m] - np.log(np.exp(exact[m]).sum())
        sampled = od.ln_rho[m] - np.log(np.exp(od.ln_rho[m]).sum())
        std = od.ln_rho_std[m]
        assert np.all(std < 0.25)
        assert np.all(np.abs(sampled - exact_norm) <= 4 * std + 1e-3), np.c_[sampled, exact_norm, std]


def test_output_distribution_roundtrip(tmp_path, outdists):
    od = outdists[0]
    od.save(tmp_path)
    back = OutputDistribution.load(tmp_path)
    np.testing.assert_array_equal(back.ln_rho, od.ln_rho)
    np.testing.assert_array_equal(back.hist, od.hist)
    assert back.z_range == od.z_range and back.meta == od.meta
    pd.testing.assert_frame_equal(
        back.representatives.drop(columns="tokens"), od.representatives.drop(columns="tokens")
    )
    assert all((a == b).all() for a, b in zip(back.representatives["tokens"], od.representatives["tokens"]))
    with pytest.raises(FileNotFoundError, match="sample_outdist"):
        OutputDistribution.load(tmp_path / "nothing")


def test_empty_bins_are_reported_not_zeroed(outdists):
    od = outdists[1]
    # a Z reaching far above anything sampled has bins no sample reached: drawing must refuse
    wide = OutputDistribution(
        **{**od.__dict__, "z_range": (1.3, 9.0), "edges": make_edges(od.edges[0], 9.0, (1.3, 9.0), 0.02)}
    )
    wide.ln_rho = np.r_[od.ln_rho, np.full(len(wide.edges) - 1 - len(od.ln_rho), -np.inf)]
    with pytest.raises(EmptyBinsError, match="got no sample"):
        draw_representatives(wide, 10)
    assert len(wide.empty_bins_in_z) > 0


def test_within_bin_uniform_option_and_determinism(outdists):
    od = outdists[0]
    a = draw_representatives(od, 500, seed=3, allow_empty_bins=True)
    assert (a == draw_representatives(od, 500, seed=3, allow_empty_bins=True)).all()
    u = draw_representatives(od, 500, seed=3, within_bin="uniform", allow_empty_bins=True)
    assert u.shape == (500,)
    with pytest.raises(ValueError, match="within_bin"):
        draw_representatives(od, 5, within_bin="nope")
