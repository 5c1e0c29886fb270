import tracemalloc

import numpy as np
import pytest

from modeldiff.method.outdist import build_output_distribution, fine_bin_of, make_edges
from modeldiff.method.reweighting import coarsen, log_weights, solver_grid, wham
from modeldiff.method.toy import ToyTask
from support.samples import mixed_tempering

# A known density of states on a discrete energy grid (like a small system's spectrum).
E = np.linspace(0.0, 3.0, 151)
LN_RHO = 6 * np.log1p(3 * E) + 1.5 * E
T = np.geomspace(0.08, 3.0, 8)
N_PER = 40_000


def tempered_histograms(rng):
    """Exact i.i.d. draws from each π_k(E) ∝ ρ(E) exp(−E/T_k)."""
    hist = np.zeros((len(T), len(E)))
    for k, t in enumerate(T):
        lp = LN_RHO - E / t
        p = np.exp(lp - lp.max())
        hist[k] = rng.multinomial(N_PER, p / p.sum())
    return hist


def test_wham_recovers_known_density(rng):
    hist = tempered_histograms(rng)
    res = wham(hist, E, T)
    assert res.residual < 1e-8 and res.iterations < 100
    seen = hist.sum(0)
    m = seen >= 100  # bins with enough samples for a 10% check
    diff = (res.ln_rho - LN_RHO)[m]
    diff -= np.average(diff, weights=seen[m])
    # relative error of a bin estimate ~ 1/sqrt(counts); 5 sigma bound per bin
    assert np.all(np.abs(diff) < 5 / np.sqrt(seen[m])), np.abs(diff).max()
    assert m.sum() > 100


def test_wham_f_matches_its_definition(rng):
    res = wham(tempered_histograms(rng), E, T)
    m = np.isfinite(res.ln_rho)
    f = -np.log(np.exp(res.ln_rho[m][:, None] - E[m][:, None] / T[None, :]).sum(0))
    np.testing.assert_allclose(f - f[0], res.f, atol=1e-8)


def test_wham_warm_start_and_bad_input(rng):
    hist = tempered_histograms(rng)
    cold = wham(hist, E, T)
    warm = wham(hist, E, T, f0=cold.f + 3.0)
    np.testing.assert_allclose(warm.f, cold.f, atol=1e-8)
    hist[2] = 0
    with pytest.raises(ValueError, match="every replica"):
        wham(hist, E, T)


def test_sample_weights_sum_to_bin_density(rng):
    """Σ of pooled-sample weights inside a bin estimates ρ(bin)."""
    hist = tempered_histograms(rng)
    res = wham(hist, E, T)
    n_k = hist.sum(1)
    w = np.exp(log_weights(E, res.f, n_k, T)) * hist.sum(0)  # every sample at a grid energy
    m = hist.sum(0) > 0
    np.testing.assert_allclose(np.log(w[m]), res.ln_rho[m], atol=1e-9)


def test_solver_grid_is_fine_enough():
    edges = np.linspace(1.0, 2.0, 11)
    fine, sub = solver_grid(edges, t_min=0.02, max_bias=0.02)
    assert (fine[1] - fine[0]) / 0.02 <= 2 * 0.02 + 1e-12
    assert fine[::sub] == pytest.approx(edges)
    np.testing.assert_allclose(coarsen(np.log(np.ones(len(fine) - 1)), sub), np.log(sub))


def test_occupied_sub_bin_solve_equals_the_dense_solve():

    space = ToyTask(length=3, vocab_size=5, modulus=5).space
    rng = np.random.default_rng(3)
    z = rng.uniform(0.5, 3.0, space.size)
    pt = mixed_tempering(space, z, [0.05, 0.2, 1.0], ladders=3, per_replica=300, rng=rng)
    od = build_output_distribution(pt, space, (1.0, 2.25), 0.25, n_replicates=0)

    edges = make_edges(float(pt.z.min()), float(pt.z.max()), (1.0, 2.25), 0.25)
    fine, sub = solver_grid(edges, 0.05)
    dense = np.zeros((3, len(fine) - 1))
    np.add.at(dense, (pt.replica.astype(int), fine_bin_of(pt.z, edges, sub, (1.0, 2.25))), 1.0)
    sol = wham(dense, 0.5 * (fine[1:] + fine[:-1]), pt.temperatures)
    ln_rho = coarsen(sol.ln_rho, sub)
    ln_rho += space.log_size - np.logaddexp.reduce(ln_rho[np.isfinite(ln_rho)])
    np.testing.assert_allclose(od.ln_rho, ln_rho, rtol=0, atol=1e-9)
    np.testing.assert_allclose(od.f, sol.f, rtol=0, atol=1e-9)
    assert od.meta["solver_sub_bins_occupied"] < dense.shape[1] / 10


def test_a_grid_too_fine_to_hold_is_solved_in_memory_bounded_by_the_records():
    """T_min = 1e-7 splits each 0.25-wide bin into 62.5 million sub-bins: a dense grid of 3 replicas would need
    about 20 GB; the occupied sub-bins need kilobytes."""

    space = ToyTask(length=3, vocab_size=5, modulus=5).space
    rng = np.random.default_rng(4)
    z = rng.uniform(0.5, 3.0, space.size)
    pt = mixed_tempering(space, z, [1e-7, 0.3, 1.0], ladders=2, per_replica=300, rng=rng)
    tracemalloc.start()
    od = build_output_distribution(pt, space, (1.0, 2.25), 0.25, n_replicates=20)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert od.meta["solver_subdivisions"] == 62_500_000
    assert peak < 64 << 20, f"peak {peak / 2**20:.0f} MiB"
    assert np.isfinite(od.ln_rho_std[od.in_z & np.isfinite(od.ln_rho)]).all()


def test_wham_converges_on_a_five_decade_ladder_whose_replicas_disagree():
    """llama-25's ladder (24 temperatures, 1e-5 .. 1) on records from N(E0 + C·T, C·T²): the hot replicas reach far
    below the cold one's z, so each sub-bin's replica weights are almost one-hot and f spans ~3e5. From f = 0 the
    solver ran out of iterations (2,000 on llama-25's 691,200 records, 35 minutes); started from integrated free
    energies and with a backtracked Newton step it converges in a few steps, to the fixed point."""
    temps = np.geomspace(1e-5, 1.0, 24)
    rng = np.random.default_rng(0)
    replica = np.repeat(np.arange(24), 150)
    z = 3.0 + 2.5 * temps[replica] + rng.normal(0.0, 1.0, len(replica)) * np.sqrt(2.5) * temps[replica]
    edges = make_edges(z.min(), z.max(), (3.5, 4.5), 0.02)
    fine, sub = solver_grid(edges, 1e-5)
    cells, cell = np.unique(fine_bin_of(z, edges, sub, (3.5, 4.5)), return_inverse=True)
    hist = np.zeros((24, len(cells)))
    np.add.at(hist, (replica, cell), 1.0)
    energy = 0.5 * (fine[cells] + fine[cells + 1])
    res = wham(hist, energy, temps, max_iter=100)
    assert res.residual < 1e-8 and res.iterations < 30, (res.residual, res.iterations)
    assert res.f[-1] < -2e5  # f_k − f_0 ≈ −β_0·E: far from the start at 0
    m = np.isfinite(res.ln_rho)
    lse = np.logaddexp.reduce(res.f[None, :] - np.outer(energy[m], 1 / temps) + np.log(hist.sum(1)), axis=1)
    np.testing.assert_allclose(res.ln_rho[m], np.log(hist.sum(0)[m]) - lse, atol=1e-9)


def test_wham_converges_from_a_start_far_off_when_the_cold_replica_sits_alone():
    """T = [1e-7, 0.3, 1]: the coldest replica holds one input, 5e6 in f from its neighbour; from a start that
    misses by millions (the trapezoid's own guess misses by 1.8e6), backtracking the Newton step finds it."""
    e = np.array([0.52, 0.60, 0.66, 0.68, 0.90, 1.4])
    hist = np.array([[600, 0, 0, 0, 0, 0], [49, 35, 37, 32, 60, 20], [9, 11, 8, 14, 30, 60]], dtype=float)
    temps = np.array([1e-7, 0.3, 1.0])
    reference = wham(hist, e, temps)
    assert reference.residual < 1e-8
    for f0 in ([0.0, 1e7, -3e6], [0.0, -7e6, -7e6]):
        res = wham(hist, e, temps, f0=np.array(f0), max_iter=100)
        assert res.residual < 1e-8 and res.iterations < 60, (f0, res.residual, res.iterations)
        np.testing.assert_allclose(res.f, reference.f, rtol=1e-12)
        np.testing.assert_allclose(res.ln_rho, reference.ln_rho, atol=1e-6)


def test_a_replicate_on_occupied_sub_bins_equals_the_dense_replicate():
    """The uncertainty replicates re-solve WHAM on resampled ladders from the sparse per-ladder histograms: the same
    ln ρ̃ per bin as a dense solve of the same resampled ladders."""
    from modeldiff.method.uncertainty import stage_one

    space = ToyTask(length=3, vocab_size=5, modulus=5).space
    rng = np.random.default_rng(5)
    z = rng.uniform(0.5, 3.0, space.size)
    pt = mixed_tempering(space, z, [0.05, 0.2, 1.0], ladders=4, per_replica=200, rng=rng)
    od = build_output_distribution(pt, space, (1.0, 2.25), 0.25, n_replicates=0)
    m = np.array([2.0, 0.0, 1.0, 1.0])  # ladder multiplicities of one replicate
    ln_rho, _, _ = stage_one(od).replicate(m)

    edges = make_edges(float(pt.z.min()), float(pt.z.max()), (1.0, 2.25), 0.25)
    fine, sub = solver_grid(edges, 0.05)
    dense = np.zeros((3, len(fine) - 1))
    np.add.at(dense, (pt.replica.astype(int), fine_bin_of(pt.z, edges, sub, (1.0, 2.25))), m[pt.ladder])
    sol = wham(dense, 0.5 * (fine[1:] + fine[:-1]), pt.temperatures)
    expected = coarsen(sol.ln_rho, sub)
    seen = np.isfinite(expected)
    np.testing.assert_array_equal(np.isfinite(ln_rho), seen)
    np.testing.assert_allclose(ln_rho[seen], expected[seen], rtol=0, atol=1e-9)


def test_wham_holds_about_three_sub_bin_by_temperature_arrays():
    """The solver's memory is a few [occupied sub-bins × temperatures] arrays (made in place; measured 3.1 with the
    histogram itself), not one per intermediate: ~100,000 occupied sub-bins × 8 temperatures are 6 MiB an array."""
    temps = np.geomspace(0.01, 1.0, 8)
    rng = np.random.default_rng(1)
    replica = np.repeat(np.arange(8), 30_000)
    z = rng.gamma(2.0, temps[replica])
    cells, cell = np.unique(np.floor(z * 1e5).astype(np.int64), return_inverse=True)
    hist = np.zeros((8, len(cells)))
    np.add.at(hist, (replica, cell), 1.0)
    one_array = hist.nbytes
    tracemalloc.start()
    res = wham(hist, (cells + 0.5) / 1e5, temps)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert res.residual < 1e-8
    assert len(cells) > 90_000 and peak < 3.5 * one_array, f"peak {peak / one_array:.1f} arrays"
