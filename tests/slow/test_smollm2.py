"""SmolLM2 end to end: the documented `mlflow run . -e main -P config=smollm2` chain (SmolLM2-135M-Instruct
against a copy with N(0, 1e-3²) added to every weight), run in-process on a temporary store.

The paper's plagiarism pattern (Sec. 4.3, Fig. 4): the original assigns the lower NLL on the copy's own
representative inputs as well as on its own (the copy's likely inputs are the original's likely inputs, made a
little less likely by the noise). Two independent models would each win on their own inputs instead. At this
smoke scale the draws repeat a few dozen distinct inputs and sticky ladders, so how the margin splits between the
two sides varies from run to run (55% / 87% and 74% / 64% in two runs whose floating-point thread settings
differed), and `plagiarism_check` on the same runs names the copy from the weights."""

import mlflow
import numpy as np
import pytest

from entrypoints import main, plagiarism_check
from modeldiff.analysis.plagiarism import side_statistic
from modeldiff.platform import tracking

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture
def store(tmp_path, monkeypatch, smollm2_cache):
    monkeypatch.setenv("MODELDIFF_CACHE", str(smollm2_cache))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def test_smollm2_against_its_noise_copy_shows_the_plagiarism_pattern(store):
    runs = main.main(["--config", "smollm2"])
    ratio = tracking.load_json(runs["normalize"], "normalize", "ratio.json")
    ab, ba = tracking.load_draws(runs["cross_eval_AB"]), tracking.load_draws(runs["cross_eval_BA"])
    assert ratio["counts"]["n_A"] == len(ab) == 2000 and ratio["counts"]["n_B"] == len(ba) == 2000

    # D = z_original − z_copy < 0 on most draws over both sides. Draws of one input share their sign, so the
    # evidence is counted in effective distinct inputs (side_statistic): at this scale only ~20 in all, too few for
    # a significant black-box verdict on its own (the plagiarism check below settles it with the weights).
    assert ba.drop_duplicates(subset=["text"]).shape[0] >= 30
    original_side, copy_side = side_statistic(ab, "A"), side_statistic(ba, "B")
    n = original_side.n_effective + copy_side.n_effective
    won = (1 - original_side.other_wins) * original_side.n_effective + copy_side.other_wins * copy_side.n_effective
    assert won / n > 0.5, (original_side, copy_side)
    assert np.median(np.concatenate([ab["D"], ba["D"]])) < 0

    # the plagiarism check reuses the chain's runs and names the copy from the weights, whichever side it is on
    checks = "plagiarism.permutations=19 plagiarism.simulations=19"
    rep = plagiarism_check.main(
        ["--config", "smollm2", "--overrides", checks, "--model_a", "noise:1e-3:smollm2", "--model_b", "smollm2"]
    )
    assert rep["verdict"] == "suspected_copy_of" and rep["copy_model"] == "noise:1e-3:smollm2", rep["reason"]
    assert rep["direction_evidence"] == "weight_energy" and rep["white_box"]["direction_z"] < -10
    assert rep["white_box"]["p_value"] < 1e-100 and rep["white_box"]["structure_p_value"] > 1e-3
    assert {rep["runs"][f"sample_outdist_{s}"] for s in "AB"} == {runs["sample_outdist_A"], runs["sample_outdist_B"]}
    # every representative input carries its decoded text, scored by both models
    assert ba["text"].str.len().gt(0).all() and np.isfinite(ba[["z_A", "z_B"]].to_numpy()).all()
