"""Fixtures of the slow tier: the toy pair's output distributions, sampled once per session."""

import pytest

from modeldiff.method.outdist import build_output_distribution
from modeldiff.method.tempering import TemperingSettings, geometric_temperatures, run_parallel_tempering
from support import OUTDIST_Z_RANGE


@pytest.fixture(scope="session")
def outdists(tiny_task, toy_scorers):
    """The toy pair's output distributions over OUTDIST_Z_RANGE by parallel tempering and WHAM (sampled once per
    session: the pipeline and annotation tests both draw from them)."""
    settings = TemperingSettings(
        temperatures=geometric_temperatures(0.02, 1.0, 12), ladders=16, steps=1200, burn_in=200, seed=7
    )
    return tuple(
        build_output_distribution(
            run_parallel_tempering(s, tiny_task.space, settings, progress=False),
            tiny_task.space,
            OUTDIST_Z_RANGE,
            bin_width=0.02,
            seed=7,
        )
        for s in toy_scorers
    )
