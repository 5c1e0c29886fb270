"""The white-box weight tests on SmolLM2-135M-Instruct: how long they take against its σ = 10⁻³ noise copy
(`noise:1e-3:smollm2`), against the same copy with every MLP block's hidden units relabelled (the same function), and
against the copy with units and heads relabelled, with the p-values they give. The baseline, measured in the same
run, is loading SmolLM2 (dequantising its GGUF; cached under $MODELDIFF_CACHE after the first run).

    python benchmarks/whitebox_smollm2.py                              # the config's permutations and simulations
    python benchmarks/whitebox_smollm2.py --overrides "plagiarism.permutations=19 plagiarism.simulations=19"
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from modeldiff.analysis.relatedness import HEADS, UNITS, apply_symmetry, random_symmetry, symmetries, weight_relatedness
from modeldiff.config import load_config
from modeldiff.models import load_model


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--overrides", default="")
    args = p.parse_args()
    cfg = load_config("smollm2", args.overrides)
    t0 = time.perf_counter()
    parent = load_model("smollm2", cfg).model
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    copy_ = load_model("noise:1e-3:smollm2", cfg).model
    t_copy = time.perf_counter() - t0
    sym = symmetries(copy_)
    units = apply_symmetry(copy.deepcopy(copy_), random_symmetry(sym, np.random.default_rng(0), (UNITS,)))
    both = apply_symmetry(copy.deepcopy(copy_), random_symmetry(sym, np.random.default_rng(1), (UNITS, HEADS)))
    pc = cfg.plagiarism
    print(
        f"SmolLM2 loaded in {t_load:.1f} s, its noise copy in {t_copy:.1f} s; tests with {pc.permutations} "
        f"permutations, {pc.simulations} simulations, {torch.get_num_threads()} thread(s)"
    )
    for name, other in (("noise:1e-3:smollm2", copy_), ("  units relabelled", units), ("  units+heads", both)):
        t0 = time.perf_counter()
        r = weight_relatedness(parent, other, int(pc.permutations), int(pc.simulations), seed=int(cfg.seed))
        dt = time.perf_counter() - t0
        print(
            f"{name:20s} {dt:6.1f} s ({dt / t_load:.2f}x loading)  p = {r.p_value:.3g} (cosine {r.cosine_p_value:.3g}, "
            f"matching {r.match_p_value:.3g}), δ-structure p = {r.structure_p_value:.3g}, "
            f"direction z = {r.direction_z:+.1f}, units moved {r.units_moved:.0%}, heads moved {r.heads_moved:.0%}",
            flush=True,
        )


if __name__ == "__main__":
    main()
