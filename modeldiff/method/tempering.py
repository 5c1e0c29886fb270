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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .kernels import ChainState, make_kernel
from .space import InputSpace


def geometric_temperatures(t_min: float, t_max: float, n: int) -> list[float]:
    if not 0 < t_min <= t_max:
        raise ValueError(f"temperatures need 0 < t_min <= t_max, got [{t_min}, {t_max}]")
    return [float(t) for t in np.geomspace(t_min, t_max, n)] if n > 1 else [float(t_min)]


def ladder_slice(n_ladders: int, index: int, n_processes: int) -> slice:
    """Process `index`'s contiguous share of the ladders (sizes differ by at most one)."""
    bounds = np.linspace(0, n_ladders, n_processes + 1).round().astype(int)
    return slice(int(bounds[index]), int(bounds[index + 1]))


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

    @classmethod
    def from_config(cls, cfg) -> TemperingSettings:
        """The config's `sampler` section and `seed`."""
        from omegaconf import OmegaConf

        s = cfg.sampler
        return cls(
            temperatures=geometric_temperatures(float(s.t_min), float(s.t_max), int(s.n_temperatures)),
            ladders=int(s.ladders),
            steps=int(s.steps),
            burn_in=int(s.burn_in),
            thin=int(s.thin),
            swap_every=int(s.swap_every),
            kernel=s.kernel,
            kernel_params=OmegaConf.to_container(s.kernel_params),
            seed=int(cfg.seed),
        )

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
    round_trips: np.ndarray | None = None  # [C] per ladder (None: a result made by hand, e.g. in tests)

    @staticmethod
    def concat(parts: list[TemperingResult]) -> TemperingResult:
        """Join results of disjoint ladder slices (e.g. from several processes)."""
        weights = np.array([len(np.unique(p.ladder)) for p in parts], dtype=float)
        cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
        avg = lambda name: np.average([getattr(p, name) for p in parts], axis=0, weights=weights)  # noqa: E731
        return TemperingResult(
            cat("ids"),
            cat("z"),
            cat("replica"),
            cat("ladder"),
            cat("step"),
            parts[0].temperatures,
            avg("acceptance"),
            avg("swap_acceptance"),
            max(p.seconds for p in parts),
            sum(p.n_scored for p in parts),
            None if any(p.round_trips is None for p in parts) else cat("round_trips"),
        )


def _grid_uniforms(gen: torch.Generator, k: int, c: int, shapes: dict[str, int], cols: slice):
    """U(0,1) draws for every chain of the full K×C grid, keeping this process's columns."""
    out = {}
    for name, width in shapes.items():
        u = torch.rand((k, c, width), generator=gen)[:, cols]
        out[name] = u.reshape(-1, width).clamp_(min=1e-12)
    return out


@dataclass
class Checkpointing:
    """Checkpoints of a PT run. Every `every` steps `save(checkpoint)` receives this slice's state (a dict of
    tensors with a ladder axis, see `merge_checkpoints`); `resume_from` restarts from such a dict."""

    every: int
    save: Callable[[dict], None] | None = None
    resume_from: dict | None = None


CHECKPOINT_FORMAT = 2  # 2: walkers and round trips
# per-ladder tensors of a checkpoint and the axis that indexes ladders in each
_LADDER_AXIS = {
    "slots": 1,
    "rec_slots": 2,
    "rec_z": 2,
    "accepted": 1,
    "swaps_done": 1,
    "walker": 1,
    "heading": 1,
    "round_trips": 0,
}


def merge_checkpoints(parts: list[dict]) -> dict:
    """One checkpoint from the checkpoints of disjoint, consecutive ladder slices (process order)."""
    out = {k: v for k, v in parts[0].items() if k not in _LADDER_AXIS}
    out["ladders"] = (parts[0]["ladders"][0], parts[-1]["ladders"][1])
    for name, axis in _LADDER_AXIS.items():
        out[name] = torch.cat([p[name] for p in parts], dim=axis)
    out["seconds"] = max(p["seconds"] for p in parts)
    out["n_scored"] = sum(p["n_scored"] for p in parts)
    return out


def slice_checkpoint(ckpt: dict, cols: slice) -> dict:
    """The part of a (merged) checkpoint that a process running ladders `cols` resumes from."""
    lo, hi = ckpt["ladders"]
    start, stop = cols.start, cols.stop
    if not lo <= start <= stop <= hi:
        raise ValueError(f"the checkpoint holds ladders {lo}..{hi - 1}, not {start}..{stop - 1}")
    out = {k: v for k, v in ckpt.items() if k not in _LADDER_AXIS}
    out["ladders"] = (start, stop)
    for name, axis in _LADDER_AXIS.items():
        out[name] = ckpt[name].narrow(axis, start - lo, stop - start)
    return out


@dataclass
class _Tallies:
    """What a run accumulates besides the chains themselves; a checkpoint stores it."""

    rec_slots: torch.Tensor  # [record step, K, C, L] int32
    rec_z: torch.Tensor  # [record step, K, C]
    accepted: torch.Tensor  # [K, C] accepted kernel moves
    swaps_tried: torch.Tensor  # [K−1] swap attempts per neighbour pair (the same for every ladder)
    swaps_done: torch.Tensor  # [K−1, C]
    walker: torch.Tensor  # [K, C] which walker (a configuration moving by swaps) sits at temperature k of ladder c
    heading: torch.Tensor  # [K, C] per walker: 0 no end seen yet, 1 last end was the coldest, 2 then the hottest
    round_trips: torch.Tensor  # [C] coldest → hottest → coldest journeys completed, per ladder
    seconds: float = 0.0  # spent before this process (resumed runs)
    n_scored: int = 0

    @classmethod
    def empty(cls, n_rec_steps: int, k: int, c: int, length: int) -> _Tallies:
        pairs = max(k - 1, 0)
        return cls(
            torch.empty((n_rec_steps, k, c, length), dtype=torch.int32),
            torch.empty((n_rec_steps, k, c), dtype=torch.float64),
            torch.zeros((k, c)),
            torch.zeros(pairs),
            torch.zeros((pairs, c)),
            torch.arange(k).unsqueeze(1).repeat(1, c),
            torch.zeros((k, c), dtype=torch.int8),
            torch.zeros(c),
        )

    def track_round_trips(self):
        """After a swap pass: walkers at the hottest temperature turn back, those at the coldest complete a trip."""
        cols = torch.arange(self.walker.shape[1])
        cold, hot = self.walker[0], self.walker[-1]
        arrived = self.heading[cold, cols] == 2
        self.round_trips += arrived.float()
        self.heading[cold, cols] = 1
        self.heading[hot, cols] = torch.where(self.heading[hot, cols] == 1, 2, self.heading[hot, cols]).to(torch.int8)


def _restore(
    resume: dict, settings: TemperingSettings, cols: slice, gen: torch.Generator, tallies: _Tallies
) -> tuple[torch.Tensor, int]:
    """Continue from a checkpoint: this slice's chains, the generator and the tallies; returns (slots, next step)."""
    if resume.get("format") != CHECKPOINT_FORMAT or resume["settings"] != asdict(settings):
        raise ValueError(
            "the checkpoint was written with other sampler settings (or by another modeldiff "
            "version): resume with the config of the interrupted run, or start afresh"
        )
    resume = slice_checkpoint(resume, cols)
    gen.set_state(resume["generator"])
    done = resume["rec_z"].shape[0]
    tallies.rec_slots[:done], tallies.rec_z[:done] = resume["rec_slots"], resume["rec_z"]
    tallies.accepted, tallies.swaps_done = resume["accepted"].clone(), resume["swaps_done"].clone()
    tallies.swaps_tried = resume["swaps_tried"].clone()
    tallies.walker, tallies.heading = resume["walker"].clone(), resume["heading"].clone()
    tallies.round_trips = resume["round_trips"].clone()
    tallies.seconds, tallies.n_scored = float(resume["seconds"]), int(resume["n_scored"])
    return resume["slots"], int(resume["step"])


def _swap_neighbours(
    state: ChainState, temps: torch.Tensor, u_swap: torch.Tensor, parity: int, c: int, tallies: _Tallies
):
    """Replica exchange between temperatures k and k+1 for every k of one parity, in every ladder."""
    z = state.z.view(len(temps), c)
    for k in range(parity, len(temps) - 1, 2):
        log_a = (1 / temps[k] - 1 / temps[k + 1]) * (z[k] - z[k + 1])
        do = torch.log(u_swap[k]) < log_a
        tallies.swaps_tried[k] += 1
        tallies.swaps_done[k] += do.float()
        j = torch.nonzero(do).squeeze(-1)
        state.swap(k * c + j, (k + 1) * c + j)
        lower = tallies.walker[k, j].clone()
        tallies.walker[k, j] = tallies.walker[k + 1, j]
        tallies.walker[k + 1, j] = lower


def _result(
    space: InputSpace,
    settings: TemperingSettings,
    temps: torch.Tensor,
    ladder_ids: torch.Tensor,
    tallies: _Tallies,
    seconds: float,
    n_scored: int,
) -> TemperingResult:
    n_rec_steps, k_count, c, length = tallies.rec_slots.shape
    n_rec = n_rec_steps * k_count * c
    ids = np.asarray(space.token_ids, dtype=np.int64)[tallies.rec_slots.reshape(n_rec, length).numpy()]
    rec_step = torch.arange(settings.burn_in, settings.steps, settings.thin, dtype=torch.int32)
    return TemperingResult(
        ids=ids,
        z=tallies.rec_z.reshape(-1).numpy(),
        replica=torch.arange(k_count, dtype=torch.int16).repeat_interleave(c).repeat(n_rec_steps).numpy(),
        ladder=ladder_ids.to(torch.int32).repeat(k_count).repeat(n_rec_steps).numpy(),
        step=rec_step.repeat_interleave(k_count * c).numpy(),
        temperatures=temps.numpy().astype(np.float64),
        acceptance=(tallies.accepted.sum(1) / (settings.steps * c)).numpy(),
        swap_acceptance=(tallies.swaps_done.sum(1) / (tallies.swaps_tried * c).clamp(min=1)).numpy(),
        seconds=seconds,
        n_scored=n_scored,
        round_trips=tallies.round_trips.numpy().astype(np.int64),
    )


def run_parallel_tempering(
    scorer,
    space: InputSpace,
    settings: TemperingSettings,
    ladders: slice | None = None,
    progress: bool = True,
    checkpointing: Checkpointing | None = None,
) -> TemperingResult:
    temps = torch.tensor(settings.temperatures, dtype=torch.float32)
    k_count, c_total, length = len(temps), settings.ladders, space.length
    cols = ladders or slice(0, c_total)
    ladder_ids = torch.arange(c_total)[cols]
    c = len(ladder_ids)
    gen = torch.Generator().manual_seed(settings.seed)
    kernel = make_kernel(settings.kernel, space, scorer, **settings.kernel_params)
    shapes = kernel.uniform_shapes(space)

    # records are laid out [record step, temperature, ladder]; chain index = k * c + j (temperature-major)
    tallies = _Tallies.empty(settings.n_records_per_chain, k_count, c, length)
    slots = torch.randint(space.n_tokens, (k_count, c_total, length), generator=gen)[:, cols]
    first_step = 0
    resume = checkpointing.resume_from if checkpointing else None
    if resume is not None:
        slots, first_step = _restore(resume, settings, cols, gen, tallies)
    state = ChainState(slots.reshape(-1, length).long().clone(), torch.zeros(0))
    kernel.init(state)  # kernel caches are functions of the state: recomputed, never stored
    beta = (1.0 / temps).repeat_interleave(c)
    t0, n_scored_start = time.perf_counter(), scorer.n_scored
    elapsed = lambda: tallies.seconds + time.perf_counter() - t0  # noqa: E731
    scored = lambda: tallies.n_scored + scorer.n_scored - n_scored_start  # noqa: E731

    def snapshot(next_step: int) -> dict:
        done = len(range(settings.burn_in, next_step, settings.thin)) if next_step > settings.burn_in else 0
        return {
            "format": CHECKPOINT_FORMAT,
            "settings": asdict(settings),
            "step": next_step,
            "ladders": (int(ladder_ids[0]), int(ladder_ids[-1]) + 1),
            "generator": gen.get_state(),
            "slots": state.slots.view(k_count, c, length).clone(),
            "rec_slots": tallies.rec_slots[:done].clone(),
            "rec_z": tallies.rec_z[:done].clone(),
            "accepted": tallies.accepted.clone(),
            "swaps_done": tallies.swaps_done.clone(),
            "swaps_tried": tallies.swaps_tried.clone(),
            "walker": tallies.walker.clone(),
            "heading": tallies.heading.clone(),
            "round_trips": tallies.round_trips.clone(),
            "seconds": elapsed(),
            "n_scored": scored(),
        }

    save_every = checkpointing.every if checkpointing and checkpointing.save else 0
    for step in tqdm(
        range(first_step, settings.steps),
        desc=f"PT {settings.kernel}",
        disable=not progress,
        leave=False,
        initial=first_step,
        total=settings.steps,
    ):
        acc = kernel.step(state, beta, _grid_uniforms(gen, k_count, c_total, shapes, cols))
        tallies.accepted += acc.float().view(k_count, c)
        if k_count > 1 and step % settings.swap_every == 0:
            u_swap = torch.rand((k_count - 1, c_total), generator=gen)[:, cols].clamp_(min=1e-12)
            _swap_neighbours(state, temps, u_swap, (step // settings.swap_every) % 2, c, tallies)
            tallies.track_round_trips()
        if step >= settings.burn_in and (step - settings.burn_in) % settings.thin == 0:
            r = (step - settings.burn_in) // settings.thin
            tallies.rec_slots[r] = state.slots.view(k_count, c, length).to(torch.int32)
            tallies.rec_z[r] = state.z.view(k_count, c)
        # and at the last step: a run that fails after sampling (building ρ̃, logging) resumes without sampling again
        if save_every > 0 and ((step + 1) % save_every == 0 or step + 1 == settings.steps):
            checkpointing.save(snapshot(step + 1))
    return _result(space, settings, temps, ladder_ids, tallies, elapsed(), scored())
