"""Derived models made in-process from a base model (e.g. the paper's noise-added copies, Sec. 4.3).

Used by `noise:` model refs and for calibrating the plagiarism check: the result must depend only on
the base weights and the seed, so noise is drawn on the CPU in float32, one parameter at a time.
"""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def add_weight_noise(model: torch.nn.Module, sigma: float, seed: int = 0, relative: bool = False) -> torch.nn.Module:
    """Adds N(0, σ²) to every floating parameter in place (σ·std(tensor) if `relative`) and returns the model.

    `named_parameters` yields a shared tensor once, so tied weights (lm_head = embeddings) get one draw and
    stay tied. A tensor with no spread (e.g. a norm's ones) gets no noise when `relative`.
    """
    sigma = float(sigma)
    if not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"weight noise sigma must be a finite number >= 0, got {sigma}")
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    for _, p in model.named_parameters():
        if not p.is_floating_point():
            continue
        noise = torch.randn(p.shape, generator=generator, dtype=torch.float32)
        scale = sigma * (p.detach().float().std(correction=0).item() if relative else 1.0)
        p.add_((noise * scale).to(device=p.device, dtype=p.dtype))
    return model
