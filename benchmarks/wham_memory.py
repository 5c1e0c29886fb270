"""WHAM's memory on the paper presets' grids: occupied sub-bins against the dense grid.

The solver grid splits each bin into width / (2·0.02·T_min) sub-bins (so a sub-bin-centre energy biases ρ by at
most e^0.02): 1 for gpt2-25's bins at T_min = 1e-2, but 50,000 for llama-25's at T_min = 1e-5. The dense
[temperatures × sub-bins] array that the solver once built is printed beside the peak memory of the solve as it is
now (the point estimate plus `--replicates` resampled solves; a preset runs `uncertainty.n_replicates`, each one
costing about the printed time per replicate).

Records are synthetic but shaped like each preset's run (ladders × temperatures × recorded steps, its L, Z and bin
width): z of replica k is E0 + Gamma(C, T_k), the exact law at temperature T_k of a density of states
g(z) ∝ (z − E0)^(C−1) (constant heat capacity C: mean E0 + C·T, variance C·T²), all inputs distinct, so the occupied
sub-bins are an upper bound for a real run, whose chains revisit inputs. Peak memory is traced by tracemalloc (numpy's
arrays). The default times 3 replicates per preset (a preset runs `uncertainty.n_replicates`, 200), so that the whole
benchmark takes about a minute; `--replicates` sets more.

    python benchmarks/wham_memory.py                    # gpt2-25, gpt2-100, llama-25; 3 replicates each
    python benchmarks/wham_memory.py --presets llama-25 --replicates 20
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from modeldiff.config import load_config
from modeldiff.method.outdist import build_output_distribution, fine_bin_of, make_edges
from modeldiff.method.reweighting import solver_subdivisions
from modeldiff.method.space import InputSpace
from modeldiff.method.tempering import TemperingResult, TemperingSettings
from modeldiff.method.uncertainty import rho_band


def synthetic_run(cfg, seed: int = 0) -> TemperingResult:
    settings = TemperingSettings.from_config(cfg)
    temps = np.asarray(settings.temperatures)
    k, c, per_chain = len(temps), settings.ladders, settings.n_records_per_chain
    lo, hi = (float(v) for v in cfg.z_range)
    rng = np.random.default_rng(seed)
    # a density of states of constant heat capacity C, g(z) ∝ (z − E0)^(C−1): at temperature T, z − E0 ~ Gamma(C, T),
    # so neighbouring replicas overlap as in a ladder whose swaps are accepted; the coldest sits below Z, the hottest
    # above it
    e0 = lo - 0.5
    heat = (hi + 1.0 - e0) / temps[-1]
    replica = np.repeat(np.arange(k), c * per_chain)
    z = e0 + rng.gamma(heat, temps[replica])
    n = len(z)
    return TemperingResult(
        ids=rng.integers(0, 50_000, (n, int(cfg.space.length)), dtype=np.int32),
        z=z,
        replica=replica.astype(np.int16),
        ladder=np.tile(np.repeat(np.arange(c), per_chain), k).astype(np.int32),
        step=np.zeros(n, np.int32),
        temperatures=temps,
        acceptance=np.ones(k),
        swap_acceptance=np.ones(k - 1),
        seconds=0.0,
        n_scored=n,
    )


def measure(preset: str, replicates: int) -> dict:
    cfg = load_config(preset)
    pt = synthetic_run(cfg)
    space = InputSpace.from_vocab_size(int(cfg.space.length), 50_000, 0)
    edges = make_edges(float(pt.z.min()), float(pt.z.max()), tuple(cfg.z_range), float(cfg.bins.width))
    sub = solver_subdivisions(edges, float(pt.temperatures.min()))
    dense_bytes = len(pt.temperatures) * (len(edges) - 1) * sub * 8
    tracemalloc.start()
    t0 = time.perf_counter()
    od, failure, replicate_s = None, "", float("nan")
    try:
        od = build_output_distribution(pt, space, tuple(cfg.z_range), float(cfg.bins.width), n_replicates=0)
    except RuntimeError as e:  # WHAM that does not converge is a result too: its memory was still spent
        failure = str(e).split(";")[0]
    point_s = time.perf_counter() - t0
    if od is not None and replicates:
        t0 = time.perf_counter()
        rho_band(od, replicates, 0.95, seed=0)  # each replicate re-solves WHAM on resampled ladders
        replicate_s = (time.perf_counter() - t0) / replicates
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return dict(
        preset=preset,
        failure=failure,
        records=len(pt.z),
        sub=sub,
        occupied=len(np.unique(fine_bin_of(pt.z, edges, sub, tuple(cfg.z_range)))),
        dense_mib=dense_bytes / 2**20,
        peak_mib=peak / 2**20,
        point_s=point_s,
        replicate_s=replicate_s,
        n_replicates=int(cfg.uncertainty.n_replicates),
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["gpt2-25", "gpt2-100", "llama-25"])
    ap.add_argument("--replicates", type=int, default=3, help="resampled solves to time (a preset runs 200)")
    args = ap.parse_args(argv)
    print(
        f"{'preset':10} {'records':>9} {'sub-bins/bin':>13} {'occupied':>9} {'dense grid':>12} {'peak now':>10} "
        f"{'dense/peak':>11} {'point solve':>12} {'per replicate':>14}"
    )
    for preset in args.presets:
        r = measure(preset, args.replicates)
        print(
            f"{r['preset']:10} {r['records']:>9,} {r['sub']:>13,} {r['occupied']:>9,} {r['dense_mib']:>9,.0f} MiB "
            f"{r['peak_mib']:>6,.0f} MiB {r['dense_mib'] / r['peak_mib']:>10,.1f}× {r['point_s']:>10.1f} s "
            f"{r['replicate_s']:>12.1f} s" + (f"  ({r['failure']})" if r["failure"] else "")
        )
    print(
        f"peak: tracemalloc over the point solve and {args.replicates} replicates (not the records, made before); "
        "dense grid: the [temperatures × sub-bins] float64 array the solver no longer builds"
    )


if __name__ == "__main__":
    main()
