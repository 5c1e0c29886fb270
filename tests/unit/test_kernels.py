"""Detailed balance: on an enumerable space, a kernel's stationary law at temperature T must be
exp(−z/T)/Z. Many independent chains, each recorded once after mixing, give i.i.d. draws, so a
plain chi-square goodness-of-fit test applies."""

import numpy as np
import pytest
import torch

from modeldiff.config import ConfigError, load_config
from modeldiff.method import KERNELS
from modeldiff.method.kernels import ChainState, Kernel, make_kernel, register_kernel
from modeldiff.method.scoring import Scorer
from modeldiff.method.space import InputSpace
from modeldiff.method.tempering import TemperingSettings, _grid_uniforms, run_parallel_tempering

N_CHAINS, N_STEPS = 6000, 60
# every registered kernel, and a user's own one named as `sampler.kernel=module:attr` would name it
ALL_KERNELS = [*sorted(KERNELS), "support.kernels:UniformResample"]
CHI2_999 = {63: 103.4, 26: 54.05}  # 0.999 quantiles of chi-square by degrees of freedom


def run_independent_chains(kernel, space, temperature, seed=0):
    gen = torch.Generator().manual_seed(seed)
    state = ChainState(space.random_slots(N_CHAINS, gen), torch.zeros(0))
    kernel.init(state)
    beta = torch.full((N_CHAINS,), 1.0 / temperature)
    for _ in range(N_STEPS):
        kernel.step(state, beta, _grid_uniforms(gen, 1, N_CHAINS, kernel.uniform_shapes(space), slice(None)))
    return space.ids_to_index(space.slots_to_ids(state.slots).numpy())


def chi_square(index, z_all, temperature):
    logp = -z_all.astype(np.float64) / temperature
    p = np.exp(logp - logp.max())
    p /= p.sum()
    observed = np.bincount(index, minlength=len(p))
    expected = p * len(index)
    return float(((observed - expected) ** 2 / expected).sum()), len(p) - 1


@pytest.fixture
def setting(random_gpt2):
    task, model = random_gpt2  # Ω = 4^3 = 64 states
    space = task.space
    scorer = Scorer(model, task.bos_token_id)
    z_all = scorer.score_numpy(space.index_to_ids(np.arange(space.size)))
    temperature = 0.5 * float(z_all.std())  # cold enough that π is far from uniform
    return space, scorer, z_all, temperature


@pytest.mark.parametrize("name", ALL_KERNELS)
def test_kernel_keeps_tempered_target(name, setting):
    space, scorer, z_all, temperature = setting
    kernel = make_kernel(name, space, scorer)
    stat, dof = chi_square(run_independent_chains(kernel, space, temperature), z_all, temperature)
    assert stat < CHI2_999[dof], f"{name}: chi2={stat:.1f} on {dof} dof"


def test_chi_square_detects_a_broken_kernel(setting):
    """Negative control: the same test rejects a kernel that skips the MH correction."""
    space, scorer, z_all, temperature = setting

    @register_kernel("_always_accept")
    class AlwaysAccept(Kernel):
        uniform_shapes = staticmethod(lambda space: {"position": 1, "token": 1})

        def step(self, state, beta, u):
            rows = torch.arange(state.slots.shape[0])
            pos = (u["position"][:, 0] * space.length).long()
            state.slots[rows, pos] = (u["token"][:, 0] * space.n_tokens).long()
            state.z = self.score(state.slots)
            return torch.ones(len(rows), dtype=torch.bool)

    try:
        kernel = make_kernel("_always_accept", space, scorer)
        stat, dof = chi_square(run_independent_chains(kernel, space, temperature), z_all, temperature)
        assert stat > 10 * CHI2_999[dof]
    finally:
        KERNELS.unregister("_always_accept")


def test_unknown_kernel_is_a_clear_error(setting):
    space, scorer, _, _ = setting
    with pytest.raises(ValueError, match="unknown sampler.kernel 'nope'; available:"):
        make_kernel("nope", space, scorer)


@pytest.mark.parametrize("name", ALL_KERNELS)
def test_kernel_on_a_restricted_token_set(name, random_gpt2):
    """Allowed tokens that are not 0..V-1 (3 of the 4 ids): still detailed balance, ids stay allowed."""
    task, model = random_gpt2
    space = InputSpace(3, (0, 2, 3), task.bos_token_id)
    scorer = Scorer(model, task.bos_token_id)
    z_all = scorer.score_numpy(space.index_to_ids(np.arange(space.size)))
    temperature = 0.5 * float(z_all.std())
    stat, dof = chi_square(
        run_independent_chains(make_kernel(name, space, scorer), space, temperature), z_all, temperature
    )
    assert stat < CHI2_999[dof]


def test_a_plug_in_kernel_is_named_in_the_config(random_gpt2):
    """`sampler.kernel=module:attr` passes the config's check and parallel tempering runs it; a name that is
    neither registered nor module:attr is refused at load time."""
    task, model = random_gpt2
    cfg = load_config(
        "toy",
        "sampler.kernel=support.kernels:UniformResample sampler.steps=20 sampler.burn_in=5 "
        "sampler.ladders=2 sampler.n_temperatures=3",
    )
    settings = TemperingSettings.from_config(cfg)
    result = run_parallel_tempering(Scorer(model, task.bos_token_id), task.space, settings, progress=False)
    assert len(result.z) == 15 * 3 * 2 and 0 < result.acceptance.mean() <= 1
    with pytest.raises(ConfigError, match="unknown sampler.kernel 'UniformResample'; available: mh_uniform"):
        load_config("toy", "sampler.kernel=UniformResample")
