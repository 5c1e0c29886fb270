"""The Model-diff method on input spaces, scorers and arrays: no MLflow, no Accelerate, no config files.

Stage 1 (output distribution): `space`, `scoring`, `kernels`, `tempering`, `reweighting`, `outdist`;
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
OUTPUTS = ("mean_nll", "sum_nll")  # z: the mean per-token NLL (the paper's) or the summed NLL
WITHIN_BIN = ("reweight", "uniform")  # how cross_eval picks an input inside a drawn bin


def check_z_range(z_range) -> tuple[float, float]:
    lo, hi = (float(v) for v in z_range)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"z_range must be two finite numbers, got {list(z_range)}")
    if lo >= hi:
        raise ValueError(f"z_range is reversed or empty: [{lo}, {hi}]; give it as [z_min, z_max] with z_min < z_max")
    return lo, hi
