"""Ancestral importance sampling (sampler.method=ancestral): q_τ is the product of the model's conditionals and a
normalised distribution the sampler follows, the weighted counts match exact enumeration, z is Scorer's, and block
slices, checkpoints and resumes reproduce the one-process run exactly."""

import numpy as np
import pytest
import torch
from scipy import stats

from modeldiff.method.ancestral import (
    AncestralSettings,
    balance_log_weights,
    build_output_distribution,
    merge_checkpoints,
    run_ancestral,
)
from modeldiff.method.enumeration import exact_log_rho
from modeldiff.method.outdist import OutputDistribution
from modeldiff.method.reweighting import logsumexp
from modeldiff.method.scoring import Scorer
from modeldiff.method.space import InputSpace
from modeldiff.method.tempering import Checkpointing
from support import brute_force_log_q

TEMPS = [1.0, 1.6]


def sample(scorer, space, blocks=None, resume=None, every=0, saved=None, rounds=None, **over):
    settings = AncestralSettings(**{"temperatures": TEMPS, "n_samples": 240, "n_blocks": 5, "batch_size": 16, **over})
    ckpt = Checkpointing(every, saved.append if saved is not None else None, resume)
    return run_ancestral(scorer, space, settings, blocks=blocks, progress=False, checkpointing=ckpt, rounds=rounds)


def assert_same_samples(a, b):
    for name in ("ids", "z", "log_q", "temperature", "block"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.fixture(params=["gpt2", "llama"])
def model_space(request, random_gpt2, tiny_llama):
    """GPT-2 over all of its 4 digits; Llama over a non-contiguous allowed set (the column-index path)."""
    if request.param == "gpt2":
        task, model = random_gpt2
        return model, task.space
    return tiny_llama, InputSpace(length=4, token_ids=(0, 2, 3, 5, 9), bos_token_id=11)


def test_q_is_the_product_of_the_conditionals_and_z_is_scorers(model_space):
    model, space = model_space
    scorer = Scorer(model, space.bos_token_id)
    res = sample(scorer, space)
    assert res.ids.shape == (240, space.length) and np.isin(res.ids, space.token_ids).all()
    # the cached pass and a full forward sum the same float32 terms in another order: equal to float32 rounding
    np.testing.assert_allclose(res.log_q, brute_force_log_q(model, space, res.ids, TEMPS), rtol=0, atol=2e-5)
    np.testing.assert_allclose(res.z, scorer.score_numpy(res.ids), rtol=0, atol=2e-6)
    assert res.z.dtype == scorer.score_numpy(res.ids[:1]).dtype
    # every block holds the same number of samples of every temperature; weights are the balance heuristic
    assert (np.bincount(res.block * 2 + res.temperature) == 24).all()
    np.testing.assert_allclose(np.exp(-res.ln_weight), np.exp(res.log_q).mean(1))


def test_q_is_normalised_and_followed_by_the_draws(random_gpt2):
    """Σ_Ω q_τ = 1 for every τ, and the draws at one τ follow q_τ (χ² goodness of fit over all 64 inputs)."""
    task, model = random_gpt2
    space = task.space
    all_ids = space.index_to_ids(np.arange(space.size))
    log_q = brute_force_log_q(model, space, all_ids, TEMPS)
    np.testing.assert_allclose(logsumexp(log_q, axis=0), 0.0, atol=1e-5)
    res = sample(
        Scorer(model, space.bos_token_id), space, temperatures=[1.6], n_samples=6400, n_blocks=4, batch_size=800
    )
    observed = np.bincount(space.ids_to_index(res.ids), minlength=space.size)
    expected = len(res.z) * np.exp(log_q[:, 1])
    assert expected.min() > 5  # χ² is valid
    # a fixed seed makes this deterministic; a sampler off by a few % in any input would fail it (p < 1e-3)
    assert stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue > 1e-3


def test_weighted_counts_match_enumeration(tiny_task, toy_pair, toy_exact_z):
    """ρ̃(b) = (1/N) Σ w_i 1{z_i ∈ b} against exact counts, bin by bin, within 4 exact standard errors.

    The estimator is a sum of independent terms, N_k of them from q_k, so its variance is
    Σ_k N_k Var_k(w 1_b) / N², computed exactly from q_k(x) and w(x) over all 7,776 inputs."""
    model, z_exact = toy_pair[0], toy_exact_z[0]
    space = tiny_task.space
    settings = dict(n_samples=4000, n_blocks=10, batch_size=400)
    res = sample(Scorer(model, space.bos_token_id), space, **settings)
    od = build_output_distribution(res, space, (1.3, 1.8), 0.02)
    exact = np.exp(exact_log_rho(z_exact, od.edges))
    log_q = brute_force_log_q(model, space, space.index_to_ids(np.arange(space.size)), TEMPS)
    w = np.exp(balance_log_weights(log_q, [1, 1]))
    bins = np.clip(np.searchsorted(od.edges, z_exact, side="right") - 1, 0, len(exact) - 1)
    n_k = settings["n_samples"] / len(TEMPS)
    var = np.zeros(len(exact))
    for k in range(len(TEMPS)):
        q = np.exp(log_q[:, k])
        second = np.bincount(bins, q * w**2, minlength=len(exact))
        first = np.bincount(bins, q * w, minlength=len(exact))
        var += n_k * (second - first**2)
    sigma = np.sqrt(var) / settings["n_samples"]
    checked = od.in_z & (exact >= 50)  # bins with inputs enough for the test to have power
    assert checked.sum() >= 10 and (sigma[checked] / exact[checked]).max() < 0.25
    err = np.exp(od.ln_rho[checked]) - exact[checked]
    assert np.all(np.abs(err) <= 4 * sigma[checked]), np.c_[np.exp(od.ln_rho[checked]), exact[checked], sigma[checked]]
    # no input outside the sampled range escapes the count: Σ ρ̃ estimates |Ω| (within 4σ of the total)
    total_sigma = np.sqrt(sum(n_k * np.var(np.exp(log_q[:, k]) * w * space.size) for k in range(2)) / 4000**2)
    assert abs(np.exp(logsumexp(od.ln_rho)) - space.size) <= 4 * max(total_sigma, 1.0)


def test_output_distribution_arrays_and_roundtrip(tmp_path, tiny_task, toy_scorers):
    space = tiny_task.space
    res = sample(toy_scorers[0], space, n_samples=2000, n_blocks=10, batch_size=500)
    od = build_output_distribution(res, space, (1.3, 1.8), 0.02, n_replicates=40, decode=str)
    reps, meta = od.representatives, od.meta
    assert meta["method"] == "ancestral" and meta["n_units"] == 10 and meta["unit_sizes"] == [200] * 10
    assert od.unit_ln_rho.shape == (10, len(od.ln_rho)) and od.rep_unit_ln_weight.shape == (len(reps), 10)
    # ρ̃ and each representative's weight are the sums over blocks (so resampled blocks give resampled estimates)
    np.testing.assert_allclose(logsumexp(od.unit_ln_rho, axis=0) - np.log(2000), od.ln_rho)
    np.testing.assert_allclose(logsumexp(od.rep_unit_ln_weight, axis=1), reps["ln_weight"])
    assert reps["count"].sum() == meta["n_in_z"] and meta["n_distinct_in_z"] == len(reps)
    assert reps["z"].between(1.3, 1.8).all() and (od.hist.sum() == 2000) and od.hist.shape == (2, len(od.ln_rho))
    assert (od.f == 0).all() and list(reps.columns) == ["tokens", "z", "count", "ln_weight", "bin", "text"]
    # per-bin ESS counts distinct inputs: at most the distinct inputs in the bin, at least 1 where one was drawn
    distinct = np.bincount(reps["bin"], minlength=len(od.ln_rho))
    ess = np.asarray(meta["ess_per_bin"])
    assert np.all(ess[od.in_z] <= distinct[od.in_z] + 1e-9) and np.all(ess[distinct > 0] >= 1 - 1e-9)
    assert np.isfinite(od.ln_rho_std[od.in_z & (distinct > 5)]).all()
    od.save(tmp_path)
    back = OutputDistribution.load(tmp_path)
    for name in ("ln_rho", "ln_rho_std", "hist", "unit_ln_rho", "rep_unit_ln_weight"):
        np.testing.assert_array_equal(getattr(back, name), getattr(od, name), err_msg=name)
    assert back.meta == od.meta


def test_a_block_slice_draws_what_the_full_run_draws_for_it(tiny_task, toy_scorers):
    full = sample(toy_scorers[0], tiny_task.space)
    part = sample(toy_scorers[0], tiny_task.space, blocks=slice(1, 3))
    mine = np.isin(full.block, [1, 2])
    for name in ("ids", "z", "log_q", "temperature", "block"):
        np.testing.assert_array_equal(getattr(part, name), getattr(full, name)[mine], err_msg=name)
    joined = type(full).concat([sample(toy_scorers[0], tiny_task.space, blocks=s) for s in (slice(0, 2), slice(2, 5))])
    assert_same_samples(joined, full)
    # batch_size splits the work, not the random stream
    np.testing.assert_array_equal(sample(toy_scorers[0], tiny_task.space, batch_size=48).ids, full.ids)


@pytest.mark.parametrize("at", [0, 3])  # after the first block, and after all but the last
def test_resume_equals_the_uninterrupted_run(tiny_task, toy_scorers, at):
    saved = []
    full = sample(toy_scorers[0], tiny_task.space, every=48, saved=saved)  # blocks of 48: one checkpoint per block
    assert [c["step"] for c in saved] == [48, 96, 144, 192, 240] and saved[-1]["rounds"] == 5
    n_scored = toy_scorers[0].n_scored
    none = []
    sample(toy_scorers[0], tiny_task.space, every=0, saved=none, resume=saved[at])
    assert none == []  # checkpoint.every = 0: no checkpoints
    resumed = sample(toy_scorers[0], tiny_task.space, resume=saved[at])
    assert_same_samples(resumed, full)
    assert toy_scorers[0].n_scored - n_scored == 2 * (240 - saved[at]["step"])  # finished blocks are not redrawn
    assert resumed.n_scored == full.n_scored


def test_slices_checkpoint_in_lockstep_and_merge_for_another_split(tiny_task, toy_scorers):
    """Two 'processes' (blocks 0-2 and 3-4, so 3 rounds) save equally often; one process resumes the merged
    checkpoint, another split resumes it too."""
    scorer, space = toy_scorers[0], tiny_task.space
    full = sample(scorer, space)
    left, right = [], []
    sample(scorer, space, blocks=slice(0, 3), every=48, saved=left, rounds=3)
    sample(scorer, space, blocks=slice(3, 5), every=48, saved=right, rounds=3)
    assert len(left) == len(right) == 3
    merged = merge_checkpoints([left[1], right[1]])  # blocks 0, 1, 3, 4 done
    assert merged["step"] == 4 * 48
    assert_same_samples(sample(scorer, space, resume=merged), full)
    part = sample(scorer, space, blocks=slice(1, 4), resume=merged)
    np.testing.assert_array_equal(part.z, full.z[np.isin(full.block, [1, 2, 3])])


def test_a_checkpoint_of_other_settings_is_refused(tiny_task, toy_scorers):
    saved = []
    sample(toy_scorers[0], tiny_task.space, every=48, saved=saved)
    with pytest.raises(ValueError, match="other sampler settings"):
        sample(toy_scorers[0], tiny_task.space, resume=saved[0], seed=1)


def test_settings_are_checked():
    with pytest.raises(ValueError, match=r"n_samples must be a positive multiple of .* = 10 \(e\.g\. 100\)"):
        AncestralSettings([1.0, 2.0], n_samples=99, n_blocks=5)
    with pytest.raises(ValueError, match="temperatures must be a non-empty list"):
        AncestralSettings([0.0], n_samples=10, n_blocks=5)
    a, b = AncestralSettings([1.0], 10, 5, seed=3), AncestralSettings([1.0], 10, 5, seed=3)
    assert torch.equal(torch.rand(4, generator=a.block_generator(2)), torch.rand(4, generator=b.block_generator(2)))
    assert not torch.equal(torch.rand(4, generator=a.block_generator(1)), torch.rand(4, generator=a.block_generator(2)))
