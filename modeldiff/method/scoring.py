"""Scoring: z_M(x) = −(1/L) Σ_i log p_M(x_i | BOS, x_<i) for any Hugging Face causal LM.

`ShardedScorer` splits each batch over processes (scale-out; the gather is passed in, so no Accelerate here).
Log-probabilities are taken in float32 over the model's *full* vocabulary (logit − logsumexp),
whatever dtype the model runs in. `output="sum_nll"` gives the summed NLL instead of the mean.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from . import OUTPUTS


def token_logprobs_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per position, float32, without materialising a second [n, L, V] buffer."""
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def reduce_nll(token_logprobs: torch.Tensor, output: str) -> torch.Tensor:
    """z in float64: summed in float32, L rounding errors would add up to more than the coldest temperatures."""
    nll = -token_logprobs.double().sum(-1)
    return nll / token_logprobs.shape[-1] if output == "mean_nll" else nll


def _columns(t: torch.Tensor, allowed: slice | torch.Tensor) -> torch.Tensor:
    return t[..., allowed] if isinstance(allowed, slice) else t[..., allowed.to(t.device)]


class Scorer:
    """Batched z for token-id sequences [n, L]; BOS is prepended here, never by the caller."""

    def __init__(self, model, bos_token_id: int, output: str = "mean_nll", batch_size: int = 2048):
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        self.model = model.eval()
        self.bos_token_id = int(bos_token_id)
        self.output = output
        self.batch_size = int(batch_size)
        self.n_scored = 0  # sequences scored so far (for throughput figures)
        # the LM head can skip the last position (it predicts past the sequence) when the model allows it
        self._keep_scored = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self._logits_in_place = True  # turned off for models whose backward pass needs their logits

    def scored_logits(self, length: int, **inputs) -> torch.Tensor:
        """Logits at the L positions that predict x_0..x_{L-1} (inputs are BOS + x, length L+1)."""
        if self._keep_scored:
            keep = torch.arange(length, device=self.device)
            return self.model(**inputs, use_cache=False, logits_to_keep=keep).logits
        return self.model(**inputs, use_cache=False).logits[:, :-1]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def with_bos(self, ids: torch.Tensor) -> torch.Tensor:
        bos = torch.full((ids.shape[0], 1), self.bos_token_id, dtype=torch.long, device=ids.device)
        return torch.cat([bos, ids], dim=1)

    @torch.inference_mode()
    def token_logprobs(self, ids: torch.Tensor) -> torch.Tensor:
        """log p(x_i | BOS, x_<i), float32, shape [n, L]."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        out = []
        for start in range(0, ids.shape[0], self.batch_size):
            chunk = ids[start : start + self.batch_size].to(self.device)
            logits = self.scored_logits(chunk.shape[1], input_ids=self.with_bos(chunk))
            out.append(token_logprobs_from_logits(logits, chunk).cpu())
        self.n_scored += ids.shape[0]
        return torch.cat(out) if out else torch.empty(0, ids.shape[1])

    def __call__(self, ids) -> torch.Tensor:
        return self._checked(reduce_nll(self.token_logprobs(ids), self.output))

    def nll_scale(self, length: int) -> float:
        """dz/d(log p of one token): −1/L for the mean NLL, −1 for the sum."""
        return -1.0 / length if self.output == "mean_nll" else -1.0

    @torch.no_grad()  # not inference_mode: kernels update the cached tensors in place
    def with_logprobs(self, ids: torch.Tensor, allowed: slice | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z [n], log p(v | BOS, x_<i) for v in `allowed` [n, L, |allowed|]), float32, one forward pass.

        The log-softmax is over the full vocabulary; only the allowed columns are kept (`allowed` a slice
        keeps them as a view: no copy of the [n, L, V] block)."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        zs, lps = [], []
        for start in range(0, ids.shape[0], self.batch_size):
            chunk = ids[start : start + self.batch_size].to(self.device)
            logits = self.scored_logits(chunk.shape[1], input_ids=self.with_bos(chunk)).float()
            logp = logits.sub_(torch.logsumexp(logits, dim=-1, keepdim=True))  # in place: logits are not kept
            zs.append(reduce_nll(logp.gather(-1, chunk.unsqueeze(-1)).squeeze(-1), self.output).cpu())
            lps.append(_columns(logp, allowed).cpu())
        self.n_scored += ids.shape[0]
        return self._checked(torch.cat(zs)), (torch.cat(lps) if len(lps) > 1 else lps[0])

    def with_onehot_gradient(self, ids: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z [n], ∂z/∂onehot(x) restricted to `allowed` [n, L, |allowed|]) from one forward and one backward pass.

        z depends on the one-hot of x_i twice: as input (its embedding, ∂z/∂e_i · E_v) and as target
        (the log-prob it selects, scale · log p_i(v)). The input part is a projection of the
        embedding gradient [n, L, d] onto the allowed rows of E: no [L, V, d] tensor is ever built."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        embedding = self.model.get_input_embeddings()
        allowed = allowed if isinstance(allowed, slice) else allowed.to(self.device)
        table_t = embedding.weight.detach()[allowed].float().T  # [d, V']
        scale = self.nll_scale(ids.shape[1])
        zs, grads = [], []
        for start in range(0, ids.shape[0], self.batch_size):
            chunk = ids[start : start + self.batch_size].to(self.device)
            with torch.enable_grad():
                emb = embedding(self.with_bos(chunk)).detach().requires_grad_(True)
                logits = self.scored_logits(chunk.shape[1], inputs_embeds=emb)
            with torch.no_grad():
                # z and ∂z/∂logits ∝ softmax − onehot by hand, in as few [n, L, V] passes as possible: log p in
                # place of the logits (nothing saved them for the backward pass), one exp, a scatter of L entries;
                # the factor −scale is applied to the small embedding gradient instead
                logp = logits.detach().float()  # float32 logits: the same storage, overwritten by log p
                if not self._logits_in_place and logp.data_ptr() == logits.data_ptr():
                    logp = logp.clone()
                logp.sub_(torch.logsumexp(logp, dim=-1, keepdim=True))
                targets = chunk.unsqueeze(-1)
                z = reduce_nll(logp.gather(-1, targets).squeeze(-1), self.output)
                grad_logits = logp.exp().scatter_add_(-1, targets, torch.full_like(targets, -1.0, dtype=logp.dtype))
            try:
                (grad_emb,) = torch.autograd.grad(logits, emb, grad_outputs=grad_logits.to(logits.dtype))
            except RuntimeError as e:  # this model's last op saved its output: keep the logits intact
                if "inplace" not in str(e) or not self._logits_in_place:
                    raise
                self._logits_in_place = False
                return self.with_onehot_gradient(ids, allowed)
            grad_emb = grad_emb.float().mul_(-scale)
            del grad_logits, logits
            with torch.no_grad():
                # g = ∂z/∂e · E_allowedᵀ + scale · log p(allowed), as one fused batched matmul
                g = torch.baddbmm(
                    _columns(logp, allowed), grad_emb[:, 1:], table_t.expand(len(chunk), -1, -1), beta=scale
                )
                # (the last token's input feeds no scored position: its embedding gradient is 0, hence [:, 1:])
            zs.append(z.cpu())
            grads.append(g.cpu())
        self.n_scored += ids.shape[0]
        return self._checked(torch.cat(zs)), (torch.cat(grads) if len(grads) > 1 else grads[0])

    def _checked(self, z: torch.Tensor) -> torch.Tensor:
        if not torch.isfinite(z).all():
            bad = int((~torch.isfinite(z)).sum())
            raise FloatingPointError(
                f"{bad} sequences got a NaN/inf score: the model's weights or dtype are broken "
                "(try dtype float32) or the token ids are outside its vocabulary"
            )
        return z

    def score_numpy(self, ids: np.ndarray) -> np.ndarray:
        return self(torch.as_tensor(np.asarray(ids), dtype=torch.long)).numpy()


class ShardedScorer:
    """Scores a contiguous share of each batch per process; `gather([part])` must return every process's part
    in process order (e.g. accelerate.utils.gather_object). All processes must call it with the same ids."""

    def __init__(self, scorer: Scorer, index: int, n_processes: int, gather):
        self.scorer, self.index, self.n_processes, self.gather = scorer, index, n_processes, gather

    def __call__(self, ids) -> torch.Tensor:
        ids = torch.as_tensor(ids, dtype=torch.long)
        bounds = np.linspace(0, len(ids), self.n_processes + 1).round().astype(int)
        mine = self.scorer(ids[bounds[self.index] : bounds[self.index + 1]])
        return torch.cat(list(self.gather([mine])))
