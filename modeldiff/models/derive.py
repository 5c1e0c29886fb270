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


@torch.no_grad()
def prune_smallest(model: torch.nn.Module, fraction: float) -> torch.nn.Module:
    """Magnitude pruning in place: in every weight matrix (2-D floating parameter) the `fraction` of entries with the
    smallest |w| are set to zero (ties at the cut may prune a few more). Vectors (biases, norms) are kept."""
    if not 0 <= fraction < 1:
        raise ValueError(f"pruning fraction must be in [0, 1), got {fraction}")
    for _, p in model.named_parameters():
        if p.is_floating_point() and p.dim() == 2 and fraction > 0:
            k = max(1, int(fraction * p.numel()))
            cut = p.detach().abs().flatten().float().kthvalue(k).values
            p.masked_fill_(p.abs() <= cut.to(p.dtype), 0.0)
    return model


@torch.no_grad()
def requantise(model: torch.nn.Module, quant_type: str = "Q8_0") -> torch.nn.Module:
    """Every weight matrix quantised to a GGML type (gguf's reference quantiser) and back, in place: what a model
    republished as a re-quantised GGUF holds. Matrices whose rows do not fill whole quantisation blocks are kept."""
    try:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
        from gguf.quants import dequantize, quantize
    except ImportError as e:
        raise ValueError("re-quantising needs the gguf package: pip install gguf") from e
    qtype = GGMLQuantizationType[quant_type]
    block = GGML_QUANT_SIZES[qtype][0]
    for _, p in model.named_parameters():
        if p.is_floating_point() and p.dim() == 2 and p.shape[-1] % block == 0:
            w = p.detach().float().cpu().numpy()
            back = dequantize(quantize(w, qtype), qtype).reshape(w.shape)
            p.copy_(torch.from_numpy(back).to(device=p.device, dtype=p.dtype))
    return model
