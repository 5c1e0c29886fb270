import numpy as np
import pytest

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
