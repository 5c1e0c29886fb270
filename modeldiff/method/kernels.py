"""MCMC kernels for the tempered targets π_T(x) ∝ exp(−z(x)/T), behind one interface.

A kernel updates a batch of chains in place, each at its own inverse temperature, and must keep
π_T invariant (detailed balance; tests/test_kernels.py checks it on an enumerable space).
Kernels are registered by name in `modeldiff.method.KERNELS` so configs can pick one (`sampler.kernel`); a
user's own kernel is `sampler.kernel=mypkg.kernels:MyKernel` (a Kernel subclass), or registered with
`@register_kernel("name")`. Every kernel decides with the one Metropolis–Hastings test, `mh_accept`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from . import KERNELS
from .space import InputSpace


def register_kernel(name: str):
    def wrap(cls):
        cls.name = name
        return KERNELS.register(name, cls)

    return wrap


def make_kernel(name: str, space: InputSpace, scorer, **params) -> Kernel:
    cls = KERNELS.get(name)
    if not (isinstance(cls, type) and issubclass(cls, Kernel)):
        raise ValueError(f"sampler.kernel {name!r} is not a Kernel subclass (modeldiff.method.kernels.Kernel)")
    return cls(space, scorer, **params)


def mh_accept(log_ratio: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The Metropolis–Hastings decision: accept where log u < log(π(x')q(x|x') / π(x)q(x'|x)), in the ratio's dtype."""
    return torch.log(u.to(log_ratio.dtype)) < log_ratio


@dataclass
class ChainState:
    """Chains as slots (indices into the allowed token set) with their current z, plus whatever
    per-chain quantities a kernel caches about the current state (first dimension = chain)."""

    slots: torch.Tensor  # [n, L] long
    z: torch.Tensor  # [n] float32
    cache: dict[str, torch.Tensor] = field(default_factory=dict)

    def select(self, idx) -> ChainState:
        return ChainState(self.slots[idx], self.z[idx], {k: v[idx] for k, v in self.cache.items()})

    def tensors(self) -> list[torch.Tensor]:
        return [self.slots, self.z, *self.cache.values()]

    def swap(self, a: torch.Tensor, b: torch.Tensor):
        """Exchange the states of chains a[j] and b[j] (replica swaps): configuration, z and cache move together."""
        for t in self.tensors():
            t[a], t[b] = t[b].clone(), t[a].clone()

    def update(self, accepted: torch.Tensor, proposal: ChainState):
        """Take the proposal's state where accepted."""
        for mine, new in zip(self.tensors(), proposal.tensors()):
            mine[accepted] = new[accepted]


class Kernel(ABC):
    name = "abstract"

    def __init__(self, space: InputSpace, scorer):
        self.space = space
        self.scorer = scorer

    def score(self, slots: torch.Tensor) -> torch.Tensor:
        return self.scorer(self.space.slots_to_ids(slots))

    def evaluate(self, slots: torch.Tensor) -> ChainState:
        """The chain state of configurations `slots`: z, plus whatever the kernel caches about them."""
        return ChainState(slots, self.score(slots))

    def init(self, state: ChainState):
        """Fill z (and any cache) for freshly placed or restored chains."""
        fresh = self.evaluate(state.slots)
        state.z, state.cache = fresh.z, fresh.cache

    @abstractmethod
    def step(self, state: ChainState, beta: torch.Tensor, uniforms: dict[str, torch.Tensor]) -> torch.Tensor:
        """One update of every chain (β = 1/T per chain), in place; returns the accepted mask.

        Random numbers come in `uniforms` (drawn by the caller for *all* chains, so a process
        that runs a slice of the chains makes the same moves as one that runs them all)."""

    @staticmethod
    def uniform_shapes(space: InputSpace) -> dict[str, int]:
        """Names of the U(0,1) streams a step consumes per chain, and how many per chain."""
        return {}


@register_kernel("mh_uniform")
class MHUniform(Kernel):
    """Change one uniformly chosen position to a uniformly chosen *other* allowed token.

    The proposal is symmetric (q(x→y) = 1/(L(V−1)) both ways), so the MH ratio is exp(−β Δz)."""

    @staticmethod
    def uniform_shapes(space):
        return {"position": 1, "token": 1, "accept": 1}

    def step(self, state, beta, uniforms):
        n, length = state.slots.shape
        v = self.space.n_tokens
        pos = (uniforms["position"][:, 0] * length).long().clamp_(max=length - 1)
        shift = 1 + (uniforms["token"][:, 0] * (v - 1)).long().clamp_(max=v - 2)  # never the current token
        rows = torch.arange(n)
        proposal = state.slots.clone()
        proposal[rows, pos] = (state.slots[rows, pos] + shift) % v
        z_new = self.score(proposal)
        accepted = mh_accept(-beta * (z_new - state.z), uniforms["accept"][:, 0])
        state.slots[accepted] = proposal[accepted]
        state.z[accepted] = z_new[accepted]
        return accepted


def _categorical(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One draw per row from softmax(logits) by inverting the CDF at u (float64, so the drawn law is
    the softmax to ~1e-15, and the MH ratio that uses log-softmax stays exact)."""
    p = torch.softmax(logits.double(), dim=-1).cumsum(-1)
    idx = torch.searchsorted(p, (u.double() * p[:, -1:]).contiguous())
    return idx.squeeze(-1).clamp_(max=logits.shape[-1] - 1)


def _mask_current(logits: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Forbid proposing the current token at each position (a no-op move wastes a forward pass)."""
    return logits.scatter(-1, slots.unsqueeze(-1), float("-inf"))


@register_kernel("gwg")
class GibbsWithGradients(Kernel):
    """Gibbs-with-Gradients (Grathwohl et al. 2021) for π ∝ exp(−βz).

    From the one-hot gradient ∂z/∂onehot(x) (one forward and one backward pass), the change of z on
    setting position i to token v is estimated to first order as Δ(i, v) = g(i, v) − g(i, x_i); the
    proposal is softmax(−β·scale·Δ) over all (i, v ≠ x_i) (scale 1/2 is the paper's locally balanced
    choice). The MH ratio needs the reverse proposal from x', i.e. x' 's gradient: computed when x' is
    scored and cached with the chain, so each step costs one forward+backward pass. The cache holds
    Δ, which does not depend on β, so it stays valid when replicas swap states."""

    def __init__(self, space, scorer, scale: float = 0.5):
        super().__init__(space, scorer)
        if scale <= 0:
            raise ValueError(f"gwg kernel_params.scale must be > 0, got {scale}")
        self.scale = float(scale)
        self.allowed = space.columns()
        scorer.model.requires_grad_(False)  # only ∂z/∂inputs is needed: no weight gradients

    @staticmethod
    def uniform_shapes(space):
        return {"position": 1, "token": 1, "accept": 1}

    def evaluate(self, slots: torch.Tensor) -> ChainState:
        z, g = self.scorer.with_onehot_gradient(self.space.slots_to_ids(slots), self.allowed)
        if not (torch.isfinite(g).all() and torch.isfinite(z).all()):  # NaN proposals would reject every move
            raise FloatingPointError(
                "gwg: the model's z or its gradient with respect to the input is NaN or infinite, so every move "
                "would be rejected: load the model in float32 (model.dtype=float32) or use sampler.kernel=lm_proposal"
            )
        delta = g.sub_(g.gather(-1, slots.unsqueeze(-1)))
        # +inf at the current tokens: their proposal logit −β·scale·Δ is then −inf, with no masking pass per step
        delta.scatter_(-1, slots.unsqueeze(-1), float("inf"))
        n, length = slots.shape
        # log Σ_v exp(−β·scale·Δ(i, v)) per position, for the β in "lse_beta" (NaN: not computed yet)
        return ChainState(
            slots, z, {"delta": delta, "lse": torch.zeros(n, length), "lse_beta": torch.full((n,), float("nan"))}
        )

    def _position_lse(self, delta: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(delta * (-(beta * self.scale))[:, None, None], dim=-1)

    def step(self, state, beta, uniforms):
        n, length = state.slots.shape
        rows = torch.arange(n)
        cache, coef = state.cache, -(beta * self.scale)
        # the per-position normalisers were computed when this state was proposed; redo them only for chains
        # whose state came by a replica swap from another temperature
        stale = cache["lse_beta"] != beta
        if stale.any():
            cache["lse"][stale] = self._position_lse(cache["delta"][stale], beta[stale])
            cache["lse_beta"][stale] = beta[stale]
        pos = _categorical(cache["lse"], uniforms["position"])
        row = cache["delta"][rows, pos] * coef[:, None]  # [n, V']
        tok = _categorical(row, uniforms["token"])
        log_q_fwd = row[rows, tok] - torch.logsumexp(cache["lse"], dim=-1)

        slots = state.slots.clone()
        slots[rows, pos] = tok
        proposal = self.evaluate(slots)
        proposal.cache["lse"] = self._position_lse(proposal.cache["delta"], beta)
        proposal.cache["lse_beta"] = beta.clone()
        back = proposal.cache["delta"][rows, pos, state.slots[rows, pos]] * coef
        log_q_rev = back - torch.logsumexp(proposal.cache["lse"], dim=-1)

        accepted = mh_accept(-beta * (proposal.z - state.z) + log_q_rev - log_q_fwd, uniforms["accept"][:, 0])
        state.update(accepted, proposal)
        return accepted


@register_kernel("lm_proposal")
class LMProposal(Kernel):
    """Resample one uniformly chosen position i from the model's own conditional p(· | BOS, x_<i),
    restricted to the allowed tokens and the current token, at proposal temperature τ.

    Changing x_i leaves x_<i, hence that conditional, unchanged, so the reverse proposal uses the same
    distribution r: q(x'|x) = r(v) / (1 − r(x_i)), q(x|x') = r(x_i) / (1 − r(v)). The conditionals of the
    current state come from the forward pass that scored it (cached with the chain): one forward per step.
    `temperature`: a number, or "match" (the default) for τ = L·T on the mean-NLL scale (T for sum_nll),
    where the proposal equals the tempered target's own factor for that token."""

    def __init__(self, space, scorer, temperature: float | str = "match"):
        super().__init__(space, scorer)
        if temperature != "match" and not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f'lm_proposal kernel_params.temperature must be > 0 or "match", got {temperature!r}')
        self.temperature = temperature
        self.allowed = space.columns()

    @staticmethod
    def uniform_shapes(space):
        return {"position": 1, "token": 1, "accept": 1}

    def evaluate(self, slots: torch.Tensor) -> ChainState:
        z, logp = self.scorer.with_logprobs(self.space.slots_to_ids(slots), self.allowed)
        return ChainState(slots, z, {"logp": logp})

    def tau(self, beta: torch.Tensor) -> torch.Tensor:
        if self.temperature == "match":
            return (-1.0 / self.scorer.nll_scale(self.space.length)) / beta
        return torch.full_like(beta, float(self.temperature))

    def step(self, state, beta, uniforms):
        n, length = state.slots.shape
        rows = torch.arange(n)
        pos = (uniforms["position"][:, 0] * length).long().clamp_(max=length - 1)
        log_r = torch.log_softmax(state.cache["logp"][rows, pos].double() / self.tau(beta).double()[:, None], -1)
        current = state.slots[rows, pos]
        log_r_others = _mask_current(log_r, current)
        tok = _categorical(log_r_others, uniforms["token"])
        log_q_fwd = log_r[rows, tok] - torch.logsumexp(log_r_others, dim=-1)
        log_q_rev = log_r[rows, current] - torch.logsumexp(_mask_current(log_r, tok), dim=-1)

        slots = state.slots.clone()
        slots[rows, pos] = tok
        proposal = self.evaluate(slots)
        log_ratio = -beta.double() * (proposal.z - state.z).double() + log_q_rev - log_q_fwd
        accepted = mh_accept(log_ratio, uniforms["accept"][:, 0])
        state.update(accepted, proposal)
        return accepted
