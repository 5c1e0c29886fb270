"""Several models against one reference (paper Appendix B, Eq. 14–17) on the enumerable toy, against exact
enumeration: one reference sampled once, its draws shared by every model, each row on the common scale 1/|X_A|."""

import copy

import pytest

from modeldiff import pipeline
from modeldiff.config import load_config
from modeldiff.method.enumeration import enumerate_z, exact_counts
from modeldiff.method.normalize import multi_model_terms
from modeldiff.method.toy import make_toy_model, train_toy_model
from modeldiff.method.uncertainty import MULTI_TERMS, multi_model_uncertainty
from modeldiff.models.derive import add_weight_noise
from support import OUTDIST_Z_RANGE as Z_RANGE
from support import assert_within_sigma, toy_loaded

N_SAMPLES, N_DRAWS = 16_000, 20_000
CONFIG = (
    f"sampler.method=ancestral sampler.ancestral.temperatures=[1.0,1.5] sampler.ancestral.n_samples={N_SAMPLES} "
    "sampler.ancestral.n_blocks=20 sampler.ancestral.batch_size=800 "
    f"cross_eval.n_draws={N_DRAWS} uncertainty.n_replicates=40 z_range=[{Z_RANGE[0]},{Z_RANGE[1]}] seed=3"
)


@pytest.fixture(scope="module")
def family(tiny_task, toy_pair):
    """The reference A and three others: another architecture (B), a noise copy of B (C) and a third, independently
    trained model (D)."""
    a, b = toy_pair
    c = add_weight_noise(copy.deepcopy(b), 0.1, seed=1, relative=True)
    d = make_toy_model(tiny_task, n_embd=32, n_head=2, n_layer=2, seed=5)
    train_toy_model(d, tiny_task, steps=100, seed=5, progress=False)
    return {"A": a, "B": b, "C": c, "D": d}


def test_several_models_against_one_reference_match_exact_enumeration(tiny_task, family):
    cfg = load_config("toy", CONFIG)
    loaded = {k: toy_loaded(m, tiny_task, f"toy:{k.lower()}") for k, m in family.items()}
    ref = loaded["A"]
    od_a = pipeline.sample_outdist(cfg, ref)  # once, for every row
    forward, own = {}, {}
    for name in "BCD":
        x = loaded[name]
        ab = pipeline.cross_eval(cfg, od_a, ref, x, "A")
        od_x = pipeline.sample_outdist(cfg, x)
        ba = pipeline.cross_eval(cfg, od_x, x, ref, "B")
        forward[name] = (ab, pipeline.cross_eval_replicates(cfg, od_a, ab, "A"))
        own[name] = (ba, pipeline.cross_eval_replicates(cfg, od_x, ba, "B"))
    # the reference's draws are one set, whichever model scores them
    assert len({tuple(ab["representative"]) for ab, _ in forward.values()}) == 1
    rows = multi_model_uncertainty(forward, own, 0.0, 0.95, int(cfg.seed))
    table = multi_model_terms(
        {n: (ab["D"], ab["in_z_other"]) for n, (ab, _) in forward.items()},
        {n: (ba["D"], ba["in_z_other"]) for n, (ba, _) in own.items()},
    ).set_index("model")

    z = {k: enumerate_z(m, tiny_task.space, progress=False)[0] for k, m in family.items()}
    for name, row in rows.items():
        c = exact_counts(z["A"], z[name], Z_RANGE)
        # Eq. 14–17: every term counts over Ω per likely input of A, |X_A|
        exact = {k: c[k.replace("X", "B")] / c["X_A"] for k in MULTI_TERMS}
        exact_ratio = [exact[k] / exact["PD_AX"] for k in MULTI_TERMS]
        for i, k in enumerate(MULTI_TERMS):
            assert row["terms"][k] == pytest.approx(table.loc[name, k], rel=1e-12)  # the point is Appendix B's
            sigma = row["std"]["terms"][k]
            print(f"{name} {k}: sampled {row['terms'][k]:.4f} exact {exact[k]:.4f} σ {sigma:.4f}")
            assert 0 < sigma < 0.02  # the test has power: 4σ < 0.08 on terms of 0.1–1
            assert_within_sigma(row["terms"][k], exact[k], sigma, what=f"{name} {k}")
            if i:
                assert_within_sigma(row["ratio"][i], exact_ratio[i], row["std"]["ratio"][i], what=f"{name} ratio {k}")
                lo, hi = row["ci"]["ratio"][i]
                assert lo <= row["ratio"][i] <= hi
    # the rows share a scale: the same model scored twice would give the same row, and A→X terms of every row add up
    # to at most A's share of likely inputs (1)
    for row in rows.values():
        assert row["terms"]["PD_AX"] + row["terms"]["PA_AX"] <= 1 + 1e-12
