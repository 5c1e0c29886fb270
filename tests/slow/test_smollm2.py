"""SmolLM2 end to end: the documented `mlflow run . -e main -P config=smollm2` chain (SmolLM2-135M-Instruct
against a copy with N(0, 1e-3²) added to every weight), run in-process on a temporary store.

At σ = 1e-3 the copy is in the black box's near-identity regime (modeldiff.analysis.plagiarism): each model wins on
its own likely inputs by selection, exactly as independent models would (measured with 772 effective inputs: the
original wins on 47% of them), so the evidence is that the two functions nearly coincide, |D| small against the spread
of z. The paper's asymmetry (the original wins on the copy's inputs too) is an effect of larger σ. The preset samples
by ancestral importance sampling, so the draws rest on hundreds of independent inputs and the ratio has intervals."""

import math

import mlflow
import numpy as np
import pytest

from entrypoints import main, plagiarism_check
from modeldiff.analysis.plagiarism import Thresholds, black_box
from modeldiff.platform import tracking

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture
def store(tmp_path, monkeypatch, smollm2_cache):
    monkeypatch.setenv("MODELDIFF_CACHE", str(smollm2_cache))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def test_smollm2_against_its_noise_copy_nearly_coincides_and_the_weights_name_the_copy(store):
    runs = main.main(["--config", "smollm2"])
    ratio = tracking.load_json(runs["normalize"], "normalize", "ratio.json")
    ab, ba = tracking.load_draws(runs["cross_eval_AB"]), tracking.load_draws(runs["cross_eval_BA"])
    assert ratio["counts"]["n_A"] == len(ab) == 2000 and ratio["counts"]["n_B"] == len(ba) == 2000

    # every term has a 95% interval around its estimate, from 32 independent blocks of samples a side
    for i, term in enumerate(("PD_AB", "PA_AB", "PA_BA", "PD_BA")):
        lo, hi = ratio["ci"]["terms"][term]
        assert lo <= ratio["terms"][term] <= hi and math.isfinite(lo) and math.isfinite(hi), (term, ratio["ci"])
        if i:
            rlo, rhi = ratio["ci"]["ratio"][i]
            assert 0 < rlo <= ratio["ratio"][i] <= rhi, (term, ratio["ci"]["ratio"])
    assert ratio["counts"]["n_units_A"] == ratio["counts"]["n_units_B"] == 32

    # the draws rest on hundreds of distinct inputs (tempering's preset drew 33–67), and the black box, counting
    # effective inputs, finds the two functions nearly coinciding: the median |D| a small share of z's spread
    bb = black_box(ab, ba, Thresholds())
    assert min(bb.a.n_distinct, bb.b.n_distinct) >= 300 and bb.n_effective >= 300, (bb.a, bb.b, bb.n_effective)
    assert bb.near_identical and bb.relative_D_interval[1] <= 0.25 and not bb.distinct, bb
    assert bb.dominated is None  # no dominance at σ = 1e-3: selection outweighs the original's optimum

    # the plagiarism check reuses the chain's runs and names the copy from the weights, whichever side it is on
    checks = "plagiarism.permutations=19 plagiarism.simulations=19"
    rep = plagiarism_check.main(
        ["--config", "smollm2", "--overrides", checks, "--model_a", "noise:1e-3:smollm2", "--model_b", "smollm2"]
    )
    assert rep["verdict"] == "suspected_copy_of" and rep["copy_model"] == "noise:1e-3:smollm2", rep["reason"]
    assert rep["direction_evidence"] == "weight_energy" and rep["white_box"]["direction_z"] < -10
    assert rep["white_box"]["p_value"] < 1e-100 and rep["white_box"]["structure_p_value"] > 1e-3
    assert rep["black_box"]["near_identical"] and rep["signals"]["black_box"] == "copy"
    assert {rep["runs"][f"sample_outdist_{s}"] for s in "AB"} == {runs["sample_outdist_A"], runs["sample_outdist_B"]}
    # every representative input carries its decoded text, scored by both models
    assert ba["text"].str.len().gt(0).all() and np.isfinite(ba[["z_A", "z_B"]].to_numpy()).all()
