"""Stage 1, second method: ancestral importance sampling (DESIGN §2), for autoregressive models.

x ∈ S^L is drawn position by position from q_τ(x) = Π_i softmax(log p(·|BOS, x<i)[S] / τ)[x_i]: the model's own
next-token distribution (float32 log-softmax over the full vocabulary) restricted to the allowed set S and tempered
by τ, one batched KV-cached forward step per position. q_τ(x) is known exactly for every sample, for every τ_k of the
run at once (log_softmax(log p[S] / τ_k) at the drawn token), so with N_k samples at τ_k (N in all) the balance
heuristic w(x) = 1 / Σ_k (N_k/N) q_k(x) gives ρ(b) = (1/N) Σ_i w_i 1{z_i ∈ b}: an unbiased estimate of the number of
inputs in bin b under the uniform measure on Ω, with no normalising constant, no burn-in and no mixing.

Samples come in `n_blocks` blocks, each stratified over the temperatures (N_k / n_blocks samples of τ_k); a block's
random numbers come from its own generator, seeded from (seed, block index), so blocks are i.i.d. units (the
bootstrap resamples them) and a process that runs a slice of the blocks draws exactly what the one-process run draws
for them. A block's uniforms are drawn up front and used by inverse CDF, so `batch_size` splits the work, not the
random stream.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import ancestral_rules, check_z_range
from .outdist import OutputDistribution, bin_of, make_edges, unique_rows, with_rho_band
from .reweighting import logsumexp
from .scoring import Scorer, reduce_nll
from .space import InputSpace
from .tempering import Checkpointing
from .uncertainty import kish_ess


@dataclass
class AncestralSettings:
    temperatures: list[float]
    n_samples: int = 8192  # in all, over every temperature and block
    n_blocks: int = 32
    batch_size: int = 512  # sequences per cached forward step (a larger block is split)
    seed: int = 0

    def __post_init__(self):
        for key, ok, need in ancestral_rules(self.temperatures, self.n_samples, self.n_blocks, self.batch_size):
            if not ok:
                raise ValueError(f"sampler.ancestral.{key} must be {need}, got {getattr(self, key)!r}")
        self.temperatures = [float(t) for t in self.temperatures]

    @classmethod
    def from_config(cls, cfg) -> AncestralSettings:
        """The config's `sampler.ancestral` section and `seed`."""
        a = cfg.sampler.ancestral
        return cls(
            temperatures=[float(t) for t in a.temperatures],
            n_samples=int(a.n_samples),
            n_blocks=int(a.n_blocks),
            batch_size=int(a.batch_size),
            seed=int(cfg.seed),
        )

    @property
    def per_block_and_temperature(self) -> int:
        return self.n_samples // (self.n_blocks * len(self.temperatures))

    @property
    def block_size(self) -> int:
        return self.per_block_and_temperature * len(self.temperatures)

    def block_generator(self, block: int) -> torch.Generator:
        """Block `block`'s own random stream, a function of (seed, block) only."""
        state = np.random.SeedSequence(self.seed % 2**64, spawn_key=(block,)).generate_state(1, np.uint64)[0]
        return torch.Generator().manual_seed(int(state))


def balance_log_weights(log_q: np.ndarray, n_per_temperature: np.ndarray) -> np.ndarray:
    """ln w(x) = −ln Σ_k (N_k/N) q_k(x) for samples' ln q_k(x) [N, K] (the balance heuristic)."""
    n_k = np.asarray(n_per_temperature, dtype=np.float64)
    return -logsumexp(np.asarray(log_q, dtype=np.float64) + np.log(n_k / n_k.sum()), axis=1)


@dataclass
class AncestralResult:
    ids: np.ndarray  # [N, L] token ids
    z: np.ndarray  # [N] as Scorer computes it
    log_q: np.ndarray  # [N, K] ln q_k(x) under every temperature of the run
    temperature: np.ndarray  # [N] index of the temperature each sample was drawn at
    block: np.ndarray  # [N] global block index
    temperatures: np.ndarray  # [K]
    n_per_temperature: np.ndarray  # [K] N_k of the whole run (every block)
    seconds: float
    n_scored: int

    @property
    def ln_weight(self) -> np.ndarray:
        return balance_log_weights(self.log_q, self.n_per_temperature)

    @staticmethod
    def concat(parts: list[AncestralResult]) -> AncestralResult:
        """Join results of disjoint block slices (e.g. from several processes), in block order."""
        cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
        order = np.argsort(cat("block"), kind="stable")
        return AncestralResult(
            *(cat(name)[order] for name in ("ids", "z", "log_q", "temperature", "block")),
            parts[0].temperatures,
            parts[0].n_per_temperature,
            max(p.seconds for p in parts),
            sum(p.n_scored for p in parts),
        )


def _cache_keyword(model) -> str:
    """The forward argument that takes the KV cache (`cache` in transformers >= 5.x, `past_key_values` before)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index drawn from each row of `probs` with the uniform u of that row (u > 0: a zero-probability index is never
    drawn)."""
    cdf = probs.double().cumsum(-1)
    drawn = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1)).squeeze(-1)
    return drawn.clamp_(max=probs.shape[-1] - 1)


@torch.inference_mode()
def draw(
    scorer: Scorer, space: InputSpace, temperatures: torch.Tensor, own: torch.Tensor, u: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sequences drawn at temperatures `temperatures[own]` [n] with uniforms `u` [n, L], in one cached pass:
    (slots [n, L], z [n], ln q_k(x) for every temperature [n, K] float64)."""
    model, device = scorer.model, scorer.device
    n, length = u.shape
    columns, token_ids = space.columns(), space.ids_tensor(device)
    temps, u = temperatures.to(device), u.to(device)
    tau = temps[own.to(device)].unsqueeze(-1)
    keyword, cache = _cache_keyword(model), None
    step = torch.full((n, 1), scorer.bos_token_id, dtype=torch.long, device=device)
    slots = torch.empty((n, length), dtype=torch.long, device=device)
    token_logprobs = torch.empty((n, length), dtype=torch.float32, device=device)
    log_q = torch.zeros((n, len(temps)), dtype=torch.float64, device=device)
    for i in range(length):
        out = model(input_ids=step, use_cache=True, **({keyword: cache} if cache is not None else {}))
        cache = next(out[k] for k in ("cache", "past_key_values") if k in out)
        logits = out.logits[:, -1].float()
        logp = logits.sub_(torch.logsumexp(logits, dim=-1, keepdim=True))  # as Scorer: full-vocabulary log p
        logp = logp[:, columns] if isinstance(columns, slice) else logp[:, columns.to(device)]  # [n, |S|]
        picked = _inverse_cdf(torch.softmax(logp / tau, dim=-1), u[:, i]).unsqueeze(-1)
        token_logprobs[:, i] = logp.gather(-1, picked).squeeze(-1)
        for k, t in enumerate(temps):
            log_q[:, k] += torch.log_softmax(logp / t, dim=-1).gather(-1, picked).squeeze(-1).double()
        slots[:, i] = picked.squeeze(-1)
        step = token_ids[picked]
    scorer.n_scored += n
    return slots.cpu(), scorer._checked(reduce_nll(token_logprobs, scorer.output)).cpu(), log_q.cpu()


CHECKPOINT_FORMAT = 1
_SAMPLE_FIELDS = ("ids", "z", "log_q", "temperature", "block")  # a checkpoint's per-sample tensors


def merge_checkpoints(parts: list[dict]) -> dict:
    """One checkpoint from the checkpoints of disjoint block slices (any process count can resume it)."""
    out = {k: v for k, v in parts[0].items() if k not in _SAMPLE_FIELDS}
    for name in _SAMPLE_FIELDS:
        out[name] = torch.cat([p[name] for p in parts])
    out["step"] = int(len(out["z"]))  # samples held
    out["seconds"] = max(p["seconds"] for p in parts)
    out["n_scored"] = sum(p["n_scored"] for p in parts)
    return out


def _restored(resume: dict, settings: AncestralSettings, blocks: range) -> dict[int, tuple]:
    """The finished blocks of `blocks` in a checkpoint: {block: (ids, z, log_q, temperature)} as numpy arrays."""
    if resume.get("format") != CHECKPOINT_FORMAT or resume.get("settings") != asdict(settings):
        raise ValueError(
            "the checkpoint was written with other sampler settings (or by another modeldiff "
            "version): resume with the config of the interrupted run, or start afresh"
        )
    block = resume["block"].numpy()
    out = {}
    for b in map(int, np.unique(block)):
        if b in blocks:
            ids, z, log_q, temperature = (resume[name][block == b].numpy() for name in _SAMPLE_FIELDS[:-1])
            out[b] = ids.astype(np.int64), z, log_q, temperature
    return out


def _save_after(round_index: int, settings: AncestralSettings, every: int, rounds: int, resumed_rounds: int) -> bool:
    """Checkpoint after this round? When it crosses a multiple of `every` samples per process, and after the last;
    never with every = 0, nor within the rounds a resumed checkpoint already held. The same answer on every process
    (saves may gather)."""
    if every <= 0 or round_index < resumed_rounds:
        return False
    done, before = (round_index + 1) * settings.block_size, round_index * settings.block_size
    return round_index + 1 == rounds or done // every > before // every


def run_ancestral(
    scorer: Scorer,
    space: InputSpace,
    settings: AncestralSettings,
    blocks: slice | None = None,
    progress: bool = True,
    checkpointing: Checkpointing | None = None,
    rounds: int | None = None,
) -> AncestralResult:
    """Draw the blocks in `blocks` (default: all), block by block.

    checkpointing.every counts samples per process (rounded up to whole blocks); `save` gets this slice's finished
    blocks (see `merge_checkpoints`), and always after the last block; `resume_from` skips the blocks it holds.
    `rounds` (default: the blocks in the slice) is the most blocks any process runs: a process with fewer idles
    through the rest, so every process calls `save` at the same rounds (a save may be a collective gather)."""
    mine = range(settings.n_blocks)[blocks or slice(None)]
    rounds = len(mine) if rounds is None else rounds
    temps = torch.tensor(settings.temperatures, dtype=torch.float64)
    m, k_count = settings.per_block_and_temperature, len(temps)
    own = torch.arange(k_count).repeat_interleave(m)  # a block is temperature-major
    resume = checkpointing.resume_from if checkpointing else None
    done = _restored(resume, settings, mine) if resume is not None else {}
    resumed_rounds = int(resume["rounds"]) if resume is not None else 0
    seconds0, scored0 = (float(resume["seconds"]), int(resume["n_scored"])) if resume is not None else (0.0, 0)
    t0, n_scored_start = time.perf_counter(), scorer.n_scored
    elapsed = lambda: seconds0 + time.perf_counter() - t0  # noqa: E731
    scored = lambda: scored0 + scorer.n_scored - n_scored_start  # noqa: E731

    def snapshot(round_count: int) -> dict:
        finished = sorted(done)
        return {
            "format": CHECKPOINT_FORMAT,
            "method": "ancestral",
            "settings": asdict(settings),
            "rounds": round_count,
            "step": len(finished) * settings.block_size,
            **{
                name: torch.from_numpy(a)
                for name, a in zip(_SAMPLE_FIELDS, _stack(done, finished, space.length, k_count))
            },
            "seconds": elapsed(),
            "n_scored": scored(),
        }

    bar = tqdm(
        total=len(mine) * settings.block_size,
        initial=len(done) * settings.block_size,
        desc=f"ancestral τ={settings.temperatures}",
        unit="x",
        disable=not progress,
        leave=False,
    )
    with bar:
        for r in range(rounds):
            if r < len(mine) and mine[r] not in done:
                done[mine[r]] = _draw_block(scorer, space, settings, temps, own, mine[r], bar)
            if (
                checkpointing
                and checkpointing.save
                and _save_after(r, settings, checkpointing.every, rounds, resumed_rounds)
            ):
                checkpointing.save(snapshot(r + 1))
    n_k = np.full(k_count, m * settings.n_blocks)
    return AncestralResult(*_stack(done, list(mine), space.length, k_count), temps.numpy(), n_k, elapsed(), scored())


def _draw_block(scorer, space, settings: AncestralSettings, temps, own, block: int, bar) -> tuple:
    """One block's (ids, z, log_q, temperature index), in chunks of batch_size sequences."""
    u = torch.rand((settings.block_size, space.length), generator=settings.block_generator(block), dtype=torch.float64)
    u.clamp_(min=1e-12)
    parts = []
    for start in range(0, settings.block_size, settings.batch_size):
        sel = slice(start, start + settings.batch_size)
        parts.append(draw(scorer, space, temps, own[sel], u[sel]))
        bar.update(len(u[sel]))
    slots, z, log_q = (torch.cat(t) for t in zip(*parts))
    ids = np.asarray(space.token_ids, dtype=np.int64)[slots.numpy()]
    return ids, z.numpy(), log_q.numpy(), own.numpy().astype(np.int16)


def _stack(done: dict[int, tuple], blocks: list[int], length: int, k_count: int) -> tuple[np.ndarray, ...]:
    """(ids, z, log_q, temperature, block) of these finished blocks, in their order."""
    if not blocks:
        empty = (
            np.empty((0, length), np.int64),
            np.empty(0, np.float32),
            np.empty((0, k_count)),
            np.empty(0, np.int16),
        )
        return *empty, np.empty(0, np.int64)
    ids, z, log_q, temperature = (np.concatenate(parts) for parts in zip(*(done[b] for b in blocks)))
    block = np.repeat(np.asarray(blocks, dtype=np.int64), [len(done[b][1]) for b in blocks])
    return ids, z, log_q, temperature, block


def log_kish_ess(ln_w: np.ndarray) -> float:
    """Kish's effective sample size of weights given as logs (scaled first: it does not depend on the scale)."""
    return kish_ess(np.exp(ln_w - ln_w.max())) if len(ln_w) else 0.0


def build_output_distribution(
    res: AncestralResult,
    space: InputSpace,
    z_range,
    bin_width: float,
    n_replicates: int = 200,
    level: float = 0.95,
    seed: int = 0,
    decode=None,
) -> OutputDistribution:
    """ρ̃(b) = (1/N) Σ_i w_i 1{z_i ∈ b} (absolute counts over Ω: no normalising constant), its band from
    `n_replicates` resamples of the blocks, the representatives inside Z with their summed weights, per-block arrays,
    and per-bin effective sample sizes over distinct inputs."""
    lo, hi = check_z_range(z_range)
    if len(res.z) == 0:
        raise ValueError("ancestral sampling drew no samples: set sampler.ancestral.n_samples > 0")
    first, inverse, counts = unique_rows(res.ids)
    # every sample of one input takes that input's z and weight (batches of another size may round them differently)
    z_x, ln_w_x = res.z[first], res.ln_weight[first]
    edges = make_edges(float(z_x.min()), float(z_x.max()), (lo, hi), bin_width)
    n_bins = len(edges) - 1
    bin_x = bin_of(z_x, edges, (lo, hi))
    bin_i, ln_w_i = bin_x[inverse], ln_w_x[inverse]

    blocks, unit = np.unique(res.block, return_inverse=True)
    unit_ln_rho = np.full((len(blocks), n_bins), -np.inf)
    np.logaddexp.at(unit_ln_rho, (unit, bin_i), ln_w_i)
    ln_rho = logsumexp(unit_ln_rho, axis=0) - np.log(len(res.z))
    hist = np.zeros((len(res.temperatures), n_bins))
    np.add.at(hist, (res.temperature.astype(np.int64), bin_i), 1.0)

    ln_weight_x = np.log(counts) + ln_w_x  # an input's weight sums its samples' weights
    ess_per_bin = [log_kish_ess(ln_weight_x[bin_x == b]) for b in range(n_bins)]
    inside = (z_x >= lo) & (z_x <= hi)
    rep_row = np.full(len(first), -1)
    rep_row[inside] = np.arange(int(inside.sum()))
    in_reps = rep_row[inverse] >= 0
    rep_unit_ln_weight = np.full((int(inside.sum()), len(blocks)), -np.inf)
    np.logaddexp.at(rep_unit_ln_weight, (rep_row[inverse][in_reps], unit[in_reps]), ln_w_i[in_reps])
    reps = pd.DataFrame(
        {
            "tokens": list(res.ids[first][inside]),
            "z": z_x[inside],
            "count": counts[inside],
            "ln_weight": ln_weight_x[inside],
            "bin": bin_x[inside],
        }
    )
    if decode is not None:
        reps["text"] = [decode(t) for t in reps["tokens"]]
    meta = dict(
        method="ancestral",
        n_records=int(len(res.z)),
        n_in_z=int(in_reps.sum()),
        n_distinct=int(len(first)),
        n_distinct_in_z=int(len(reps)),
        ess_in_z=log_kish_ess(ln_weight_x[inside]),
        ess_per_bin=ess_per_bin,
        n_units=int(len(blocks)),
        unit_sizes=np.bincount(unit).tolist(),
        n_per_temperature=[int(n) for n in res.n_per_temperature],
        sampling_seconds=float(res.seconds),
        n_scored=int(res.n_scored),
        space=dict(length=space.length, n_tokens=space.n_tokens, bos_token_id=space.bos_token_id),
    )
    od = OutputDistribution(
        edges=edges,
        ln_rho=ln_rho,
        ln_rho_std=np.full(n_bins, np.nan),
        hist=hist,
        temperatures=np.asarray(res.temperatures, dtype=np.float64),
        f=np.zeros(len(res.temperatures)),
        z_range=(lo, hi),
        representatives=reps,
        meta=meta,
        rep_unit_ln_weight=rep_unit_ln_weight,
        unit_ln_rho=unit_ln_rho,
    )
    return with_rho_band(od, n_replicates, level, seed)
