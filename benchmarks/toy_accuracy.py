"""Sampled Model-diff ratio against exact enumeration on the paper's toy (Appendix C).

Trains the paper's GPT-2 pair on L=8, V=10, sum mod 30 (10^8 inputs), enumerates both models
exactly with prefix sharing, measures naive full-sequence scoring on a sample of Ω in the same run
for the speed-up, then runs the sampling pipeline (PT + WHAM → cross-eval → normalise) with
several seeds and prints the enumerated ratio, the sampled ratio ± std, the max absolute error
and the time of every stage.

    python benchmarks/toy_accuracy.py                       # the paper's toy, all stages
    python benchmarks/toy_accuracy.py --length 6 --quick    # a fast smoke run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from modeldiff.method.cross_eval import cross_evaluate
from modeldiff.method.enumeration import enumerate_z, exact_ratio
from modeldiff.method.normalize import TERMS, ratio_from_frames, summarize_repeats
from modeldiff.method.outdist import build_output_distribution
from modeldiff.method.scoring import Scorer
from modeldiff.method.tempering import TemperingSettings, geometric_temperatures, run_parallel_tempering
from modeldiff.method.toy import PAPER_ARCHS, ToyTask, make_toy_model, rule_satisfaction, train_toy_model


def stamp(times: dict, name: str, t0: float) -> float:
    times[name] = time.perf_counter() - t0
    print(f"  [{name}] {times[name]:.1f} s", flush=True)
    return time.perf_counter()


def naive_throughput(scorer: Scorer, task: ToyTask, n: int) -> float:
    """Sequences/s of plain full-sequence scoring (BOS + L tokens each) on random inputs of Ω."""
    ids = torch.randint(task.vocab_size, (n, task.length), generator=torch.Generator().manual_seed(0))
    scorer(ids[:1024])  # warm-up
    t0 = time.perf_counter()
    scorer(ids)
    return n / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # defaults: the toy-paper preset (configs/toy-paper.yaml)
    p.add_argument("--length", type=int, default=8)
    p.add_argument("--vocab", type=int, default=10)
    p.add_argument("--modulus", type=int, default=30)
    p.add_argument("--train-steps", type=int, default=1200)
    p.add_argument("--z-range", type=float, nargs=2, default=(1.8, 2.1))
    p.add_argument("--bin-width", type=float, default=0.01)
    p.add_argument("--t-min", type=float, default=0.3)
    p.add_argument("--t-max", type=float, default=1.0)
    p.add_argument("--temperatures", type=int, default=4)
    p.add_argument("--ladders", type=int, default=80)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--burn-in", type=int, default=200)
    p.add_argument("--draws", type=int, default=100_000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--naive-sample", type=int, default=200_000, help="inputs scored naively to time it")
    p.add_argument("--models-dir", type=Path, default=None, help="reuse/keep trained models here")
    p.add_argument("--quick", action="store_true", help="small settings for a smoke run")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args()
    if args.quick:
        args.train_steps, args.steps, args.ladders, args.draws, args.naive_sample = 300, 800, 16, 20_000, 20_000
    torch.manual_seed(0)
    task = ToyTask(args.length, args.vocab, args.modulus)
    space = task.space
    times: dict[str, float] = {}
    print(
        f"toy: L={task.length} V={task.vocab_size} mod {task.modulus}: |Ω|={space.size:,}, "
        f"valid={task.n_valid():,}, entropy/token={task.entropy_per_token():.4f}; Z={list(args.z_range)}"
    )

    models = {}
    for name in ("small", "large"):
        t0 = time.perf_counter()
        path = args.models_dir / name if args.models_dir else None
        if path and (path / "config.json").exists():
            from transformers import GPT2LMHeadModel

            models[name] = GPT2LMHeadModel.from_pretrained(path).eval()
            print(f"model {name}: loaded from {path}")
        else:
            model = make_toy_model(task, seed=0, **PAPER_ARCHS[name])
            rep = train_toy_model(model, task, steps=args.train_steps, seed={"small": 0, "large": 1}[name])
            models[name] = model
            print(f"model {name} {PAPER_ARCHS[name]}: loss {rep['final_loss']:.4f} (entropy {rep['entropy']:.4f})")
            if path:
                model.save_pretrained(path)
        sat = rule_satisfaction(models[name], task, n=10_000)
        print(f"model {name}: {100 * sat:.2f}% of 10,000 generated sequences satisfy the rule")
        stamp(times, f"train {name}", t0)
    scorers = {k: Scorer(m, task.bos_token_id, batch_size=4096) for k, m in models.items()}

    exact_z = {}
    for name, model in models.items():
        t0 = time.perf_counter()
        exact_z[name], steps = enumerate_z(model, space, progress=True)
        stamp(times, f"enumerate {name}", t0)
        naive = naive_throughput(scorers[name], task, args.naive_sample)
        naive_total = space.size / naive
        print(
            f"enumerate {name}: {space.size:,} inputs in {times[f'enumerate {name}']:.1f} s with {steps:,} "
            f"single-token steps ({space.size / times[f'enumerate {name}']:,.0f} inputs/s); naive full-sequence "
            f"scoring {naive:,.0f} inputs/s -> {naive_total:,.0f} s for Ω; speed-up "
            f"{naive_total / times[f'enumerate {name}']:.1f}x"
        )
    exact = exact_ratio(exact_z["small"], exact_z["large"], args.z_range)
    c = exact["counts"]
    print(f"exact counts: |X_A|={c['X_A']:,} |X_B|={c['X_B']:,} |X_A∩X_B|={c['X_AB']:,}")

    temps = geometric_temperatures(args.t_min, args.t_max, args.temperatures)
    results = []
    for seed in args.seeds:
        ods = {}
        for name in models:
            t0 = time.perf_counter()
            settings = TemperingSettings(
                temperatures=temps,
                ladders=args.ladders,
                steps=args.steps,
                burn_in=args.burn_in,
                seed=1000 * seed + len(ods),
            )
            pt = run_parallel_tempering(scorers[name], space, settings)
            t0 = stamp(times, f"seed {seed} PT {name}", t0)
            ods[name] = build_output_distribution(pt, space, args.z_range, args.bin_width, seed=seed)
            stamp(times, f"seed {seed} WHAM {name}", t0)
            m = ods[name].meta
            print(
                f"  {name}: {m['n_records']:,} records, {m['n_in_z']:,} in Z, {m['n_distinct_in_z']:,} distinct; "
                f"acceptance {np.round(m['acceptance'], 3).tolist()}; "
                f"swaps {np.round(m['swap_acceptance'], 2).tolist()}; "
                f"empty bins in Z {ods[name].empty_bins_in_z.tolist()}"
            )
        t0 = time.perf_counter()
        ab = cross_evaluate(
            ods["small"], space, scorers["small"], scorers["large"], args.draws, "A", seed, allow_empty_bins=True
        )
        ba = cross_evaluate(
            ods["large"], space, scorers["large"], scorers["small"], args.draws, "B", seed, allow_empty_bins=True
        )
        t0 = stamp(times, f"seed {seed} cross-eval", t0)
        r = ratio_from_frames(ab, ba)
        stamp(times, f"seed {seed} normalize", t0)
        results.append(r)
        print(
            f"  seed {seed}: terms {np.round([r['terms'][k] for k in TERMS], 4).tolist()} "
            f"ratio {np.round(r['ratio'], 4).tolist()}"
        )

    s = summarize_repeats(results)
    err_terms = max(abs(s["terms_mean"][k] - exact["terms"][k]) for k in TERMS)
    err_ratio = max(abs(a - b) for a, b in zip(s["ratio_mean"], exact["ratio"]))
    fmt = lambda xs: " : ".join(f"{x:.4f}" for x in xs)  # noqa: E731
    print("\n=== toy accuracy ===")
    print(f"enumerated terms   {fmt([exact['terms'][k] for k in TERMS])}")
    print(f"sampled terms      {fmt([s['terms_mean'][k] for k in TERMS])}  ± {fmt([s['terms_std'][k] for k in TERMS])}")
    print(f"enumerated ratio   {fmt(exact['ratio'])}")
    print(f"sampled ratio      {fmt(s['ratio_mean'])}  ± {fmt(s['ratio_std'])}  ({len(args.seeds)} seeds)")
    print(f"max |error|        ratio {err_ratio:.4f}   terms {err_terms:.4f}")
    print("stage times (s):   " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
    if args.json:
        args.json.write_text(
            json.dumps(
                dict(
                    exact=exact,
                    sampled=s,
                    per_seed=results,
                    times=times,
                    max_abs_error_ratio=err_ratio,
                    max_abs_error_terms=err_terms,
                ),
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
