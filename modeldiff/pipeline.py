"""What each stage computes, driven by a config and on loaded models: plain functions, no MLflow, no Accelerate
(the platform's stages call these, then log).

Stage 1 follows `sampler.method`: parallel tempering + WHAM (`tempering`) or ancestral importance sampling
(`ancestral`). Scale-out hooks are plain arguments: `run_sampler(..., units=slice)` runs a slice of the sampler's
independent units, ladders or blocks (join slices with `join_results`), and `shard` wraps scorers (e.g.
`modeldiff.method.scoring.ShardedScorer`, which scores this process's share of a batch and all-gathers the rest
through the `gather` callable it is given).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from modeldiff.analysis import tokendiff
from modeldiff.analysis.plagiarism import Thresholds, Verdict, black_box, decide, report
from modeldiff.analysis.relatedness import weight_relatedness
from modeldiff.method import ancestral, tempering
from modeldiff.method.ancestral import AncestralResult, AncestralSettings, run_ancestral
from modeldiff.method.cross_eval import cross_evaluate
from modeldiff.method.normalize import lambda_sweep, ratio_from_frames
from modeldiff.method.outdist import OutputDistribution, build_output_distribution
from modeldiff.method.scoring import Scorer
from modeldiff.method.streams import stream_seed
from modeldiff.method.tempering import Checkpointing, TemperingResult, TemperingSettings, run_parallel_tempering
from modeldiff.method.uncertainty import SideReplicates, ratio_uncertainty, side_replicates
from modeldiff.models import LoadedModel, check_comparable
from modeldiff.views import tokenview


def make_scorer(cfg, loaded: LoadedModel) -> Scorer:
    return Scorer(loaded.model, loaded.space.bos_token_id, output=cfg.output, batch_size=int(cfg.model.batch_size))


def is_ancestral(cfg) -> bool:
    return cfg.sampler.method == "ancestral"


def n_units(cfg) -> int:
    """Stage 1's independent units (split across processes, resampled for errors): ladders or blocks."""
    return int(cfg.sampler.ancestral.n_blocks if is_ancestral(cfg) else cfg.sampler.ladders)


def run_sampler(
    cfg,
    loaded: LoadedModel,
    units: slice | None = None,
    progress: bool = False,
    checkpointing: Checkpointing | None = None,
    rounds: int | None = None,
) -> TemperingResult | AncestralResult:
    """Stage 1's samples of the units in `units` (default: all). `rounds` (ancestral): the most blocks any process
    runs, so that every process checkpoints at the same rounds (tempering's processes step in lockstep anyway)."""
    scorer = make_scorer(cfg, loaded)
    seed = stream_seed(cfg.seed, loaded.identity, "sample_outdist")  # a model's own stream, whichever side it is
    if is_ancestral(cfg):
        settings = replace(AncestralSettings.from_config(cfg), seed=seed)
        return run_ancestral(scorer, loaded.space, settings, units, progress, checkpointing, rounds)
    settings = replace(TemperingSettings.from_config(cfg), seed=seed)
    return run_parallel_tempering(scorer, loaded.space, settings, units, progress, checkpointing)


Z_QUANTILES = (0.01, 0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95, 0.99)


def z_quantiles(cfg, loaded: LoadedModel, n_samples: int = 2048, tau: float = 1.0, progress: bool = False) -> dict:
    """Quantiles of z over the model's own samples from S^L at temperature τ (τ = 1: the model itself, restricted to
    the allowed tokens), and a suggested z_range on the low-NLL side where Model-diff counts the inputs a model finds
    likely: from its 10th to its 50th percentile (the paper's GPT-2 preset, Z = [2, 4] at L = 25, lies there too)."""
    settings = AncestralSettings(
        temperatures=[float(tau)],
        n_samples=int(n_samples),
        n_blocks=2,  # the smallest number the settings take; blocks matter only for intervals, unused here
        batch_size=int(cfg.sampler.ancestral.batch_size),
        seed=stream_seed(cfg.seed, loaded.identity, "z_quantiles"),
    )
    z = run_ancestral(make_scorer(cfg, loaded), loaded.space, settings, progress=progress).z
    q = np.quantile(z, Z_QUANTILES)
    return {
        "n_samples": int(len(z)),
        "tau": float(tau),
        "length": int(loaded.space.length),
        "quantiles": {f"{p:g}": float(v) for p, v in zip(Z_QUANTILES, q)},
        "suggested_z_range": [float(np.floor(q[2] * 10) / 10), float(np.ceil(q[4] * 10) / 10)],
    }


def join_results(parts: list):
    """One sampler result from those of disjoint unit slices, in process order."""
    return type(parts[0]).concat(parts)


def merge_checkpoints(cfg, parts: list[dict]) -> dict:
    """One checkpoint from those of disjoint unit slices: any number of processes resumes it."""
    return (ancestral if is_ancestral(cfg) else tempering).merge_checkpoints(parts)


def build_outdist(cfg, loaded: LoadedModel, result: TemperingResult | AncestralResult) -> OutputDistribution:
    build = ancestral.build_output_distribution if is_ancestral(cfg) else build_output_distribution
    od = build(
        result,
        loaded.space,
        tuple(cfg.z_range),
        float(cfg.bins.width),
        n_replicates=int(cfg.uncertainty.n_replicates),
        level=float(cfg.uncertainty.level),
        seed=stream_seed(cfg.seed, loaded.identity, "rho_band"),
        decode=loaded.decode,
    )
    od.meta.update(model=loaded.ref, model_identity=loaded.identity)
    return od


def sample_outdist(cfg, loaded: LoadedModel, progress: bool = False) -> OutputDistribution:
    return build_outdist(cfg, loaded, run_sampler(cfg, loaded, progress=progress))


def cross_eval(
    cfg, od: OutputDistribution, src: LoadedModel, other: LoadedModel, role: str, shard=None
) -> pd.DataFrame:
    """`role` is the sampling model's side ("A" for A→B); `shard(scorer)` may wrap scorers (ShardedScorer).
    Each side's draws take their own stream of the one config seed (streams.stream_seed)."""
    check_comparable(src, other)
    if tuple(float(z) for z in cfg.z_range) != tuple(od.z_range):
        raise ValueError(
            f"z_range {list(cfg.z_range)} differs from the {list(od.z_range)} the output distribution was "
            "built with: use the sample_outdist run's z_range, or sample again with the new one"
        )
    wrap = shard or (lambda s: s)
    ce = cfg.cross_eval
    return cross_evaluate(
        od,
        src.space,
        wrap(make_scorer(cfg, src)),
        wrap(make_scorer(cfg, other)),
        int(ce.n_draws),
        role=role,
        seed=stream_seed(cfg.seed, src.identity, f"cross_eval:{role}"),
        within_bin=ce.within_bin,
        allow_empty_bins=bool(ce.allow_empty_bins),
        decode=src.decode,
    )


def cross_eval_replicates(cfg, od: OutputDistribution, draws: pd.DataFrame, role: str) -> SideReplicates:
    """ln f of each distinct drawn input under each of stage 1's replicates (the sides take independent streams)."""
    return side_replicates(
        od,
        draws["representative"],
        int(cfg.uncertainty.n_replicates),
        stream_seed(cfg.seed, od.meta.get("model_identity", ""), f"replicates:{role}"),
        side=role,
        within_bin=cfg.cross_eval.within_bin,
    )


def normalize(
    cfg, ab: pd.DataFrame, ba: pd.DataFrame, ab_replicates: SideReplicates, ba_replicates: SideReplicates
) -> tuple[dict, pd.DataFrame]:
    """ratio.json's record at λ = cfg.lambda with its intervals ("ci", "std"; effective sample sizes in "counts"),
    and the λ sweep."""
    lam = float(cfg["lambda"])
    ratio = ratio_from_frames(ab, ba, lam)
    if ratio["terms"]["PD_AB"] == 0:  # the ratio divides by it: NaN is no answer, and no JSON either
        raise ValueError(
            f"no A→B draw has D < −λ (λ = {lam:g}; {ratio['counts']['n_A_in_B']} draws with both models in Z), so "
            "PD_AB = 0 and the ratio PD_AB : PA_AB : PA_BA : PD_BA, which divides by it, is undefined: lower lambda, "
            "draw more (cross_eval.n_draws), or check that z_range holds inputs B finds likely too"
        )
    u = cfg.uncertainty
    spread = ratio_uncertainty(ab, ab_replicates, ba, ba_replicates, lam, float(u.level), int(cfg.seed))
    ratio["counts"].update(spread.pop("ess"))
    ratio.update(spread)
    return ratio, lambda_sweep(ab["D"], ab["in_z_other"], ba["D"], ba["in_z_other"])


def plagiarism(
    cfg,
    a: LoadedModel,
    b: LoadedModel,
    ab: pd.DataFrame | None,
    ba: pd.DataFrame | None,
    order: str | None = None,
) -> tuple[Verdict, dict]:
    """The verdict on the pair (is B a copy of A, or A of B?) with the evidence `plagiarism.mode` allows: both sides'
    cross_eval draws (black_box; `ab`, `ba` may be None in white_box mode), the weights when the architectures match
    (white_box), or both (combined); returns it with the body of plagiarism.json. `order`: the name of evidence that
    B came after A (screening: registration_order), used for the direction only when nothing else shows it."""
    thresholds, pc = Thresholds.from_config(cfg), cfg.plagiarism
    bb = black_box(ab, ba, thresholds) if pc.mode != "white_box" else None
    wb = None
    if pc.mode != "black_box":  # black_box never touches the weights
        wb = weight_relatedness(
            a.model, b.model, permutations=int(pc.permutations), simulations=int(pc.simulations), seed=int(cfg.seed)
        )
    verdict = decide(bb, wb, thresholds, pc.mode, order)
    return verdict, report(bb, wb, verdict, thresholds)


def draws_token_view(cfg, draws: pd.DataFrame, a: LoadedModel, b: LoadedModel, title: str) -> str:
    """cross_eval's token-view page: the histogram of D over the draws, and token views (A vs B) of at most
    tokendiff.cross_eval_views distinct inputs, stratified over its bins, so runs with thousands of distinct
    draws stay small."""
    settings = tokendiff.Settings.from_cfg(cfg)
    distinct = tokendiff.distinct_draws(draws)
    edges, counts = tokendiff.histogram(draws["D"].to_numpy(np.float64), settings.hist_bins)
    bins = tokendiff.bin_of(distinct["D"].to_numpy(np.float64), edges)
    picked = tokendiff.stratified_pick(bins, settings.cross_eval_views, seed=int(cfg.seed))
    cmp = None
    if len(picked):
        corpus = tokendiff.ids_corpus(
            np.stack(distinct["tokens"].to_numpy()[picked]), distinct["text"].to_numpy()[picked].tolist()
        )
        cmp, _ = tokendiff.compare_models(a, b, corpus, settings, cache=False)
    return tokenview.draws_page(
        distinct, edges, counts, bins, picked, cmp, tokenview.models_of(a, b), tokendiff.token_text_fn(a), title
    )
