"""Checkpoint and resume of parallel tempering: a run resumed from any checkpoint, by one process or
by slices of the ladders, records exactly what the uninterrupted run records."""

import numpy as np
import pytest

from modeldiff.method.tempering import (
    Checkpointing,
    TemperingSettings,
    geometric_temperatures,
    merge_checkpoints,
    run_parallel_tempering,
)

SETTINGS = dict(temperatures=geometric_temperatures(0.05, 1.0, 4), ladders=5, steps=120, burn_in=30, thin=2)


def run(scorer, space, ladders=None, resume=None, every=25, **over):
    saved = []
    settings = TemperingSettings(**{**SETTINGS, **over})
    pt = run_parallel_tempering(
        scorer,
        space,
        settings,
        ladders=ladders,
        progress=False,
        checkpointing=Checkpointing(every, saved.append, resume),
    )
    return pt, saved


def assert_same_records(a, b):
    for name in ("ids", "z", "replica", "ladder", "step", "acceptance", "swap_acceptance", "round_trips"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.mark.parametrize("at", [0, 1, 3, 4])  # before burn-in ends, just after, late, after the last step
def test_resume_equals_the_uninterrupted_run(tiny_task, toy_scorers, at):
    full, saved = run(toy_scorers[0], tiny_task.space)
    assert [c["step"] for c in saved] == [25, 50, 75, 100, 120]  # the last step too: a later failure keeps it
    resumed, _ = run(toy_scorers[0], tiny_task.space, resume=saved[at])
    assert_same_records(full, resumed)
    assert resumed.n_scored == full.n_scored


def test_checkpoints_of_ladder_slices_merge_and_resume_with_another_split(tiny_task, toy_scorers):
    """Two 'processes' (ladders 0-1 and 2-4) checkpoint; one process resumes the merged checkpoint."""
    full, _ = run(toy_scorers[0], tiny_task.space)
    _, left = run(toy_scorers[0], tiny_task.space, ladders=slice(0, 2))
    _, right = run(toy_scorers[0], tiny_task.space, ladders=slice(2, 5))
    merged = merge_checkpoints([left[2], right[2]])
    resumed, _ = run(toy_scorers[0], tiny_task.space, resume=merged)
    assert_same_records(full, resumed)
    part, _ = run(toy_scorers[0], tiny_task.space, ladders=slice(1, 4), resume=merged)
    np.testing.assert_array_equal(part.z, full.z[np.isin(full.ladder, [1, 2, 3])])


def test_gwg_resumes_with_its_cache_rebuilt(tiny_task, toy_scorers):
    full, saved = run(toy_scorers[0], tiny_task.space, kernel="gwg", steps=60, burn_in=10)
    resumed, _ = run(toy_scorers[0], tiny_task.space, resume=saved[0], kernel="gwg", steps=60, burn_in=10)
    assert len(resumed.z) == len(full.z)
    np.testing.assert_allclose(resumed.z, full.z, atol=1e-5)


def test_a_checkpoint_of_other_settings_is_refused(tiny_task, toy_scorers):
    _, saved = run(toy_scorers[0], tiny_task.space)
    with pytest.raises(ValueError, match="other sampler settings"):
        run(toy_scorers[0], tiny_task.space, resume=saved[0], steps=200)
