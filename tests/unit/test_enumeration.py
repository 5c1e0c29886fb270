import numpy as np
import pytest
import torch

from modeldiff.method.enumeration import brute_force_z, enumerate_z, exact_counts, exact_log_rho, exact_ratio
from modeldiff.method.scoring import Scorer
from modeldiff.method.space import InputSpace


@pytest.mark.parametrize("max_nodes", [3, 7, 1 << 16])
def test_prefix_shared_equals_brute_force_gpt2(random_gpt2, max_nodes):
    task, model = random_gpt2
    space = InputSpace(4, task.space.token_ids, task.bos_token_id)
    z, steps = enumerate_z(model, space, max_nodes=max_nodes, progress=False)
    ref = brute_force_z(Scorer(model, task.bos_token_id), space)
    np.testing.assert_allclose(z, ref, rtol=0, atol=1e-5)
    assert steps == sum(4**d for d in range(4))  # one step per prefix node, not V^L·L


@pytest.mark.parametrize("max_nodes", [5, 1 << 16])
def test_prefix_shared_equals_brute_force_llama(tiny_llama, max_nodes):
    """Rotary positions, grouped-query attention and a token set that is not the whole vocabulary."""
    space = InputSpace(4, (0, 2, 3, 5, 7), bos_token_id=11)
    z, _ = enumerate_z(tiny_llama, space, max_nodes=max_nodes, progress=False)
    np.testing.assert_allclose(z, brute_force_z(Scorer(tiny_llama, 11), space), rtol=0, atol=1e-5)
    z_sum, _ = enumerate_z(tiny_llama, space, output="sum_nll", progress=False)
    np.testing.assert_allclose(z_sum, z * 4, rtol=1e-6)


def test_enumeration_refuses_huge_spaces(random_gpt2):
    task, model = random_gpt2
    with pytest.raises(ValueError, match="too large to enumerate"):
        enumerate_z(model, InputSpace(40, task.space.token_ids, task.bos_token_id))


def test_exact_counts_and_ratio_by_hand():
    z_a = np.array([1.0, 1.2, 1.5, 3.0, 1.1])
    z_b = np.array([1.1, 1.0, 3.0, 1.2, 1.1])
    c = exact_counts(z_a, z_b, (0.9, 2.0))
    # X_A = {0,1,2,4}, X_B = {0,1,3,4}, X_AB = {0,1,4}; D = [-.1, .2, -1.5, 1.8, 0]
    assert c == dict(X_A=4, X_B=4, X_AB=3, PD_AB=2, PA_AB=1, PA_BA=1, PD_BA=2)
    r = exact_ratio(z_a, z_b, (0.9, 2.0))
    assert r["terms"] == pytest.approx(dict(PD_AB=2 / 3, PA_AB=1 / 3, PA_BA=1 / 3, PD_BA=2 / 3))
    assert r["ratio"] == pytest.approx([1.0, 0.5, 0.5, 1.0])
    assert exact_counts(z_a, z_b, (0.9, 2.0), lam=0.15)["PD_AB"] == 1


def test_exact_log_rho_counts_bins():
    lr = exact_log_rho(np.array([0.1, 0.15, 0.7]), np.array([0.0, 0.5, 1.0, 1.5]))
    np.testing.assert_allclose(lr[:2], np.log([2, 1]))
    assert lr[2] == -np.inf


def _strong_gpt2(n_layer: int, **flags):
    """A random GPT-2 over 3 tokens (+BOS) whose attention scores are O(1), so that a wrong scaling shows in z."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=4, n_positions=8, n_embd=16, n_layer=n_layer, n_head=2, bos_token_id=3, **flags)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight.mul_(30.0)
    return model


@pytest.mark.parametrize(
    "flags",
    [{}, {"scale_attn_by_inverse_layer_idx": True}, {"scale_attn_weights": False}],
    ids=["default", "inverse_layer_idx", "unscaled"],
)
def test_prefix_shared_equals_brute_force_with_layers_length_and_threads(flags):
    """Three layers, L = 6, two worker threads, and GPT-2's attention-scaling flags."""
    model = _strong_gpt2(3, **flags)
    space = InputSpace(6, (0, 1, 2), bos_token_id=3)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # enumerate_z runs one worker per thread on the CPU
    try:
        z, _ = enumerate_z(model, space, progress=False)
    finally:
        torch.set_num_threads(threads)
    ref = brute_force_z(Scorer(model, 3), space)
    np.testing.assert_allclose(z, ref, rtol=0, atol=2e-5)
    if flags:  # the flag changes z by far more than the tolerance, so a wrong scaling could not pass
        unflagged = brute_force_z(Scorer(_strong_gpt2(3), 3), space)
        assert np.abs(ref - unflagged).max() > 50 * 2e-5


def test_a_layer_outside_the_attention_interface_is_refused():
    """A hybrid model whose one layer computes attention by itself would let sibling children see each other."""
    model = _strong_gpt2(2)
    attn = model.transformer.h[1].attn
    attn.forward = lambda hidden_states, *args, **kwargs: (hidden_states * 0, None)  # never calls the interface
    with pytest.raises(RuntimeError, match="1 of the 2 attention layers of GPT2LMHeadModel went through"):
        enumerate_z(model, InputSpace(4, (0, 1, 2), bos_token_id=3), progress=False)
