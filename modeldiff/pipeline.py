"""The three stages driven by a config: plain functions, no MLflow, no Accelerate.

Scale-out hooks are plain arguments: `run_sampler(..., ladders=slice)` runs a slice of the ladders
(join slices with `TemperingResult.concat`), and `ShardedScorer` scores this process's share of a
batch and all-gathers the rest through whatever `gather` callable the caller passes in.
"""
from __future__ import annotations

from dataclasses import fields

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from . import tokendiff, tokenview
from .cross_eval import cross_evaluate
from .models import LoadedModel, check_comparable
from .normalize import lambda_sweep, ratio_from_frames
from .outdist import OutputDistribution, build_output_distribution
from .plagiarism import Thresholds, Verdict, black_box, decide, report
from .relatedness import weight_relatedness
from .scoring import Scorer
from .tempering import Checkpointing, TemperingResult, TemperingSettings, geometric_temperatures, run_parallel_tempering


def make_scorer(cfg, loaded: LoadedModel) -> Scorer:
    return Scorer(loaded.model, loaded.space.bos_token_id, output=cfg.output, batch_size=int(cfg.model.batch_size))


def tempering_settings(cfg) -> TemperingSettings:
    s = cfg.sampler
    return TemperingSettings(
        temperatures=geometric_temperatures(float(s.t_min), float(s.t_max), int(s.n_temperatures)),
        ladders=int(s.ladders), steps=int(s.steps), burn_in=int(s.burn_in), thin=int(s.thin),
        swap_every=int(s.swap_every), kernel=s.kernel, kernel_params=OmegaConf.to_container(s.kernel_params),
        seed=int(cfg.seed))


def ladder_slice(n_ladders: int, index: int, n_processes: int) -> slice:
    """Process `index`'s contiguous share of the ladders (sizes differ by at most one)."""
    bounds = np.linspace(0, n_ladders, n_processes + 1).round().astype(int)
    return slice(int(bounds[index]), int(bounds[index + 1]))


def run_sampler(cfg, loaded: LoadedModel, ladders: slice | None = None, progress: bool = False,
                checkpointing: Checkpointing | None = None) -> TemperingResult:
    return run_parallel_tempering(make_scorer(cfg, loaded), loaded.space, tempering_settings(cfg), ladders=ladders,
                                  progress=progress, checkpointing=checkpointing)


def build_outdist(cfg, loaded: LoadedModel, pt: TemperingResult) -> OutputDistribution:
    od = build_output_distribution(pt, loaded.space, tuple(cfg.z_range), float(cfg.bins.width),
                                   n_bootstrap=int(cfg.reweighting.n_bootstrap), seed=int(cfg.seed),
                                   decode=loaded.decode)
    od.meta.update(model=loaded.ref, model_identity=loaded.identity)
    return od


def sample_outdist(cfg, loaded: LoadedModel, progress: bool = False) -> OutputDistribution:
    return build_outdist(cfg, loaded, run_sampler(cfg, loaded, progress=progress))


class ShardedScorer:
    """Scores a contiguous share of each batch per process; `gather([part])` must return every process's part
    in process order (e.g. accelerate.utils.gather_object). All processes must call it with the same ids."""

    def __init__(self, scorer: Scorer, index: int, n_processes: int, gather):
        self.scorer, self.index, self.n_processes, self.gather = scorer, index, n_processes, gather

    def __call__(self, ids) -> torch.Tensor:
        ids = torch.as_tensor(ids, dtype=torch.long)
        bounds = np.linspace(0, len(ids), self.n_processes + 1).round().astype(int)
        mine = self.scorer(ids[bounds[self.index]:bounds[self.index + 1]])
        return torch.cat(list(self.gather([mine])))


def cross_eval(cfg, od: OutputDistribution, src: LoadedModel, other: LoadedModel, role: str,
               shard=None) -> pd.DataFrame:
    """`role` is the sampling model's side ("A" for A→B); `shard(scorer)` may wrap scorers (ShardedScorer).
    A's and B's draws take different random streams of the one config seed."""
    check_comparable(src, other)
    if tuple(float(z) for z in cfg.z_range) != tuple(od.z_range):
        raise ValueError(f"z_range {list(cfg.z_range)} differs from the {list(od.z_range)} the output distribution was "
                         "built with: use the sample_outdist run's z_range, or sample again with the new one")
    wrap = shard or (lambda s: s)
    ce = cfg.cross_eval
    return cross_evaluate(od, src.space, wrap(make_scorer(cfg, src)), wrap(make_scorer(cfg, other)), int(ce.n_draws),
                          role=role, seed=2 * int(cfg.seed) + (role == "B"), within_bin=ce.within_bin,
                          allow_empty_bins=bool(ce.allow_empty_bins), decode=src.decode)


def normalize(cfg, ab: pd.DataFrame, ba: pd.DataFrame) -> tuple[dict, pd.DataFrame]:
    """ratio.json's record at λ = cfg.lambda, and the λ sweep."""
    ratio = ratio_from_frames(ab, ba, float(cfg["lambda"]))
    return ratio, lambda_sweep(ab["D"], ab["in_z_other"], ba["D"], ba["in_z_other"])


def plagiarism_thresholds(cfg) -> Thresholds:
    """The config's plagiarism.* keys of the same names (the rest of that section are the tests' settings)."""
    return Thresholds(**{f.name: float(cfg.plagiarism[f.name]) for f in fields(Thresholds)})


def plagiarism(cfg, a: LoadedModel, b: LoadedModel, ab: pd.DataFrame, ba: pd.DataFrame) -> tuple[Verdict, dict]:
    """The verdict on the pair (is B a copy of A, or A of B?) from both sides' cross_eval draws and, when the
    architectures match, the weights; returns it with the body of plagiarism.json."""
    thresholds = plagiarism_thresholds(cfg)
    bb = black_box(ab, ba, thresholds)
    wb = weight_relatedness(a.model, b.model, permutations=int(cfg.plagiarism.permutations),
                            simulations=int(cfg.plagiarism.simulations), seed=int(cfg.seed))
    verdict = decide(bb, wb, thresholds)
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
        corpus = tokendiff.ids_corpus(np.stack(distinct["tokens"].to_numpy()[picked]),
                                      distinct["text"].to_numpy()[picked].tolist())
        cmp, _ = tokendiff.compare_models(a, b, corpus, settings, cache=False)
    return tokenview.draws_page(distinct, edges, counts, bins, picked, cmp, tokenview.models_of(a, b),
                                tokendiff.token_text_fn(a), title)
