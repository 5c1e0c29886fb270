"""Parallel tempering over K temperatures (stage 1's sampler).

C independent *ladders*, each with one replica per temperature; replica k targets
π_k(x) ∝ exp(−z(x)/T_k) (T on the per-token scale). Every step each replica takes one kernel
update; every `swap_every` steps neighbouring replicas of a ladder swap configurations with
probability min(1, exp((1/T_k − 1/T_{k+1})(z_k − z_{k+1}))), alternating even and odd pairs.
After burn-in, (x, z, replica, ladder, step) is recorded every `thin` steps.

All random numbers are drawn for the full K×C grid from one generator, so a process that runs
a slice of the ladders (`ladders=`) makes exactly the moves the one-process run makes for them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .kernels import ChainState, make_kernel
from .space import InputSpace


def geometric_temperatures(t_min: float, t_max: float, n: int) -> list[float]:
    if not 0 < t_min <= t_max:
        raise ValueError(f"temperatures need 0 < t_min <= t_max, got [{t_min}, {t_max}]")
    return [float(t) for t in np.geomspace(t_min, t_max, n)] if n > 1 else [float(t_min)]


@dataclass
class TemperingSettings:
    temperatures: list[float]
    ladders: int = 8
    steps: int = 3000
    burn_in: int = 500
    thin: int = 1
    swap_every: int = 1
    kernel: str = "mh_uniform"
    kernel_params: dict = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self):
        if list(self.temperatures) != sorted(self.temperatures) or min(self.temperatures) <= 0:
            raise ValueError("sampler temperatures must be positive and increasing")
        if not 0 <= self.burn_in < self.steps:
            raise ValueError(f"sampler.burn_in ({self.burn_in}) must be in [0, steps={self.steps})")
        if self.thin < 1 or self.swap_every < 1 or self.ladders < 1:
            raise ValueError("sampler.thin, sampler.swap_every and sampler.ladders must be >= 1")

    @property
    def n_records_per_chain(self) -> int:
        return len(range(self.burn_in, self.steps, self.thin))


@dataclass
class TemperingResult:
    ids: np.ndarray  # [N, L] recorded token ids
    z: np.ndarray  # [N]
    replica: np.ndarray  # [N] temperature index
    ladder: np.ndarray  # [N] ladder index (global)
    step: np.ndarray  # [N]
    temperatures: np.ndarray  # [K]
    acceptance: np.ndarray  # [K] kernel acceptance rate per temperature
    swap_acceptance: np.ndarray  # [K−1] swap acceptance per neighbour pair
    seconds: float
    n_scored: int

    @staticmethod
    def concat(parts: list["TemperingResult"]) -> "TemperingResult":
        """Join results of disjoint ladder slices (e.g. from several processes)."""
        weights = np.array([len(np.unique(p.ladder)) for p in parts], dtype=float)
        cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
        avg = lambda name: np.average([getattr(p, name) for p in parts], axis=0, weights=weights)  # noqa: E731
        return TemperingResult(cat("ids"), cat("z"), cat("replica"), cat("ladder"), cat("step"),
                               parts[0].temperatures, avg("acceptance"), avg("swap_acceptance"),
                               max(p.seconds for p in parts), sum(p.n_scored for p in parts))


def _grid_uniforms(gen: torch.Generator, k: int, c: int, shapes: dict[str, int], cols: slice):
    """U(0,1) draws for every chain of the full K×C grid, keeping this process's columns."""
    out = {}
    for name, width in shapes.items():
        u = torch.rand((k, c, width), generator=gen)[:, cols]
        out[name] = u.reshape(-1, width).clamp_(min=1e-12)
    return out


def run_parallel_tempering(scorer, space: InputSpace, settings: TemperingSettings, ladders: slice | None = None,
                           progress: bool = True) -> TemperingResult:
    temps = torch.tensor(settings.temperatures, dtype=torch.float32)
    k_count, c_total = len(temps), settings.ladders
    cols = ladders or slice(0, c_total)
    ladder_ids = torch.arange(c_total)[cols]
    c = len(ladder_ids)
    gen = torch.Generator().manual_seed(settings.seed)
    kernel = make_kernel(settings.kernel, space, scorer, **settings.kernel_params)
    shapes = kernel.uniform_shapes(space)

    # chain index = k * c + j (temperature-major)
    init = torch.randint(space.n_tokens, (k_count, c_total, space.length), generator=gen)[:, cols]
    state = ChainState(init.reshape(-1, space.length).clone(), torch.zeros(0))
    state.z = kernel.score(state.slots)
    beta = (1.0 / temps).repeat_interleave(c)

    n_rec = settings.n_records_per_chain * k_count * c
    rec_slots = torch.empty((n_rec, space.length), dtype=torch.int32)
    rec_z = torch.empty(n_rec, dtype=torch.float32)
    rec_step = torch.empty(n_rec, dtype=torch.int32)
    rec_replica = torch.arange(k_count, dtype=torch.int16).repeat_interleave(c).repeat(settings.n_records_per_chain)
    rec_ladder = ladder_ids.to(torch.int32).repeat(k_count).repeat(settings.n_records_per_chain)
    accepted = torch.zeros(k_count)
    swaps_tried, swaps_done = torch.zeros(max(k_count - 1, 0)), torch.zeros(max(k_count - 1, 0))
    t0, scored0, r = time.perf_counter(), scorer.n_scored, 0

    for step in tqdm(range(settings.steps), desc=f"PT {settings.kernel}", disable=not progress, leave=False):
        u = _grid_uniforms(gen, k_count, c_total, shapes, cols)
        acc = kernel.step(state, beta, u)
        accepted += acc.float().view(k_count, c).sum(1)

        if k_count > 1 and step % settings.swap_every == 0:
            u_swap = torch.rand((k_count - 1, c_total), generator=gen)[:, cols].clamp_(min=1e-12)
            parity = (step // settings.swap_every) % 2
            z = state.z.view(k_count, c)
            slots = state.slots.view(k_count, c, space.length)
            for k in range(parity, k_count - 1, 2):
                log_a = (1 / temps[k] - 1 / temps[k + 1]) * (z[k] - z[k + 1])
                do = torch.log(u_swap[k]) < log_a
                swaps_tried[k] += c
                swaps_done[k] += do.sum()
                z[k, do], z[k + 1, do] = z[k + 1, do].clone(), z[k, do].clone()
                slots[k, do], slots[k + 1, do] = slots[k + 1, do].clone(), slots[k, do].clone()

        if step >= settings.burn_in and (step - settings.burn_in) % settings.thin == 0:
            sl = slice(r, r + k_count * c)
            rec_slots[sl] = state.slots.to(torch.int32)
            rec_z[sl] = state.z
            rec_step[sl] = step
            r += k_count * c

    ids = np.asarray(space.token_ids, dtype=np.int64)[rec_slots.numpy()]
    return TemperingResult(
        ids=ids, z=rec_z.numpy(), replica=rec_replica.numpy(), ladder=rec_ladder.numpy(), step=rec_step.numpy(),
        temperatures=temps.numpy().astype(np.float64), acceptance=(accepted / (settings.steps * c)).numpy(),
        swap_acceptance=(swaps_done / swaps_tried.clamp(min=1)).numpy(),
        seconds=time.perf_counter() - t0, n_scored=scorer.n_scored - scored0)
