"""Coverage of one run's intervals against exact enumeration, by repetition: over many independent runs, the 95%
intervals of the four terms, the ratio, the ρ̃(z) bands and annotate's precision and recall (± 1.96 standard errors)
must cover the exact values at a rate consistent with 95%.

The tolerance: with n runs and X covering, reject only if P(X ≤ observed | p = 0.95, n) < 0.001 (one-sided: an
interval that is too wide is conservative, not wrong, and 40 runs could not tell 95% from 100% anyway). Each check
is a separate test at 0.001, so a correct procedure fails one of the nine per run of this module at most ~1% of the
time. ρ̃(z) bands: the bins of one run are correlated (they share the normalisation), so run i contributes the
bin i mod (bins in Z): independent trials, one per run and model; the pooled rate over all bins is printed.

Tempering: the tiny toy pair (7,776 inputs), its exact z from enumeration used as the scorer (the sampler sees the
same function as through the models, without a forward pass per step), 16 ladders, 10 temperatures, 1,000 steps
(300 of burn-in: with 100, the sparse bottom bins of Z are still biased low, a bias every ladder shares and no
interval covers).
Ancestral: synthetic importance samples (tests/support/samples.py), 20 blocks of 100.
"""

import numpy as np
import pytest
from scipy.stats import binom

from modeldiff.analysis import annotate
from modeldiff.method.cross_eval import cross_evaluate, draw_representatives
from modeldiff.method.enumeration import exact_log_rho, exact_ratio
from modeldiff.method.normalize import TERMS, ratio_from_frames
from modeldiff.method.outdist import build_output_distribution, with_rho_band
from modeldiff.method.tempering import TemperingSettings, geometric_temperatures, run_parallel_tempering
from modeldiff.method.uncertainty import ln_rho_normalised, ratio_uncertainty, side_replicates
from support import OUTDIST_Z_RANGE as Z_RANGE
from support.samples import ExactScorer, ancestral_outdist, draws_of

RUNS = 40
LEVEL = 0.95
ALPHA = 0.001
REPLICATES = 100  # percentiles at 2.5% / 97.5% from 100 replicates: their own noise is small next to the interval
N_DRAWS = 2000
BIN_WIDTH = 0.02


def check_coverage(covered: list[bool], what: str):
    n, hits = len(covered), int(np.sum(covered))
    p = binom.cdf(hits, n, LEVEL)
    print(f"{what}: {hits}/{n} = {hits / n:.1%} covered (P(X <= {hits} | 95%) = {p:.3g})")
    assert p >= ALPHA, f"{what}: only {hits} of {n} intervals cover the exact value (P = {p:.2g} < {ALPHA})"


class Record:
    """What every run contributes: per quantity, whether its interval covered the exact value."""

    def __init__(self):
        self.covered: dict[str, list[bool]] = {}
        self.rho_pooled: list[bool] = []

    def add(self, name: str, hit: bool):
        self.covered.setdefault(name, []).append(bool(hit))

    def add_ratio(self, spread: dict, point: dict, exact: dict):
        for k in TERMS:
            lo, hi = spread["ci"]["terms"][k]
            self.add(k, lo <= exact["terms"][k] <= hi)
        for k, truth, (lo, hi) in zip(TERMS[1:], exact["ratio"][1:], spread["ci"]["ratio"][1:]):
            self.add(f"ratio_{k}", lo is not None and hi is not None and lo <= truth <= hi)

    def add_bands(self, run: int, od, z_exact: np.ndarray):
        """Run `run`'s bin (run mod bins in Z) to the trials, every bin to the pooled rate."""
        exact = ln_rho_normalised(exact_log_rho(z_exact, od.edges), od.in_z)
        bins = np.flatnonzero(od.in_z & np.isfinite(exact))
        hits = (od.ln_rho_lo[bins] <= exact[bins]) & (exact[bins] <= od.ln_rho_hi[bins])  # NaN (unsampled) misses
        self.add("ln ρ̃ band", hits[run % len(bins)])
        self.rho_pooled += hits.tolist()


@pytest.fixture(scope="module")
def tempering_runs(tiny_task, toy_exact_z):
    """RUNS independent tempering runs of the toy pair through the whole chain, with the exact values."""
    space, (z_a, z_b) = tiny_task.space, toy_exact_z
    exact = exact_ratio(z_a, z_b, Z_RANGE)
    rule = tiny_task.is_valid(space.index_to_ids(np.arange(space.size))).astype(float)
    window = annotate.pd_window("AB", 0.0)
    exact_pr = annotate.exact_precision_recall(z_a, z_b, rule, window, Z_RANGE, "A")
    scorers = ExactScorer(space, z_a), ExactScorer(space, z_b)
    record = Record()
    for run in range(RUNS):
        settings = TemperingSettings(
            temperatures=geometric_temperatures(0.02, 1.0, 10), ladders=16, steps=1000, burn_in=300, seed=run
        )
        ods = [
            build_output_distribution(
                run_parallel_tempering(s, space, settings, progress=False),
                space,
                Z_RANGE,
                BIN_WIDTH,
                n_replicates=REPLICATES,
                seed=run,
            )
            for s in scorers
        ]
        ab = cross_evaluate(ods[0], space, *scorers, N_DRAWS, role="A", seed=2 * run, allow_empty_bins=True)
        ba = cross_evaluate(ods[1], space, *scorers[::-1], N_DRAWS, role="B", seed=2 * run + 1, allow_empty_bins=True)
        reps = [
            side_replicates(od, d["representative"], REPLICATES, run, side) for od, d, side in zip(ods, (ab, ba), "AB")
        ]
        spread = ratio_uncertainty(ab, reps[0], ba, reps[1], 0.0, LEVEL, run)
        record.add_ratio(spread, ratio_from_frames(ab, ba), exact)
        for od, z in zip(ods, (z_a, z_b)):
            record.add_bands(run, od, z)
        sel = annotate.select(ab, window, 0.05)
        scores = tiny_task.is_valid(np.stack(sel.rows["tokens"].to_numpy())).astype(float)
        est = annotate.estimate(sel, scores, reps[0], seed=run)
        for key in ("precision", "recall"):
            record.add(f"annotate {key}", abs(est[key] - exact_pr[key]) <= 1.96 * est[f"{key}_se"])
    print(f"\ntempering, pooled over all bins of Z: ln ρ̃ bands cover {np.mean(record.rho_pooled):.1%}")
    return record


@pytest.mark.parametrize("what", [*TERMS, *(f"ratio_{k}" for k in TERMS[1:]), "ln ρ̃ band"])
def test_tempering_intervals_cover_the_exact_values(tempering_runs, what):
    check_coverage(tempering_runs.covered[what], f"tempering {what}")


@pytest.mark.parametrize("key", ["precision", "recall"])
def test_annotate_standard_errors_cover_the_exact_precision_and_recall(tempering_runs, key):
    check_coverage(tempering_runs.covered[f"annotate {key}"], f"tempering annotate {key} ± 1.96 se")


def test_ancestral_intervals_cover_the_exact_values():
    """The ancestral path on a synthetic space: 3,000 inputs, z_B = z_A + noise, q ∝ exp(−z/0.7)."""
    g = np.random.default_rng(0)
    z_a = g.uniform(0.0, 3.0, 3000)
    z_b = z_a + g.normal(0.0, 0.3, 3000)
    z_range = (1.0, 2.0)
    exact = exact_ratio(z_a, z_b, z_range)
    record = Record()
    for run in range(RUNS):
        rng = np.random.default_rng(1000 + run)
        ods = [
            with_rho_band(ancestral_outdist(z, -z / 0.7, 20, 100, z_range, 0.1, rng), REPLICATES, LEVEL, run)
            for z in (z_a, z_b)
        ]
        ab = draws_of(ods[0], draw_representatives(ods[0], N_DRAWS, seed=2 * run), z_a, z_b, "A")
        ba = draws_of(ods[1], draw_representatives(ods[1], N_DRAWS, seed=2 * run + 1), z_b, z_a, "B")
        reps = [
            side_replicates(od, d["representative"], REPLICATES, run, side) for od, d, side in zip(ods, (ab, ba), "AB")
        ]
        record.add_ratio(ratio_uncertainty(ab, reps[0], ba, reps[1], 0.0, LEVEL, run), ratio_from_frames(ab, ba), exact)
        for od, z in zip(ods, (z_a, z_b)):
            record.add_bands(run, od, z)
    print(f"\nancestral, pooled over all bins of Z: ln ρ̃ bands cover {np.mean(record.rho_pooled):.1%}")
    for what, covered in record.covered.items():
        check_coverage(covered, f"ancestral {what}")
