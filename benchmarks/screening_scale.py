"""Registry-scale screening with the lineage index (modeldiff.analysis.lineage): fingerprint cost, shortlist recall,
and the time to screen a new version against a registry of 200 toy versions, with a full scan as the baseline.

The registry (toy GPT-2s of configs/toy.yaml's task, briefly trained so it runs in minutes):
- 10 parents (seeds 0..9, 32-wide, 2 layers, `--steps` AdamW steps), each with 9 derived versions: weight-noise
  copies at σ = 1e-3, 1e-2, 1e-1, 3e-1 (relative), noise copies (σ = 1e-2, 1e-1) whose hidden units and heads were
  relabelled, a σ = 1e-2 copy with its residual axis relabelled too, and two short fine-tunes (on the task, and on
  another rule);
- 100 independents: 50 seeds trained like the parents (the hard negatives), 30 untrained initialisations, 20 of
  another architecture (48-wide).
Versions are registered in a random order, a parent before its derived versions; each derived version is ranked
against the versions registered before it (exactly what its screening sees), and recall is whether its true parent is
on the shortlist. Siblings (other copies of the same parent) are on the registry too and compete for the shortlist.

Times: the fingerprint of each version; the screening of a 201st version (a relabelled σ = 1e-1 copy) = its
fingerprint + reading 200 stored fingerprints + ranking + the full check of the shortlist, against a full scan = the
full check of every registered version. A full check's cost per pair (cross_eval both ways + the combined verdict;
the registered version's sample_outdist is reused from its own screening) and the new version's sample_outdist (paid
by both) are measured in the same run on three pairs, with the calibration benchmark's sampler settings and Z from
the parent's suggested z_range (`modeldiff z-quantiles`).

    nice -n 10 python benchmarks/screening_scale.py     # ~3-5 min on 2 shared cores
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import replace

import numpy as np
import torch

from modeldiff import pipeline
from modeldiff.analysis import lineage
from modeldiff.analysis.relatedness import HEADS, RESIDUAL, UNITS, apply_symmetry, random_symmetry, symmetries
from modeldiff.config import load_config
from modeldiff.method.toy import ToyTask, make_toy_model, train_toy_model
from modeldiff.models import LoadedModel, decode_digits
from modeldiff.models.derive import add_weight_noise

OVERRIDES = (  # the calibration benchmark's sampler settings (benchmarks/plagiarism_calibration.py)
    "sampler.ladders=8 sampler.steps=400 sampler.burn_in=100 uncertainty.n_replicates=40 cross_eval.n_draws=2000"
)
VOCABULARY = "ids:screening-scale"
KINDS = (
    "noise 1e-3",
    "noise 1e-2",
    "noise 1e-1",
    "noise 3e-1",
    "units+heads relabelled, noise 1e-2",
    "units+heads relabelled, noise 1e-1",
    "residual+units+heads relabelled, noise 1e-2",
    "fine-tune (same task, 20 steps)",
    "fine-tune (other rule, 20 steps)",
)


def relabelled(model, sigma: float, parts, seed: int):
    child = add_weight_noise(copy.deepcopy(model), sigma, seed=seed, relative=True)
    return apply_symmetry(child, random_symmetry(symmetries(child), np.random.default_rng(seed), parts))


def derive(parent, kind: str, task: ToyTask, seed: int):
    if kind.startswith("noise"):
        return add_weight_noise(copy.deepcopy(parent), float(kind.split()[1]), seed=seed, relative=True)
    if kind.startswith("units+heads"):
        return relabelled(parent, float(kind.split()[-1]), (UNITS, HEADS), seed)
    if kind.startswith("residual"):
        return relabelled(parent, float(kind.split()[-1]), (RESIDUAL, UNITS, HEADS), seed)
    rule = task if "same task" in kind else replace(task, modulus=5)
    child = copy.deepcopy(parent)
    train_toy_model(child, rule, steps=20, batch_size=64, lr=1e-3, seed=seed, progress=False)
    return child.eval()


def build_registry(
    task: ToyTask, steps: int, batch_size: int, rng: np.random.Generator
) -> list[tuple[str, torch.nn.Module, str, str]]:
    """[(name, model, kind, true parent)] in registration order (a parent before its derived versions)."""

    def toy(seed: int, width: int = 32, train: bool = True):
        m = make_toy_model(task, n_embd=width, n_head=2, n_layer=2, seed=seed)
        if train:
            train_toy_model(m, task, steps=steps, batch_size=batch_size, seed=seed, progress=False)
        return m.eval()

    versions = []
    for p in range(10):
        parent = toy(p)
        versions.append((f"parent{p}", parent, "parent", ""))
        for i, kind in enumerate(KINDS):
            versions.append((f"parent{p}/{kind}", derive(parent, kind, task, 100 * p + i), kind, f"parent{p}"))
    versions += [(f"seed{s}", toy(s), "independent (trained)", "") for s in range(10, 60)]
    versions += [(f"init{s}", toy(s, train=False), "independent (untrained)", "") for s in range(60, 90)]
    versions += [(f"wide{s}", toy(s, width=48), "independent (48-wide)", "") for s in range(90, 110)]
    order = list(rng.permutation(len(versions)))
    first = {}  # a family's earliest slot goes to its parent
    for slot, i in enumerate(order):
        family = versions[i][3] or versions[i][0]
        first.setdefault(family, slot)
    for p in range(10):
        parent_index = next(i for i, v in enumerate(versions) if v[0] == f"parent{p}")
        slot = order.index(parent_index)
        order[slot], order[first[f"parent{p}"]] = order[first[f"parent{p}"]], order[slot]
    return [versions[i] for i in order]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="toy")
    p.add_argument("--overrides", default=OVERRIDES)
    p.add_argument("--steps", type=int, default=100, help="AdamW steps of parents and trained independents")
    p.add_argument("--batch-size", type=int, default=64, help="their training batch size")
    p.add_argument("--probes", type=int, default=None, help="probe inputs (default: the config's screening.probes)")
    p.add_argument("--shortlist", type=int, default=None, help="default: the config's screening.shortlist")
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.config, args.overrides)
    probes = args.probes or int(cfg.screening.probes)
    size = args.shortlist if args.shortlist is not None else int(cfg.screening.shortlist)
    task = ToyTask(int(cfg.space.length), int(cfg.space.vocab_size), int(cfg.toy.modulus))
    rng = np.random.default_rng(0)

    t0 = time.perf_counter()
    registry = build_registry(task, args.steps, args.batch_size, rng)
    print(f"registry: {len(registry)} versions built in {time.perf_counter() - t0:.0f} s", flush=True)

    times, stored = [], {}
    for name, model, _, _ in registry:
        t0 = time.perf_counter()
        fp = lineage.fingerprint(model, task.space, VOCABULARY, probes)
        times.append(time.perf_counter() - t0)
        stored[name] = fp.to_bytes()
    times = np.array(times)
    sizes = np.array([len(b) for b in stored.values()])
    print(
        f"fingerprint per version: {1e3 * times.mean():.1f} ms (sd {1e3 * times.std():.1f}, max "
        f"{1e3 * times.max():.1f}); stored size {sizes.mean() / 1024:.1f} KiB ({probes} probes of length {task.length})"
    )

    index = {name: lineage.Fingerprint.from_bytes(b) for name, b in stored.items()}
    recall = {kind: [] for kind in KINDS}
    ranks = {kind: [] for kind in KINDS}
    for i, (name, _, kind, parent) in enumerate(registry):
        if not parent:
            continue
        earlier = {n: index[n] for n, *_ in registry[:i]}
        ranked = lineage.rank(index[name], earlier)
        keep, _ = lineage.shortlist(index[name], earlier, size)
        recall[kind].append(parent in [c.key for c in keep])
        c = next(c for c in ranked if c.key == parent)
        ranks[kind].append((c.weight_rank, c.probe_rank, [x.key for x in ranked].index(parent) + 1, len(earlier)))

    def median_max(x) -> str:
        return f"{np.median(x):g} / {max(x):g}"

    print(f"\nshortlist recall (the true parent is among the {size} checked in full), per derived kind:")
    print(
        f"  {'kind':44s} {'recall':>8s}   parent's rank (median / max): "
        f"{'by weights':>10s} {'by probes':>10s} {'merged':>8s}"
    )
    total = 0
    for kind in KINDS:
        w, pr, merged, _ = zip(*ranks[kind])
        total += sum(recall[kind])
        print(
            f"  {kind:44s} {sum(recall[kind]):3d}/{len(recall[kind]):<4d} {'':31s}"
            f"{median_max(w):>10s} {median_max(pr):>10s} {median_max(merged):>8s}"
        )
    n_derived = sum(len(v) for v in recall.values())
    before = int(np.median([x[3] for v in ranks.values() for x in v]))
    print(
        f"  {'all derived versions':44s} {total:3d}/{n_derived:<4d} "
        f"(each ranked among a median {before} earlier versions)"
    )

    # the 201st version: a relabelled noise copy of parent3
    parent3 = next(m for n, m, *_ in registry if n == "parent3")
    new_model = relabelled(parent3, 1e-1, (UNITS, HEADS), 201)
    t0 = time.perf_counter()
    new_fp = lineage.fingerprint(new_model, task.space, VOCABULARY, probes)
    t_fp = time.perf_counter() - t0
    t0 = time.perf_counter()
    loaded_index = {name: lineage.Fingerprint.from_bytes(b) for name, b in stored.items()}
    t_read = time.perf_counter() - t0
    t0 = time.perf_counter()
    keep, _ = lineage.shortlist(new_fp, loaded_index, size)
    t_rank = time.perf_counter() - t0
    found = "parent3" in [c.key for c in keep]

    # a full check's cost, measured on three pairs (the parent, a trained independent, a sibling copy)
    def loaded(name, model):
        return LoadedModel(model.eval(), None, f"bench:{name}", task.space, name, decode_digits)

    new = loaded("new", new_model)
    z_range = pipeline.z_quantiles(cfg, loaded("parent3", parent3))["suggested_z_range"]
    cfg = load_config(args.config, f"{args.overrides} z_range=[{z_range[0]},{z_range[1]}]")
    t0 = time.perf_counter()
    new_od = pipeline.sample_outdist(cfg, new)
    t_new_outdist = time.perf_counter() - t0
    pair_times = []
    for name in ("parent3", "seed10", "parent3/noise 1e-2"):
        other = loaded(name, next(m for n, m, *_ in registry if n == name))
        od = pipeline.sample_outdist(cfg, other)  # reused from its own screening in the registry: not timed
        t0 = time.perf_counter()
        ab = pipeline.cross_eval(cfg, od, other, new, "A")
        ba = pipeline.cross_eval(cfg, new_od, new, other, "B")
        pipeline.plagiarism(cfg, other, new, ab, ba)
        pair_times.append(time.perf_counter() - t0)
    t_pair = float(np.mean(pair_times))
    n = len(registry)
    checked = len(keep)
    full = t_new_outdist + n * t_pair
    indexed = t_fp + t_read + t_rank + t_new_outdist + checked * t_pair
    print(f"\nscreening the {n + 1}st version (units+heads relabelled σ = 1e-1 copy of parent3) against {n} versions:")
    print(
        f"  its fingerprint {1e3 * t_fp:.0f} ms; reading {n} stored fingerprints {1e3 * t_read:.0f} ms; ranking "
        f"{1e3 * t_rank:.1f} ms; parent on the shortlist: {found}"
    )
    print(
        f"  full check per pair {t_pair:.2f} s (3 pairs: {', '.join(f'{t:.2f}' for t in pair_times)}); the new "
        f"version's sample_outdist {t_new_outdist:.1f} s (paid by both)"
    )
    print(f"  full scan (estimated): {t_new_outdist:.1f} + {n} × {t_pair:.2f} = {full:.0f} s")
    print(
        f"  with the lineage index: {t_fp + t_read + t_rank:.2f} + {t_new_outdist:.1f} + {checked} × {t_pair:.2f} = "
        f"{indexed:.1f} s  (ratio full / indexed = {full / indexed:.1f}×)"
    )


if __name__ == "__main__":
    main()
