"""What each stage computes, driven by a config and on loaded models: plain functions, no MLflow, no Accelerate
(the platform's stages call these, then log).

Scale-out hooks are plain arguments: `run_sampler(..., ladders=slice)` runs a slice of the ladders
(join slices with `TemperingResult.concat`), and `shard` wraps scorers (e.g. `modeldiff.method.scoring.ShardedScorer`,
which scores this process's share of a batch and all-gathers the rest through the `gather` callable it is given).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from modeldiff.analysis import tokendiff
from modeldiff.analysis.plagiarism import Thresholds, Verdict, black_box, decide, report
from modeldiff.analysis.relatedness import weight_relatedness
from modeldiff.method.cross_eval import cross_evaluate
from modeldiff.method.normalize import lambda_sweep, ratio_from_frames
from modeldiff.method.outdist import OutputDistribution, build_output_distribution
from modeldiff.method.scoring import Scorer
from modeldiff.method.tempering import Checkpointing, TemperingResult, TemperingSettings, run_parallel_tempering
from modeldiff.models import LoadedModel, check_comparable
from modeldiff.views import tokenview


def make_scorer(cfg, loaded: LoadedModel) -> Scorer:
    return Scorer(loaded.model, loaded.space.bos_token_id, output=cfg.output, batch_size=int(cfg.model.batch_size))


def run_sampler(
    cfg,
    loaded: LoadedModel,
    ladders: slice | None = None,
    progress: bool = False,
    checkpointing: Checkpointing | None = None,
) -> TemperingResult:
    return run_parallel_tempering(
        make_scorer(cfg, loaded),
        loaded.space,
        TemperingSettings.from_config(cfg),
        ladders=ladders,
        progress=progress,
        checkpointing=checkpointing,
    )


def build_outdist(cfg, loaded: LoadedModel, pt: TemperingResult) -> OutputDistribution:
    od = build_output_distribution(
        pt,
        loaded.space,
        tuple(cfg.z_range),
        float(cfg.bins.width),
        n_bootstrap=int(cfg.reweighting.n_bootstrap),
        seed=int(cfg.seed),
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
    A's and B's draws take different random streams of the one config seed."""
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
        seed=2 * int(cfg.seed) + (role == "B"),
        within_bin=ce.within_bin,
        allow_empty_bins=bool(ce.allow_empty_bins),
        decode=src.decode,
    )


def normalize(cfg, ab: pd.DataFrame, ba: pd.DataFrame) -> tuple[dict, pd.DataFrame]:
    """ratio.json's record at λ = cfg.lambda, and the λ sweep."""
    ratio = ratio_from_frames(ab, ba, float(cfg["lambda"]))
    return ratio, lambda_sweep(ab["D"], ab["in_z_other"], ba["D"], ba["in_z_other"])


def plagiarism(
    cfg, a: LoadedModel, b: LoadedModel, ab: pd.DataFrame | None, ba: pd.DataFrame | None
) -> tuple[Verdict, dict]:
    """The verdict on the pair (is B a copy of A, or A of B?) with the evidence `plagiarism.mode` allows: both sides'
    cross_eval draws (black_box; `ab`, `ba` may be None in white_box mode), the weights when the architectures match
    (white_box), or both (combined); returns it with the body of plagiarism.json."""
    thresholds, pc = Thresholds.from_config(cfg), cfg.plagiarism
    bb = black_box(ab, ba, thresholds) if pc.mode != "white_box" else None
    wb = None
    if pc.mode != "black_box":  # black_box never touches the weights
        wb = weight_relatedness(
            a.model, b.model, permutations=int(pc.permutations), simulations=int(pc.simulations), seed=int(cfg.seed)
        )
    verdict = decide(bb, wb, thresholds, pc.mode)
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
