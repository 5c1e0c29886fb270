"""Stage 1's two methods at equal CPU time: parallel tempering + WHAM (`tempering`) against ancestral importance
sampling (`ancestral`), each run end to end (stage 1 → cross_eval → normalize with 95% intervals) in-process.

Equal CPU time: a short pilot of each method measures its CPU seconds per unit of work (a tempering step of every
chain, an ancestral sample); the run then gets as many units as fit in `--budget` CPU seconds per model. Torch runs
on one thread, so CPU seconds are process time (`time.process_time`) and do not depend on what else the machine runs.
The figure counted against the budget is stage 1 in full (sampling, and WHAM or the weights); cross_eval and
normalize are the same code for both methods and are printed apart.

(a) `toy`: the paper's toy (configs/toy-paper.yaml: L=8, V=10, sum mod 30, its GPT-2 pair) against exact
    enumeration of its 10^8 inputs: per seed the largest absolute error of the ratio's terms PA_AB/PD_AB,
    PA_BA/PD_AB, PD_BA/PD_AB, and whether each 95% interval covers the exact value.
(b) `smollm2`: SmolLM2-135M against its σ = 1e-3 copy (configs/smollm2.yaml) at each `--lengths`, with Z chosen
    from the reference's own samples (`modeldiff z-quantiles`): distinct inputs in Z per CPU-minute, per-bin ESS
    in Z (Kish over distinct inputs for ancestral; split over ladders for tempering), the interval half-width of
    each ratio term, and how the seeds spread (each seed's ratio inside every other seed's interval?).

    python benchmarks/estimator_efficiency.py                          # both parts, the issue's budgets
    python benchmarks/estimator_efficiency.py --part toy --budget 60   # CPU seconds per model and method
    python benchmarks/estimator_efficiency.py --part smollm2 --lengths 8 --seeds 0 1 2 --budget 120
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from modeldiff import pipeline
from modeldiff.config import load_config
from modeldiff.method.enumeration import enumerate_z, exact_ratio
from modeldiff.method.normalize import TERMS
from modeldiff.models import load_model

METHODS = ("tempering", "ancestral")
RATIO_TERMS = TERMS[1:]  # the ratio's first entry is PD_AB / PD_AB = 1


def cpu() -> float:
    return time.process_time()


def units_cfg(cfg, method: str, units: int):
    """`cfg` for `method` with `units` of work: tempering steps (burn-in in the preset's proportion) or samples."""
    cfg = copy.deepcopy(cfg)
    cfg.sampler.method = method
    if method == "tempering":
        s = cfg.sampler
        burn_frac = float(s.burn_in) / float(s.steps)
        s.steps, s.burn_in = int(units), max(1, int(round(burn_frac * units)))
    else:
        cfg.sampler.ancestral.n_samples = int(units)
    return cfg


def quantum(cfg, method: str) -> int:
    """The smallest step of work: one tempering step, or one sample of every temperature in every block."""
    a = cfg.sampler.ancestral
    return 1 if method == "tempering" else int(a.n_blocks) * len(a.temperatures)


_COST: dict = {}


def cost_model(cfg, method: str, loaded, budget: float) -> tuple[float, float]:
    """(CPU s of fixed cost, CPU s per unit) of stage 1 in full, fitted through two pilots (once per model): a small
    one, and one of about 15% of the budget; `refit` corrects the slope from every full run."""
    key = cost_key(cfg, method, loaded)
    if key not in _COST:
        q = quantum(cfg, method)
        small = 30 if method == "tempering" else q * max(1, math.ceil(int(cfg.sampler.ancestral.batch_size) / q))
        t0 = cpu()
        pipeline.sample_outdist(units_cfg(cfg, method, small), loaded)
        t_small = cpu() - t0
        big = max(3 * small, int(0.15 * budget * small / t_small) // q * q)
        t0 = cpu()
        pipeline.sample_outdist(units_cfg(cfg, method, big), loaded)
        t_big = cpu() - t0
        per_unit = max((t_big - t_small) / (big - small), 1e-9)
        _COST[key] = (max(t_small - per_unit * small, 0.0), per_unit)
    return _COST[key]


def cost_key(cfg, method: str, loaded) -> tuple:
    return (method, loaded.identity, int(cfg.space.length), tuple(cfg.z_range))


def refit(cfg, method: str, loaded, units: int, seconds: float):
    fixed, per_unit = _COST[cost_key(cfg, method, loaded)]
    _COST[cost_key(cfg, method, loaded)] = (fixed, max((seconds - fixed) / units, per_unit / 4))


def with_budget(cfg, method: str, budget: float, loaded) -> tuple:
    """A copy of `cfg` for `method` whose stage 1 takes about `budget` CPU seconds on `loaded`."""
    fixed, per_unit = cost_model(cfg, method, loaded, budget)
    q = quantum(cfg, method)
    units = max(q, int((budget - fixed) / per_unit) // q * q)
    run_cfg = units_cfg(cfg, method, units)
    if method == "tempering":
        chains = int(cfg.sampler.ladders) * int(cfg.sampler.n_temperatures)
        return run_cfg, units, f"{units:,} steps × {chains} chains ({per_unit * 1e3:.1f} ms/step)"
    return run_cfg, units, f"{units:,} samples ({per_unit * 1e3:.2f} ms/sample)"


def stage1(cfg, loaded) -> tuple:
    t0 = cpu()
    od = pipeline.sample_outdist(cfg, loaded)
    return od, cpu() - t0


def in_z_stats(od) -> dict:
    c = 0.5 * (od.edges[1:] + od.edges[:-1])
    in_z = (c > od.z_range[0]) & (c < od.z_range[1])
    ess = np.asarray(od.meta["ess_per_bin"], dtype=float)[in_z]
    ess = np.where(np.isfinite(ess), ess, 0.0)
    return dict(
        n_distinct_in_z=int(od.meta["n_distinct_in_z"]),
        ess_min=float(ess.min()),
        ess_median=float(np.median(ess)),
        empty_bins=int(len(od.empty_bins_in_z)),
    )


def one_run(cfg, a, b, method: str, seed: int, budget: float) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg.seed = int(seed)
    cfg.cross_eval.allow_empty_bins = True  # a short run may leave bins of Z empty: counted and printed, not refused
    out = dict(method=method, seed=seed, stage1={})
    ods = {}
    for side, loaded in (("A", a), ("B", b)):
        run_cfg, units, plan = with_budget(cfg, method, budget, loaded)
        ods[side], seconds = stage1(run_cfg, loaded)
        refit(cfg, method, loaded, units, seconds)
        out["stage1"][side] = dict(plan=plan, cpu_s=seconds, **in_z_stats(ods[side]))
    t0 = cpu()
    try:
        ab = pipeline.cross_eval(cfg, ods["A"], a, b, "A")
        ba = pipeline.cross_eval(cfg, ods["B"], b, a, "B")
        ratio, _ = pipeline.normalize(
            cfg,
            ab,
            ba,
            pipeline.cross_eval_replicates(cfg, ods["A"], ab, "A"),
            pipeline.cross_eval_replicates(cfg, ods["B"], ba, "B"),
        )
    except ValueError as e:  # e.g. no sampled input in Z: the method failed at this budget, which is the result
        out.update(stage2_cpu_s=cpu() - t0, failed=str(e).split("\n")[0])
        return out
    out.update(stage2_cpu_s=cpu() - t0, ratio=ratio["ratio"], ci=ratio["ci"]["ratio"], counts=ratio["counts"])
    return out


def fmt_ratio(r: dict) -> str:
    if "failed" in r:
        return f"FAILED: {r['failed']}"
    if any(r["ci"][i][0] is None for i in range(1, 4)):  # no interval (too few units with draws): say so
        return "1.000 : " + " : ".join(f"{r['ratio'][i]:.3f} [no interval]" for i in range(1, 4))
    return " : ".join(
        ["1.000"] + [f"{r['ratio'][i]:.3f} [{r['ci'][i][0]:.3f}, {r['ci'][i][1]:.3f}]" for i in range(1, 4)]
    )


def half_widths(r: dict) -> list[float]:
    return [np.nan if r["ci"][i][0] is None else (r["ci"][i][1] - r["ci"][i][0]) / 2 for i in range(1, 4)]


def print_run(r: dict):
    s1 = r["stage1"]
    per_side = "; ".join(
        f"{k}: {v['plan']}, {v['cpu_s']:.0f} CPU s, {v['n_distinct_in_z']:,} distinct in Z, "
        f"ESS/bin min {v['ess_min']:.0f} median {v['ess_median']:.0f}"
        + (f", {v['empty_bins']} empty bins" if v["empty_bins"] else "")
        for k, v in s1.items()
    )
    print(
        f"  {r['method']:<9} seed {r['seed']}: {fmt_ratio(r)}   ({per_side}; stage 2 {r['stage2_cpu_s']:.0f} CPU s)",
        flush=True,
    )


def mutual_coverage(runs: list[dict]) -> tuple[int, int]:
    """(pairs i≠j and terms where seed i's ratio lies in seed j's interval, all such)."""
    hit = total = 0
    for i, ri in enumerate(runs):
        for j, rj in enumerate(runs):
            if i != j:
                for t in range(1, 4):
                    total += 1
                    hit += rj["ci"][t][0] is not None and rj["ci"][t][0] <= ri["ratio"][t] <= rj["ci"][t][1]
    return hit, total


def summary_row(label: str, all_runs: list[dict], exact: list[float] | None) -> dict:
    s1 = [v for r in all_runs for v in r["stage1"].values()]
    runs = [r for r in all_runs if "failed" not in r]
    minutes = sum(v["cpu_s"] for v in s1) / 60
    row = dict(
        label=label,
        cpu_min_per_model=float(np.mean([v["cpu_s"] for v in s1]) / 60),
        distinct_per_cpu_min=sum(v["n_distinct_in_z"] for v in s1) / minutes,
        ess_min=float(np.min([v["ess_min"] for v in s1])),
        ess_median=float(np.median([v["ess_median"] for v in s1])),
        half_width_max=[float(max((half_widths(r)[t] for r in runs), default=np.nan)) for t in range(3)],
        spread=[float(np.ptp([r["ratio"][t] for r in runs])) if runs else np.nan for t in range(1, 4)],
        mutual=mutual_coverage(runs),
        failed=len(all_runs) - len(runs),
        n_runs=len(all_runs),
    )
    if exact is not None:
        errs = [max(abs(r["ratio"][t] - exact[t]) for t in range(1, 4)) for r in runs]
        cover = [
            r["ci"][t][0] is not None and r["ci"][t][0] <= exact[t] <= r["ci"][t][1] for r in runs for t in range(1, 4)
        ]
        row.update(max_abs_error=errs, covered=(int(sum(cover)), len(cover)))
    return row


def print_table(rows: list[dict], exact: bool):
    head = f"{'':<22}{'CPU min/model':>14}{'distinct in Z/CPU min':>23}{'ESS/bin min':>13}{'median':>8}"
    head += f"{'half-width max (3 terms)':>27}{'seed spread (3 terms)':>25}{'in others CI':>14}"
    if exact:
        head += f"{'max |err| per seed':>34}{'CI covers exact':>17}"
    print(head)
    for r in rows:
        line = (
            f"{r['label']:<22}{r['cpu_min_per_model']:>14.2f}{r['distinct_per_cpu_min']:>23,.0f}{r['ess_min']:>13.0f}"
        )
        line += f"{r['ess_median']:>8.0f}{' '.join(f'{h:.3f}' for h in r['half_width_max']):>27}"
        mutual, spread = "{}/{}".format(*r["mutual"]), " ".join(f"{s:.3f}" for s in r["spread"])
        line += f"{spread:>25}{mutual:>14}"
        if exact:
            errors, covered = " ".join(f"{e:.3f}" for e in r["max_abs_error"]), "{}/{}".format(*r["covered"])
            line += f"{errors:>34}{covered:>17}"
        print(line)


def exact_toy_ratio(cfg, a, b, cache: Path) -> list[float]:
    """The toy's ratio by enumeration of its 10^8 inputs (cached on the models' identities: minutes on a CPU)."""
    key = cache / f"exact_{a.identity.replace(':', '_')}_{b.identity.replace(':', '_')}_{list(cfg.z_range)}.json"
    if key.exists():
        return json.loads(key.read_text())["ratio"]
    t0 = time.perf_counter()
    z_a, _ = enumerate_z(a.model, a.space, progress=False)
    z_b, _ = enumerate_z(b.model, b.space, progress=False)
    exact = exact_ratio(z_a, z_b, tuple(cfg.z_range), float(cfg["lambda"]))
    print(f"  enumerated {a.space.size:,} inputs of each model in {time.perf_counter() - t0:.0f} s", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    key.write_text(json.dumps(exact))
    return exact["ratio"]


def part_toy(args) -> list[dict]:
    cfg = load_config(args.toy_preset, args.toy_overrides)
    a, b = load_model(cfg.models.a, cfg), load_model(cfg.models.b, cfg)
    exact = exact_toy_ratio(cfg, a, b, args.cache)
    print(
        f"\n(a) paper toy, {a.ref} vs {b.ref}, Z={list(cfg.z_range)}: exact ratio "
        + " : ".join(f"{x:.4f}" for x in exact)
    )
    rows = []
    for method in args.methods:
        runs = []
        for seed in args.seeds:
            runs.append(one_run(cfg, a, b, method, seed, args.budget))
            print_run(runs[-1])
        rows.append(summary_row(f"toy {method}", runs, exact))
    return rows, exact


def part_smollm2(args) -> list[dict]:
    rows = []
    for length in args.lengths:
        cfg = load_config("smollm2", [f"space.length={length}", *args.smollm2_overrides])
        a, b = load_model(cfg.models.a, cfg), load_model(cfg.models.b, cfg)
        q = pipeline.z_quantiles(cfg, a, n_samples=2048)
        cfg.z_range = q["suggested_z_range"]
        print(
            f"\n(b) SmolLM2 vs {b.ref}, L={length}: z quantiles of A's own samples "
            + " ".join(f"{k}: {v:.3f}" for k, v in q["quantiles"].items())
            + f"; Z={list(cfg.z_range)}",
            flush=True,
        )
        for method in args.methods:
            runs = []
            for seed in args.seeds:
                runs.append(one_run(cfg, a, b, method, seed, args.budget))
                print_run(runs[-1])
            rows.append(summary_row(f"SmolLM2 L={length} {method}", runs, None))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("toy", "smollm2", "all"), default="all")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--budget", type=float, default=None, help="stage-1 CPU seconds per model (toy 180, SmolLM2 600)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="toy: 0..4, SmolLM2: 0 1 2")
    p.add_argument("--lengths", type=int, nargs="+", default=[8, 16])
    p.add_argument("--toy-preset", default="toy-paper", help="toy: a fast smoke run")
    p.add_argument("--toy-overrides", nargs="*", default=[])
    p.add_argument("--smollm2-overrides", nargs="*", default=[])
    p.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("MODELDIFF_CACHE", "~/.cache/modeldiff")).expanduser() / "bench",
    )
    p.add_argument("--json", type=Path, default=None, help="also write every run's figures here")
    args = p.parse_args()
    torch.set_num_threads(1)  # CPU seconds = process time
    out = {}
    if args.part in ("toy", "all"):
        targs = copy.copy(args)
        targs.budget, targs.seeds = args.budget or 180.0, args.seeds or [0, 1, 2, 3, 4]
        rows, exact = part_toy(targs)
        out["toy"] = dict(exact=exact, rows=rows)
        print(
            f"\n=== (a) paper toy at {targs.budget:.0f} CPU s of stage 1 per model, {len(targs.seeds)} seeds; "
            "target: max |err| <= 0.01 per seed ==="
        )
        print_table(rows, exact=True)
    if args.part in ("smollm2", "all"):
        sargs = copy.copy(args)
        sargs.budget, sargs.seeds = args.budget or 600.0, args.seeds or [0, 1, 2]
        rows = part_smollm2(sargs)
        out["smollm2"] = dict(rows=rows)
        print(
            f"\n=== (b) SmolLM2 vs its σ=1e-3 copy at {sargs.budget:.0f} CPU s of stage 1 per model, "
            f"{len(sargs.seeds)} seeds; target: half-width <= 0.05, seeds inside each other's intervals ==="
        )
        print_table(rows, exact=False)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
