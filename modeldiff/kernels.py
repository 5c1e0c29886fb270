"""MCMC kernels for the tempered targets π_T(x) ∝ exp(−z(x)/T), behind one interface.

A kernel updates a batch of chains in place, each at its own inverse temperature, and must keep
π_T invariant (detailed balance; tests/test_kernels.py checks it on an enumerable space).
Kernels are registered by name so configs can pick one (`sampler.kernel`).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from .space import InputSpace

KERNELS: dict[str, type["Kernel"]] = {}


def register_kernel(name: str):
    def wrap(cls):
        cls.name = name
        KERNELS[name] = cls
        return cls
    return wrap


def make_kernel(name: str, space: InputSpace, scorer, **params) -> "Kernel":
    if name not in KERNELS:
        raise ValueError(f"unknown sampler.kernel {name!r}; choose one of {sorted(KERNELS)}")
    return KERNELS[name](space, scorer, **params)


@dataclass
class ChainState:
    """Chains as slots (indices into the allowed token set) with their current z."""
    slots: torch.Tensor  # [n, L] long
    z: torch.Tensor  # [n] float32

    def select(self, idx) -> "ChainState":
        return ChainState(self.slots[idx], self.z[idx])


class Kernel(ABC):
    name = "abstract"

    def __init__(self, space: InputSpace, scorer):
        self.space = space
        self.scorer = scorer

    def score(self, slots: torch.Tensor) -> torch.Tensor:
        return self.scorer(self.space.slots_to_ids(slots))

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
        log_accept = -beta * (z_new - state.z)
        accepted = torch.log(uniforms["accept"][:, 0]) < log_accept
        state.slots[accepted] = proposal[accepted]
        state.z[accepted] = z_new[accepted]
        return accepted
