"""Scoring: z_M(x) = −(1/L) Σ_i log p_M(x_i | BOS, x_<i) for any Hugging Face causal LM.

Log-probabilities are taken in float32 over the model's *full* vocabulary (logit − logsumexp),
whatever dtype the model runs in. `output="sum_nll"` gives the summed NLL instead of the mean.
"""
from __future__ import annotations

import numpy as np
import torch

OUTPUTS = ("mean_nll", "sum_nll")


def token_logprobs_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per position, float32, without materialising a second [n, L, V] buffer."""
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def reduce_nll(token_logprobs: torch.Tensor, output: str) -> torch.Tensor:
    nll = -token_logprobs.sum(-1)
    return nll / token_logprobs.shape[-1] if output == "mean_nll" else nll


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
            chunk = ids[start:start + self.batch_size].to(self.device)
            logits = self.model(input_ids=self.with_bos(chunk), use_cache=False).logits[:, :-1]
            out.append(token_logprobs_from_logits(logits, chunk).cpu())
        self.n_scored += ids.shape[0]
        return torch.cat(out) if out else torch.empty(0, ids.shape[1])

    def __call__(self, ids) -> torch.Tensor:
        z = reduce_nll(self.token_logprobs(ids), self.output)
        if not torch.isfinite(z).all():
            bad = int((~torch.isfinite(z)).sum())
            raise FloatingPointError(
                f"{bad} sequences got a NaN/inf score: the model's weights or dtype are broken "
                "(try dtype float32) or the token ids are outside its vocabulary")
        return z

    def score_numpy(self, ids: np.ndarray) -> np.ndarray:
        return self(torch.as_tensor(np.asarray(ids), dtype=torch.long)).numpy()
