"""Model refs, identities and comparability; config-driven stages; process splitting equals one process."""

import numpy as np
import pandas as pd
import pytest
import torch

from modeldiff import pipeline
from modeldiff.config import load_config
from modeldiff.method.scoring import ShardedScorer
from modeldiff.method.streams import stream_seed
from modeldiff.method.tempering import TemperingResult, ladder_slice
from modeldiff.method.toy import ToyTask, make_toy_model
from modeldiff.models import check_comparable, load_model
from modeldiff.views import plots

# a toy small enough to train in about a second, with a Z its samples reach
TINY = (
    "space.length=4 space.vocab_size=4 toy.modulus=4 toy.train_steps=30 toy.batch_size=64 "
    "toy.archs.small.n_embd=16 toy.archs.small.n_head=2 toy.archs.small.n_layer=1 "
    "toy.archs.large.n_embd=16 toy.archs.large.n_head=2 toy.archs.large.n_layer=2 "
    "z_range=[1.0,1.6] sampler.n_temperatures=6 sampler.ladders=4 sampler.steps=150 sampler.burn_in=50 "
    "uncertainty.n_replicates=40 cross_eval.n_draws=500"
)


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELDIFF_CACHE", str(tmp_path / "cache"))
    return load_config("toy", TINY)


def test_toy_refs_train_once_then_load_from_the_cache(cfg, tmp_path):
    a = load_model("toy:small", cfg)
    key = a.identity.removeprefix("toy:")
    cached = tmp_path / "cache" / "toy" / key
    report = (cached / "train_report.json").read_text()
    again = load_model("toy:small", cfg)
    assert again.identity == a.identity and (cached / "train_report.json").read_text() == report
    assert load_model("toy:small:seed=1", cfg).identity != a.identity
    assert load_model("toy:small", load_config("toy", TINY + " toy.lr=0.001")).identity != a.identity
    assert a.space == ToyTask(4, 4, 4).space and a.tokenizer is None
    assert a.decode(np.array([3, 0, 1, 2])) == "3 0 1 2"
    # the cached directory is an ordinary HF directory: loadable by path, same space
    by_path = load_model(str(cached), cfg)
    assert by_path.identity.startswith("dir:") and by_path.space == a.space
    check_comparable(a, by_path)


@pytest.mark.parametrize(
    "ref, match",
    [
        ("toy:medium", r"unknown toy model 'toy:medium': use toy:small, toy:large .*archs here: small, large"),
        ("toy:small:seed=x", "unknown toy model"),
        ("./no/such/dir", "is not a model directory"),
    ],
)
def test_unknown_refs_say_what_to_pass(cfg, ref, match):
    with pytest.raises(ValueError, match=match):
        load_model(ref, cfg)


def test_directory_without_config(cfg, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no config.json"):
        load_model(str(tmp_path / "empty"), cfg)


def test_models_over_different_spaces_are_not_comparable(cfg, tmp_path):
    make_toy_model(ToyTask(4, 6, 4), n_embd=16, n_head=2, n_layer=1).save_pretrained(tmp_path / "v6")
    a = load_model("toy:small", cfg)
    other = load_model(str(tmp_path / "v6"), load_config("toy", TINY + " space.vocab_size=null"))
    with pytest.raises(
        ValueError,
        match=r"not comparable: their input spaces differ \(length 4, ids 0\.\.3, BOS 4 vs "
        r"length 4, ids 0\.\.5, BOS 6\)",
    ):
        check_comparable(a, other)


def test_process_split_equals_one_process(cfg):
    a, b = load_model("toy:small", cfg), load_model("toy:large", cfg)
    whole = pipeline.run_sampler(cfg, a)
    n = 3  # uneven on purpose: 4 ladders over 3 processes
    parts = [pipeline.run_sampler(cfg, a, ladder_slice(4, i, n)) for i in range(n)]
    assert sum(len(np.unique(p.ladder)) for p in parts) == 4
    joined = TemperingResult.concat(parts)
    np.testing.assert_allclose(np.sort(joined.z), np.sort(whole.z), atol=1e-6)
    od_whole, od_joined = pipeline.build_outdist(cfg, a, whole), pipeline.build_outdist(cfg, a, joined)
    np.testing.assert_allclose(od_joined.ln_rho, od_whole.ln_rho, atol=1e-6)

    scorer = pipeline.make_scorer(cfg, b)
    ids = torch.randint(4, (50, 4))

    def gather(parts):  # stands in for the all-gather: the other two processes' shares scored here
        bounds = np.linspace(0, len(ids), n + 1).round().astype(int)
        return parts + [scorer(ids[bounds[i] : bounds[i + 1]]) for i in (1, 2)]

    torch.testing.assert_close(ShardedScorer(scorer, 0, n, gather)(ids), scorer(ids))
    single = pipeline.cross_eval(cfg, od_whole, a, b, "A")
    one = lambda s: ShardedScorer(s, 0, 1, lambda p: p)  # noqa: E731
    sharded = pipeline.cross_eval(cfg, od_whole, a, b, "A", shard=one)
    pd.testing.assert_frame_equal(single, sharded)

    # stage 1's replicates do not depend on how the ladders were split either
    rep_whole = pipeline.cross_eval_replicates(cfg, od_whole, single, "A")
    np.testing.assert_allclose(
        pipeline.cross_eval_replicates(cfg, od_joined, single, "A").ln_f, rep_whole.ln_f, atol=1e-6
    )

    od_b = pipeline.sample_outdist(cfg, b)
    ba = pipeline.cross_eval(cfg, od_b, b, a, "B")
    ratio, sweep = pipeline.normalize(cfg, single, ba, rep_whole, pipeline.cross_eval_replicates(cfg, od_b, ba, "B"))
    assert set(ratio) == {"lambda", "terms", "ratio", "counts", "D_range", "ci", "std"} and ratio["ratio"][0] == 1.0
    assert ratio["ci"]["ratio"][0] == [1.0, 1.0] and ratio["counts"]["n_units_A"] == cfg.sampler.ladders
    assert sweep["lambda"].iloc[0] == 0.0
    figures = (
        plots.rho_z_figure(od_whole),
        plots.d_hist_figure(single),
        plots.d_overlay_figure(single, ba, 0.01),
        plots.d_overlay_figure(single, ba, ratio=ratio),
    )
    for fig in figures:
        assert fig.axes and fig.axes[0].get_xlabel()


def test_ancestral_process_split_equals_one_process_and_feeds_stage_2(cfg):
    """sampler.method=ancestral through the pipeline: 5 blocks over 3 'processes' (2 rounds each) equal the
    one-process run, and its output distribution goes through cross_eval and normalize unchanged."""
    cfg.sampler.method = "ancestral"
    cfg.sampler.ancestral.update(n_samples=400, n_blocks=5, batch_size=64)
    a, b = load_model("toy:small", cfg), load_model("toy:large", cfg)
    whole = pipeline.run_sampler(cfg, a)
    assert pipeline.n_units(cfg) == 5
    joined = pipeline.join_results([pipeline.run_sampler(cfg, a, ladder_slice(5, i, 3), rounds=2) for i in range(3)])
    np.testing.assert_array_equal(joined.ids, whole.ids)
    np.testing.assert_array_equal(joined.log_q, whole.log_q)
    od = pipeline.build_outdist(cfg, a, joined)
    np.testing.assert_array_equal(od.ln_rho, pipeline.build_outdist(cfg, a, whole).ln_rho)
    assert od.meta["method"] == "ancestral" and od.meta["model"] == "toy:small" and len(od.representatives)
    od_b = pipeline.sample_outdist(cfg, b)
    ab, ba = pipeline.cross_eval(cfg, od, a, b, "A"), pipeline.cross_eval(cfg, od_b, b, a, "B")
    replicates = pipeline.cross_eval_replicates(cfg, od, ab, "A"), pipeline.cross_eval_replicates(cfg, od_b, ba, "B")
    ratio, _ = pipeline.normalize(cfg, ab, ba, *replicates)
    assert ratio["ratio"][0] == 1.0 and ratio["counts"]["n_A"] == 500
    assert ratio["ci"]["terms"]["PD_AB"][0] <= ratio["terms"]["PD_AB"] <= ratio["ci"]["terms"]["PD_AB"][1]
    assert pipeline.sample_outdist(load_config("toy", TINY), a).meta["method"] == "tempering"


def test_cross_eval_refuses_a_different_z_range(cfg):
    a = load_model("toy:small", cfg)
    od = pipeline.sample_outdist(cfg, a)
    with pytest.raises(ValueError, match=r"z_range \[1\.0, 1\.5\] differs from the \[1\.0, 1\.6\]"):
        pipeline.cross_eval(load_config("toy", TINY + " z_range=[1.0,1.5]"), od, a, a, "A")


def test_each_side_draws_from_its_own_stream(cfg):
    """A model and a σ = 0 'copy' (the same function, another identity) must not follow the same trajectories:
    streams derive from (seed, identity, role); the same triple reproduces."""
    a, copy = load_model("toy:small", cfg), load_model("noise:0:toy:small", cfg)
    assert copy.identity != a.identity
    run_a, run_copy = pipeline.run_sampler(cfg, a), pipeline.run_sampler(cfg, copy)
    assert not np.array_equal(run_a.ids, run_copy.ids)
    np.testing.assert_array_equal(pipeline.run_sampler(cfg, a).ids, run_a.ids)
    od = pipeline.build_outdist(cfg, a, run_a)
    as_a, as_b = pipeline.cross_eval(cfg, od, a, copy, "A"), pipeline.cross_eval(cfg, od, a, copy, "B")
    assert not np.array_equal(np.stack(as_a["tokens"]), np.stack(as_b["tokens"]))
    pd.testing.assert_frame_equal(pipeline.cross_eval(cfg, od, a, copy, "A"), as_a)
    assert stream_seed(0, a.identity, "sample_outdist") != stream_seed(1, a.identity, "sample_outdist")


def test_z_quantiles_of_a_models_own_samples_match_enumeration(cfg, capsys):
    """At τ = 1 the samples are the model's own distribution over S^L: their z quantiles are those of z under
    p(x) = exp(−L·z(x)) (restricted to S), computed exactly by enumeration; 4,096 samples put a quantile's error at
    a few hundredths of the spacing of z (checked as a tolerance on the CDF: ±4·sqrt(q(1−q)/n) ≈ ±0.03)."""
    from modeldiff import cli
    from modeldiff.method.enumeration import enumerate_z

    a = load_model("toy:small", cfg)
    out = pipeline.z_quantiles(cfg, a, n_samples=4096)
    z_all, _ = enumerate_z(a.model, a.space, progress=False)
    ln_p = -a.space.length * z_all.astype(np.float64)  # restricted to S: renormalise over the space
    p = np.exp(ln_p - np.logaddexp.reduce(ln_p))
    order = np.argsort(z_all)
    cdf = np.cumsum(p[order])
    for q, value in out["quantiles"].items():
        exact_cdf_at = cdf[np.searchsorted(z_all[order], value, side="right") - 1]
        assert abs(exact_cdf_at - float(q)) < 4 * np.sqrt(float(q) * (1 - float(q)) / 4096) + p.max(), (q, value)
    lo, hi = out["suggested_z_range"]
    assert lo <= out["quantiles"]["0.1"] and hi >= out["quantiles"]["0.5"] and hi - lo < 1.0
    assert cli.main(["z-quantiles", "--model", "toy:small", "--n", "256", "--overrides", TINY]) == 0
    printed = capsys.readouterr().out
    assert "z of 256 samples of toy:small at L = 4, tau = 1:" in printed and "suggested: z_range=[" in printed
