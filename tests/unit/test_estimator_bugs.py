"""Estimator bugs found in review (issue 14, item 4): each test failed before its fix."""

import numpy as np
import pandas as pd
import pytest
import torch

from modeldiff import pipeline
from modeldiff.config import load_config
from modeldiff.method.ancestral import AncestralResult
from modeldiff.method.ancestral import build_output_distribution as ancestral_outdist
from modeldiff.method.cross_eval import EmptyBinsError, check_no_empty_bins
from modeldiff.method.enumeration import enumerate_z
from modeldiff.method.kernels import make_kernel
from modeldiff.method.outdist import bin_of, build_output_distribution, make_edges
from modeldiff.method.scoring import Scorer
from modeldiff.method.space import InputSpace
from modeldiff.method.toy import ToyTask
from support.samples import mixed_tempering

SPACE = ToyTask(length=3, vocab_size=5, modulus=5).space  # 125 inputs


def test_z_at_the_top_of_z_range_falls_in_z():
    edges = make_edges(0.3, 3.1, (1.0, 2.25), 0.25)
    assert edges[np.flatnonzero(np.isclose(edges, 2.25))[0]] == 2.25  # Z's ends are edges exactly
    top = bin_of(np.array([2.25]), edges, (1.0, 2.25))[0]
    assert edges[top] < 2.25 == edges[top + 1]
    assert bin_of(np.array([1.0]), edges, (1.0, 2.25))[0] == np.flatnonzero(edges == 1.0)[0]


def test_tempering_representatives_at_z_plus_are_kept_and_counted_in_z():
    rng = np.random.default_rng(0)
    z = rng.uniform(0.5, 3.0, SPACE.size)
    z[:10] = 2.25  # ten inputs exactly at z+
    pt = mixed_tempering(SPACE, z, [0.5, 1.0, 2.0], ladders=2, per_replica=400, rng=rng)
    od = build_output_distribution(pt, SPACE, (1.0, 2.25), 0.2, n_replicates=0)
    at_top = od.representatives[od.representatives["z"] == 2.25]
    assert len(at_top) > 0
    assert od.in_z[at_top["bin"].to_numpy()].all()
    top_bin = int(at_top["bin"].iloc[0])
    assert od.hist[:, top_bin].sum() >= at_top["count"].sum()


def test_ancestral_representatives_at_z_plus_are_kept_in_z():
    rng = np.random.default_rng(1)
    n = 600
    index = rng.integers(0, SPACE.size, n)
    z = rng.uniform(0.5, 3.0, SPACE.size)
    z[index[:50]] = 2.25
    res = AncestralResult(
        ids=SPACE.index_to_ids(index),
        z=z[index],
        log_q=np.full((n, 1), -np.log(SPACE.size)),  # uniform proposal
        temperature=np.zeros(n, np.int16),
        block=np.arange(n) % 4,
        temperatures=np.array([1.0]),
        n_per_temperature=np.array([n]),
        seconds=0.0,
        n_scored=n,
    )
    od = ancestral_outdist(res, SPACE, (1.0, 2.25), 0.2, n_replicates=0)
    at_top = od.representatives[od.representatives["z"] == 2.25]
    assert len(at_top) > 0 and od.in_z[at_top["bin"].to_numpy()].all()


def test_pd_ab_of_zero_is_a_clear_error_not_nan_in_ratio_json():
    cfg = load_config("toy")
    ab = pd.DataFrame({"D": [0.5, 0.2, 0.1], "in_z_other": [True, True, True]})  # B never wins on A's inputs
    ba = pd.DataFrame({"D": [-0.3, 0.4, 0.1], "in_z_other": [True, True, False]})
    with pytest.raises(ValueError, match=r"PD_AB = 0 and the ratio .* is undefined: lower lambda"):
        pipeline.normalize(cfg, ab, ba, None, None)


class _NanBackward(torch.autograd.Function):
    """Identity forward, NaN gradient: a model whose scores are finite but whose input gradient is not (as a
    half-precision backward that overflows gives)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("nan"))


def test_gwg_raises_on_a_nan_gradient_instead_of_rejecting_every_move(random_gpt2):
    task, model = random_gpt2
    model.transformer.ln_f.register_forward_hook(lambda module, inputs, out: _NanBackward.apply(out))
    kernel = make_kernel("gwg", task.space, Scorer(model, task.bos_token_id))
    slots = torch.zeros((2, task.space.length), dtype=torch.long)
    with pytest.raises(FloatingPointError, match="load the model in float32"):
        kernel.evaluate(slots)


def test_spaces_too_large_for_a_float_have_a_log_size_and_a_message():
    gpt2_100 = InputSpace.from_vocab_size(length=100, vocab_size=50_256, bos_token_id=50_256)
    assert gpt2_100.log_size == pytest.approx(100 * np.log(50_256), rel=1e-12)
    assert gpt2_100.size_text() == "1.31e+470"
    with pytest.raises(ValueError, match=r"\|Ω\| = 1.31e\+470 is too large to enumerate"):
        enumerate_z(None, gpt2_100)


def test_wham_normalises_a_space_too_large_for_a_float():
    rng = np.random.default_rng(2)
    z = rng.uniform(0.5, 3.0, SPACE.size)
    pt = mixed_tempering(SPACE, z, [0.5, 1.0, 2.0], ladders=2, per_replica=200, rng=rng)
    huge = InputSpace.from_vocab_size(length=100, vocab_size=50_256, bos_token_id=50_256)
    small = build_output_distribution(pt, SPACE, (1.0, 2.25), 0.25, n_replicates=0)
    big = build_output_distribution(pt, huge, (1.0, 2.25), 0.25, n_replicates=0)
    np.testing.assert_allclose(big.ln_rho - small.ln_rho, huge.log_size - SPACE.log_size)


def test_z_is_accumulated_in_float64(random_gpt2):
    task, model = random_gpt2
    scorer = Scorer(model, task.bos_token_id)
    ids = torch.as_tensor(task.space.index_to_ids(np.arange(task.space.size)))
    z = scorer(ids)
    assert z.dtype == torch.float64
    token_lp = scorer.token_logprobs(ids)
    assert token_lp.dtype == torch.float32  # log-softmax in float32 from float32 logits
    torch.testing.assert_close(z, -token_lp.double().mean(-1), rtol=0, atol=1e-15)


def _bottom_empty_outdist(coldest_goes_below: bool, temperatures=(0.5, 1.0, 2.0)):
    """Z = [1.0, 2.25] in 5 bins with its lowest bin [1.0, 1.25] empty; the replica at the lowest temperature
    (listed last here: found by value, not position) has samples below z− or not."""
    rng = np.random.default_rng(5)
    z = rng.uniform(1.3, 3.0, SPACE.size)
    z[:3] = 0.6  # inputs below Z
    pt = mixed_tempering(SPACE, z, [0.5, 1.0, 2.0], ladders=2, per_replica=400, rng=rng)
    keep = pt.z >= 1.25 if not coldest_goes_below else np.ones(len(pt.z), bool)
    keep |= pt.replica != 0  # only the coldest replica loses its low samples
    for name in ("ids", "z", "replica", "ladder", "step"):
        setattr(pt, name, getattr(pt, name)[keep])
    od = build_output_distribution(pt, SPACE, (1.0, 2.25), 0.25, n_replicates=0)
    od.ln_rho[od.in_z & (od.edges[:-1] < 1.25)] = -np.inf  # nothing reached [1.0, 1.25]
    order = list(reversed(range(len(temperatures))))
    od.temperatures, od.hist = np.asarray(temperatures)[order], od.hist[order]
    return od


def test_empty_bins_at_the_bottom_of_z_are_refused_unless_the_coldest_replica_went_below_z_minus():
    explored = _bottom_empty_outdist(coldest_goes_below=True)
    assert check_no_empty_bins(explored) == [int(np.flatnonzero(explored.edges == 1.0)[0])]
    unexplored = _bottom_empty_outdist(coldest_goes_below=False)
    with pytest.raises(EmptyBinsError, match=r"coldest replica \(T = 0.5\) never went below z− = 1"):
        check_no_empty_bins(unexplored)
