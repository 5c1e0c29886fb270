"""The whole chain with ancestral importance sampling (pipeline.sample_outdist -> cross_eval -> normalize) on the
enumerable toy pair, against the exact ratio."""

import numpy as np

from modeldiff import pipeline
from modeldiff.config import load_config
from modeldiff.method.ancestral import balance_log_weights
from modeldiff.method.enumeration import exact_ratio, in_range
from support import OUTDIST_Z_RANGE as Z_RANGE
from support import assert_within_sigma, brute_force_log_q, term_sigma, toy_loaded

TEMPERATURES = [1.0, 1.5]
N_SAMPLES, N_DRAWS = 32_000, 40_000
CONFIG = (
    f"sampler.method=ancestral sampler.ancestral.temperatures=[{TEMPERATURES[0]},{TEMPERATURES[1]}] "
    f"sampler.ancestral.n_samples={N_SAMPLES} sampler.ancestral.n_blocks=20 sampler.ancestral.batch_size=800 "
    f"cross_eval.n_draws={N_DRAWS} uncertainty.n_replicates=40 z_range=[{Z_RANGE[0]},{Z_RANGE[1]}] seed=3"
)


def sampling_sigma(log_q, numerator, denominator, term):
    """Std of the chain's term in the limit of infinite draws, T̂ = Σ_i w_i a_i / Σ_i w_i c_i over the N samples
    (draws pick x ∝ its summed weight), by the delta method: Σ_k N_k Var_k(w (a − T c)) / (N Σ_Ω c)², exactly
    over Ω from every q_k(x) (N_k = N/K samples from q_k)."""
    w = np.exp(balance_log_weights(log_q, np.ones(log_q.shape[1])))
    y = w * (numerator - term * denominator)
    q = np.exp(log_q)
    var = sum(N_SAMPLES / q.shape[1] * (q[:, k] @ y**2 - (q[:, k] @ y) ** 2) for k in range(q.shape[1]))
    return np.sqrt(var) / (N_SAMPLES * denominator.sum())


def test_ancestral_chain_matches_the_exact_ratio(tiny_task, toy_pair, toy_exact_z):
    cfg = load_config("toy", CONFIG)
    a, b = (toy_loaded(m, tiny_task, ref) for m, ref in zip(toy_pair, ("toy:a", "toy:b")))
    od_a, od_b = pipeline.sample_outdist(cfg, a), pipeline.sample_outdist(cfg, b)
    ab, ba = pipeline.cross_eval(cfg, od_a, a, b, "A"), pipeline.cross_eval(cfg, od_b, b, a, "B")
    replicates = pipeline.cross_eval_replicates(cfg, od_a, ab, "A"), pipeline.cross_eval_replicates(cfg, od_b, ba, "B")
    sampled, _ = pipeline.normalize(cfg, ab, ba, *replicates)

    z_a, z_b = toy_exact_z
    exact = exact_ratio(z_a, z_b, Z_RANGE)
    omega = tiny_task.space.index_to_ids(np.arange(tiny_task.space.size))
    log_q = [brute_force_log_q(m, tiny_task.space, omega, TEMPERATURES) for m in toy_pair]
    d = z_a.astype(np.float64) - z_b
    sides = {  # term: (sampling side, its z, the other's z, numerator mask)
        "PD_AB": (0, z_a, z_b, d < 0),
        "PA_AB": (0, z_a, z_b, d > 0),
        "PA_BA": (1, z_b, z_a, d < 0),
        "PD_BA": (1, z_b, z_a, d > 0),
    }
    for term, (side, src, other, mask) in sides.items():
        t = exact["terms"][term]
        in_src = in_range(src, Z_RANGE)
        s1 = sampling_sigma(log_q[side], in_src & mask, in_src & in_range(other, Z_RANGE), t)
        s2 = term_sigma(src, other, t, mask, N_DRAWS, Z_RANGE)
        sigma = np.hypot(s1, s2)  # stage 1's samples and stage 2's draws are independent sources of error
        print(f"{term}: sampled {sampled['terms'][term]:.4f} exact {t:.4f} σ {sigma:.4f} (stage 1 {s1:.4f})")
        assert sigma < 0.01  # the test has power: 4σ < 0.04
        assert_within_sigma(sampled["terms"][term], t, sigma, what=term)
