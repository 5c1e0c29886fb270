"""Tempering diagnostics: round trips counted by following walkers through swaps, split-R̂ and ESS per bin on
synthetic chains whose answer is known, and the warnings."""

import numpy as np
import torch

from modeldiff.method.diagnostics import bin_diagnostics, warnings_for
from modeldiff.method.tempering import TemperingSettings, _Tallies, geometric_temperatures, run_parallel_tempering


def test_a_round_trip_is_coldest_to_hottest_and_back():
    t = _Tallies.empty(0, k=3, c=2, length=1)

    def place(ladder, walkers):
        t.walker[:, ladder] = torch.tensor(walkers)
        t.track_round_trips()

    place(0, [0, 1, 2])  # walker 0 at the coldest; walker 2 at the hottest without having been at the coldest
    place(0, [1, 2, 0])  # walker 0 reaches the hottest
    place(0, [1, 0, 2])
    assert t.round_trips.tolist() == [0, 0]
    place(0, [0, 1, 2])  # walker 0 back at the coldest: one trip
    assert t.round_trips.tolist() == [1, 0]
    place(0, [2, 0, 1])  # walker 2 at the coldest for the first time: no trip; walker 1 (from the coldest) at the top
    assert t.round_trips.tolist() == [1, 0]
    place(0, [1, 0, 2])  # walker 1 back: the second trip; ladder 1 never moved
    assert t.round_trips.tolist() == [2, 0]


def test_pt_counts_round_trips_on_a_ladder_that_mixes(tiny_task, toy_scorers):
    settings = TemperingSettings(
        temperatures=geometric_temperatures(0.3, 1.0, 3), ladders=2, steps=400, burn_in=50, seed=1
    )
    pt = run_parallel_tempering(toy_scorers[0], tiny_task.space, settings, progress=False)
    assert pt.round_trips.shape == (2,)
    assert (pt.round_trips >= 5).all()  # 400 steps of a 3-rung ladder whose swaps are mostly accepted
    assert (pt.swap_acceptance > 0.5).all()


def _chains(n_ladders, n_steps, stuck, rng):
    """Records of n_ladders chains over 2 bins in Z (equal weights), each step's record in bin 0 with probability
    0.5, except that the first `stuck` ladders never leave bin 0 (chains that have not mixed)."""
    ladder = np.repeat(np.arange(n_ladders), n_steps)
    step = np.tile(np.arange(n_steps), n_ladders)
    p0 = np.where(ladder < stuck, 1.0, 0.5)
    bins = (rng.random(len(step)) >= p0).astype(np.int64)
    return ladder, step, bins


def test_split_rhat_and_ess_on_independent_and_stuck_chains():
    rng = np.random.default_rng(0)
    in_z, distinct = np.array([True, True]), np.array([10_000, 10_000])
    ladder, step, bins = _chains(8, 2000, 0, rng)
    rhat, ess = bin_diagnostics(np.zeros(len(bins)), bins, in_z, ladder, step, distinct)
    # i.i.d. records: R̂ ≈ 1 (its sampling error is ~1/T), ESS ≈ the 16,000 records within its spread over
    # 16 half-ladders (a variance ratio on 15 degrees of freedom: ±2·sqrt(2/15) ≈ ±73%)
    assert np.all(np.abs(rhat - 1) < 0.01)
    assert np.all((ess > 16_000 * 0.27) & (ess <= 16_000))
    ladder, step, bins = _chains(8, 2000, 4, rng)
    rhat_s, ess_s = bin_diagnostics(np.zeros(len(bins)), bins, in_z, ladder, step, distinct)
    # half the half-ladders at 1.0, half at 0.5: R̂ = sqrt(1 + 0.0667 / 0.125) ≈ 1.24
    np.testing.assert_allclose(rhat_s, 1.24, atol=0.02)
    assert np.all(ess_s < 100)  # 16 half-ladders that disagree this much carry a few dozen independent records
    # an ESS counts inputs: 30 distinct inputs in a bin cannot be more than 30 independent ones
    ladder, step, bins = _chains(8, 2000, 0, rng)
    _, capped = bin_diagnostics(np.zeros(len(bins)), bins, in_z, ladder, step, np.array([30, 9]))
    assert capped.tolist() == [30, 9]


def test_warnings_name_the_worst_bin_and_what_to_do():
    edges = np.array([1.0, 1.5, 2.0, 2.5])
    lines = warnings_for(np.array([1.02, 1.3, np.nan]), np.array([500.0, 40.0, np.nan]), edges)
    assert len(lines) == 2
    assert lines[0].startswith("1 bins in Z have split-R̂ > 1.1 (worst 1.3 in [1.5, 2])")
    assert lines[1].startswith("1 bins in Z have ESS < 100 (worst 40 in [1.5, 2])") and "sampler.steps" in lines[1]
    assert warnings_for(np.array([1.0]), np.array([1000.0]), edges[:2]) == []
