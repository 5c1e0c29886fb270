"""SmolLM2 end to end: the documented `mlflow run . -e main -P config=smollm2` chain (SmolLM2-135M-Instruct
against a copy with N(0, 1e-3²) added to every weight), run in-process on a temporary store.

The paper's plagiarism pattern (Sec. 4.3): on the copy's own representative inputs, the original assigns
the lower NLL almost everywhere (the copy's likely inputs are the original's likely inputs, made a little
less likely by the noise). Two independent models would each win on their own inputs instead."""
import mlflow
import numpy as np
import pytest

from entrypoints import main
from modeldiff import tracking

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

    # The copy's draws: D = z_original − z_copy < 0 on most of them. The draws repeat a few dozen distinct
    # inputs; with ~50 effectively independent ones a coin-flip fraction would have a standard error of 0.07,
    # so 0.7 is three of them above "no preference" (the seeded run gives 0.87).
    distinct = ba.drop_duplicates(subset=["text"])
    assert len(distinct) >= 30
    copy_side = float((ba["D"] < 0).mean())
    assert copy_side >= 0.7, f"the original wins on only {copy_side:.2f} of the copy's representative inputs"
    assert np.median(ba["D"]) < 0 and ratio["terms"]["PD_BA"] <= 0.3
    # every representative input carries its decoded text, scored by both models
    assert ba["text"].str.len().gt(0).all() and np.isfinite(ba[["z_A", "z_B"]].to_numpy()).all()
