"""Calibrates and measures the plagiarism verdict on toy model families (paper Sec. 4.3).

A family around one trained parent P:
- noise copies: P + N(0, (σ·std)²) on every tensor, σ from 1e-1 to 1e-5, two noise seeds each (positives);
- short fine-tunes of P: continued training on the task, on another rule, and with SGD (derived, not copies);
- independently trained seeds of P's architecture (the hard negatives) and two other architectures.
The base models are "registered" in order (P, seeds, other architectures); every later model is screened
against all of them, and every base model against those registered before it, exactly as the screening
service does (pairwise plagiarism verdicts, aggregated by modeldiff.plagiarism.screening_verdict). Each copy is
also checked with the arguments swapped, to see how often its direction is visible without registration order.

Prints the statistics each threshold separates (so the defaults in configs/base.yaml can be checked or re-derived),
the true- and false-positive rates and how often the parent is named, for each plagiarism.mode: the black box
alone, the white box alone, and combined.

    python benchmarks/plagiarism_calibration.py            # ~5 min on 2 cores
    python benchmarks/plagiarism_calibration.py --quick    # fewer models, fewer steps
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from modeldiff import pipeline
from modeldiff.analysis.plagiarism import Thresholds, black_box, decide, screening_verdict
from modeldiff.config import load_config
from modeldiff.method.toy import ToyTask, make_toy_model, train_toy_model
from modeldiff.models import LoadedModel, decode_digits
from modeldiff.models.derive import add_weight_noise

SIGMAS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
# the trained-toy regime: Z around the valid sequences (entropy ln(7776/10)/5 ≈ 1.33), models near convergence
OVERRIDES = (
    "z_range=[1.3,1.45] toy.train_steps=800 sampler.ladders=8 sampler.steps=400 sampler.burn_in=100 "
    "uncertainty.n_replicates=40 cross_eval.n_draws=2000"
)


def build_family(task: ToyTask, steps: int, quick: bool) -> dict[str, tuple[torch.nn.Module, str, str | None]]:
    """{name: (model, kind, true parent name or None)}; kinds: base, copy, finetune."""

    def trained(seed: int, arch=(32, 2, 2)):
        m = make_toy_model(task, n_embd=arch[0], n_head=arch[1], n_layer=arch[2], seed=seed)
        train_toy_model(m, task, steps=steps, seed=seed, progress=False)
        return m

    def finetuned(rule: ToyTask, steps_: int, lr: float, seed: int, optimizer: str = "adamw"):
        m = copy.deepcopy(parent)
        if optimizer == "adamw":
            train_toy_model(m, rule, steps=steps_, lr=lr, seed=seed, progress=False)
            return m
        opt, rng = torch.optim.SGD(m.parameters(), lr=lr), np.random.default_rng(seed)
        m.train()
        for _ in range(steps_):
            x = torch.from_numpy(rule.sample_valid(64, rng))
            x = torch.cat([torch.full((64, 1), task.bos_token_id), x], dim=1)
            loss = m(input_ids=x, labels=x).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        return m.eval()

    fam = {}
    parent = trained(0)
    fam["parent"] = (parent, "base", None)
    for s in range(1, 3 if quick else 5):
        fam[f"seed{s}"] = (trained(s), "base", None)
    for i, arch in enumerate([(32, 4, 3), (48, 4, 2)][: 1 if quick else 2]):
        fam[f"arch{i + 1}-{'x'.join(map(str, arch))}"] = (trained(10 + i, arch), "base", None)
    for sigma in SIGMAS:
        for noise_seed in (1, 2)[: 1 if quick else 2]:
            fam[f"noise{sigma:g}/{noise_seed}"] = (
                add_weight_noise(copy.deepcopy(parent), sigma, seed=noise_seed, relative=True),
                "copy",
                "parent",
            )
    fam["ft-same"] = (finetuned(task, 30, 1e-3, 11), "finetune", "parent")
    fam["ft-mod5"] = (finetuned(replace(task, modulus=5), 30, 1e-3, 12), "finetune", "parent")
    if not quick:
        fam["ft-sgd"] = (finetuned(task, 20, 1e-2, 13, optimizer="sgd"), "finetune", "parent")
    return fam


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="toy")
    p.add_argument("--overrides", default=OVERRIDES)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", type=Path, default=None, help="also write every pair's statistics here")
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.config, args.overrides)
    thresholds = Thresholds.from_config(cfg)
    white_box_cfg = load_config(args.config, f"{args.overrides} plagiarism.mode=white_box")
    task = ToyTask(int(cfg.space.length), int(cfg.space.vocab_size), int(cfg.toy.modulus))
    t0 = time.perf_counter()
    family = build_family(task, int(cfg.toy.train_steps), args.quick)
    t_train = time.perf_counter() - t0
    loaded = {
        n: LoadedModel(m.eval(), None, f"bench:{n}", task.space, n, decode_digits) for n, (m, _, _) in family.items()
    }
    t0 = time.perf_counter()
    outdists = {n: pipeline.sample_outdist(cfg, m) for n, m in loaded.items()}
    t_sample = time.perf_counter() - t0
    print(
        f"family: {len(family)} models ({', '.join(family)}); training {t_train:.0f} s, sampling {t_sample:.0f} s",
        flush=True,
    )

    def pair(a: str, b: str, order: str | None = "registration_order") -> dict:
        """Screening knows that b was registered after a (order); the swapped checks measure direction evidence."""
        ab = pipeline.cross_eval(cfg, outdists[a], loaded[a], loaded[b], "A")
        ba = pipeline.cross_eval(cfg, outdists[b], loaded[b], loaded[a], "B")
        verdict, rep = pipeline.plagiarism(cfg, loaded[a], loaded[b], ab, ba, order)
        bb_only = decide(black_box(ab, ba, thresholds), None, thresholds, "black_box", order)
        wb_only, _ = pipeline.plagiarism(white_box_cfg, loaded[a], loaded[b], None, None, order)
        rep["black_box_only"] = {"verdict": bb_only.verdict, "copy": bb_only.copy}
        rep["white_box_only"] = {"verdict": wb_only.verdict, "copy": wb_only.copy}
        return rep

    t0 = time.perf_counter()
    base = [n for n, (_, kind, _) in family.items() if kind == "base"]
    pairs = {}
    for i, name in enumerate(family):
        registry = base[:i] if name in base else base  # the models registered before it
        pairs[name] = {c: pair(c, name) for c in registry}
    swapped = {n: pair(n, "parent", None) for n, (_, kind, _) in family.items() if kind == "copy"}
    t_pairs = time.perf_counter() - t0

    def screen(results: dict, only: str | None) -> tuple[str, str]:
        reps = [(c, {**r, **r[only]} if only else r) for c, r in results.items()]
        verdict, counterpart, _ = screening_verdict(reps)
        return verdict, counterpart

    print("\n=== what each threshold separates (configured value in brackets; pairs of one lineage vs the rest) ===")
    related = [r for n, res in pairs.items() for c, r in res.items() if family[n][2] == c]
    unrelated = [r for n, res in pairs.items() for c, r in res.items() if family[n][2] != c]
    copies = {n: res["parent"] for n, res in pairs.items() if family[n][1] == "copy"}
    tunes = [res["parent"] for n, res in pairs.items() if family[n][1] == "finetune"]
    wb = lambda rs, k: [r["white_box"][k] for r in rs if r["white_box"]["applicable"]]  # noqa: E731
    bounds = lambda rs: [r["black_box"][s]["interval"][0] for r in rs for s in "AB"]  # noqa: E731
    q95 = lambda rs: [r["black_box"]["abs_D_q95"] for r in rs]  # noqa: E731
    pc = cfg.plagiarism
    print(
        f"weight independence p: lineage pairs <= {max(wb(related, 'p_value')):.3g}, unrelated pairs >= "
        f"{min(wb(unrelated, 'p_value')):.3g}  [weight_alpha {pc.weight_alpha:g}]"
    )
    print(
        f"δ-structure p: noise copies >= {min(wb(copies.values(), 'structure_p_value')):.3g}, fine-tunes <= "
        f"{max(wb(tunes, 'structure_p_value')):.3g}  [noise_alpha {pc.noise_alpha:g}]"
    )
    print(
        "weight-energy z (B = the copy): "
        + ", ".join(f"{n} {r['white_box']['direction_z']:+.1f}" for n, r in copies.items())
        + f"  [direction_z {pc.direction_z:g}]"
    )
    worst = max(bounds(unrelated))
    print(
        f"black box, lower bound of q (other model wins on a side's own inputs): unrelated pairs <= {worst:.3f} "
        f"(-> dominated >= {np.ceil(worst * 20) / 20:.2f} keeps them all out); copies vs parent "
        f"{min(bounds(copies.values())):.3f}..{max(bounds(copies.values())):.3f}  [dominated {pc.dominated:g}]"
    )
    closest = min(q95(unrelated))
    print(
        f"black box, 95th percentile of |D|: unrelated pairs >= {closest:.3g} (-> near_identical <= "
        f"{closest / 2:.3g} with a 2x margin); copies vs parent "
        + ", ".join(f"{n} {r['black_box']['abs_D_q95']:.2g}" for n, r in copies.items())
        + f"  [near_identical {pc.near_identical:g}]"
    )

    print("\n=== screening verdicts (each model against the base models registered before it) ===")
    print(f"{'model':16s} {'truth':22s} {'black box alone':34s} {'white box alone':34s} combined")
    rows = []
    for name, (_, kind, parent) in family.items():
        truth = {"base": "independent", "copy": f"copy of {parent}", "finetune": f"fine-tune of {parent}"}[kind]
        row = dict(name=name, kind=kind, parent=parent)
        row.update(
            bb=screen(pairs[name], "black_box_only"),
            wb=screen(pairs[name], "white_box_only"),
            combined=screen(pairs[name], None),
        )
        rows.append(row)
        fmt = lambda vc: f"{vc[0]}{' ' + vc[1] if vc[1] else ''}"  # noqa: E731
        print(f"{name:16s} {truth:22s} {fmt(row['bb']):34s} {fmt(row['wb']):34s} {fmt(row['combined'])}")

    def rates(key: str) -> dict:
        cp = [r for r in rows if r["kind"] == "copy"]
        neg = [r for r in rows if r["kind"] == "base" and r["name"] != "parent"]
        ft = [r for r in rows if r["kind"] == "finetune"]
        flagged = [r for r in cp if r[key][0] == "suspected_copy_of"]
        return {
            "tpr": len(flagged) / len(cp),
            "parent_named": sum(r[key][1] == r["parent"] for r in flagged) / len(cp),
            "fpr": sum(r[key][0] == "suspected_copy_of" for r in neg) / len(neg),
            "finetunes_related": sum(r[key][0] == "related" for r in ft) / len(ft),
            "n": (len(cp), len(neg), len(ft)),
        }

    print("\n=== rates ===")
    summary = {}
    for key, label in (("bb", "black box alone"), ("wb", "white box alone"), ("combined", "combined")):
        r = summary[key] = rates(key)
        print(
            f"{label:16s} noise copies flagged {r['tpr']:.0%} (parent named {r['parent_named']:.0%}) of {r['n'][0]}; "
            f"copy verdicts on independent models {r['fpr']:.0%} of {r['n'][1]}; "
            f"fine-tunes 'related' {r['finetunes_related']:.0%} of {r['n'][2]}"
        )
    right = {n: r["copy"] == "A" for n, r in swapped.items() if r["verdict"] == "suspected_copy_of"}
    evidence = {n: r["direction_evidence"] for n, r in swapped.items()}
    visible = [n for n, e in evidence.items() if e != "unknown"]
    print(
        f"swapped arguments (copy as model A): {sum(right.values())}/{len(swapped)} copies named as the copy; "
        f"direction shown by evidence for {len(visible)}/{len(swapped)} "
        f"({', '.join(f'{n}: {evidence[n]}' for n in visible) or 'none'})"
    )
    print(
        f"\ntimes (s): training {t_train:.0f}, sampling {t_sample:.0f}, {sum(map(len, pairs.values())) + len(swapped)} "
        f"pairs {t_pairs:.0f}"
    )
    if args.json:
        args.json.write_text(
            json.dumps({"pairs": pairs, "swapped": swapped, "summary": summary}, indent=1, default=float)
        )


if __name__ == "__main__":
    main()
