"""The Model-diff method on input spaces, scorers and arrays: no MLflow, no Accelerate, no config files.

Stage 1 (output distribution): `space`, `scoring`, `kernels`, `tempering`, `reweighting`, `outdist`, or, the second
method, `ancestral`;
stage 2: `cross_eval`; stage 3: `normalize`; the toy task and exact enumeration to check all of them against:
`toy`, `enumeration`.

This file holds only what the config checks by name (it imports neither torch nor transformers): the kernel
registry with lazy built-in entries, and the allowed values of a few settings.
"""

from __future__ import annotations

import math

from modeldiff.plugins import Registry

# sampler.kernel: name -> Kernel subclass (see kernels.py; `@register_kernel` adds one, and any module:attr works)
KERNELS = Registry(
    "sampler.kernel",
    {
        "mh_uniform": "modeldiff.method.kernels:MHUniform",
        "gwg": "modeldiff.method.kernels:GibbsWithGradients",
        "lm_proposal": "modeldiff.method.kernels:LMProposal",
    },
)
SAMPLERS = ("tempering", "ancestral")  # sampler.method: parallel tempering + WHAM, or ancestral importance sampling
OUTPUTS = ("mean_nll", "sum_nll")  # z: the mean per-token NLL (the paper's) or the summed NLL
WITHIN_BIN = ("reweight", "uniform")  # how cross_eval picks an input inside a drawn bin

# The rounding error of the mean-NLL z by the dtype the model runs in (log-probs are float32, z sums them in float64):
# the median |z − z_float64| over 128 random length-8 inputs of SmolLM2-135M (float32 2.0e-6, bfloat16 3.1e-2,
# float16 3.0e-3; the largest 4e-5, 0.6, 0.1). A tempering temperature below it makes Metropolis and swap decisions
# follow rounding noise instead of z.
Z_RESOLUTION = {"float32": 2e-6, "bfloat16": 3e-2, "float16": 3e-3, "float64": 1e-12}


def z_resolution(dtype: str, output: str, length: int) -> float:
    """z's rounding error for models in `dtype`; the summed NLL carries L times the mean's."""
    return Z_RESOLUTION[dtype] * (length if output == "sum_nll" else 1)


def check_z_range(z_range) -> tuple[float, float]:
    lo, hi = (float(v) for v in z_range)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"z_range must be two finite numbers, got {list(z_range)}")
    if lo >= hi:
        raise ValueError(f"z_range is reversed or empty: [{lo}, {hi}]; give it as [z_min, z_max] with z_min < z_max")
    return lo, hi


def ancestral_rules(temperatures, n_samples: int, n_blocks: int, batch_size: int) -> list[tuple[str, bool, str]]:
    """(key under sampler.ancestral, ok, requirement) for ancestral sampling's settings: the config's checks and
    `AncestralSettings`' own. Every block holds the same number of samples of every temperature."""
    temps_ok = len(temperatures) >= 1 and all(
        isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0 for t in temperatures
    )
    per_block = n_blocks * max(len(temperatures), 1)
    return [
        ("temperatures", temps_ok, "a non-empty list of temperatures > 0, e.g. [1.0, 1.5]"),
        ("n_blocks", n_blocks >= 2, ">= 2 (blocks are the bootstrap's independent units)"),
        (
            "n_samples",
            n_samples >= per_block and n_samples % per_block == 0,
            f"a positive multiple of n_blocks × len(temperatures) = {per_block} "
            f"(e.g. {max(1, round(n_samples / per_block)) * per_block})",
        ),
        ("batch_size", batch_size >= 1, ">= 1"),
    ]
