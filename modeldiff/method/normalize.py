"""Stage 3: normalise draw counts into PD_A→B : PA_A→B : PA_B→A : PD_B→A (paper Eq. 5–7).

    PD_AB = #{A draws: D < −λ} / |X̃_A→B|     PA_AB = #{A draws: D > λ} / |X̃_A→B|
    PA_BA = #{B draws: D < −λ} / |X̃_B→A|     PD_BA = #{B draws: D > λ} / |X̃_B→A|
with |X̃_A→B| the number of A draws whose z_B lies in Z (and vice versa). Both denominators
estimate |X_A ∩ X_B| on the same scale, so the four terms compare; the ratio divides by PD_AB.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

TERMS = ("PD_AB", "PA_AB", "PA_BA", "PD_BA")


def _side(d: np.ndarray, in_other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = np.asarray(d, dtype=np.float64)
    in_other = np.asarray(in_other, dtype=bool)
    if d.shape != in_other.shape or d.ndim != 1:
        raise ValueError("D and in_z_other must be 1-d arrays of the same length")
    if not np.isfinite(d).all():
        raise ValueError("D contains NaN/inf: rescore the draws (a model produced non-finite NLLs)")
    return d, in_other


def side_masks(d: np.ndarray, lam: float, side: str) -> dict[str, np.ndarray]:
    """The numerators' draws of one side: A→B's PD (D < −λ) and PA (D > λ), or B→A's PA (D < −λ) and PD (D > λ)."""
    below, above = d < -lam, d > lam
    if side == "AB":
        return {"PD_AB": below, "PA_AB": above}
    if side == "BA":
        return {"PA_BA": below, "PD_BA": above}
    raise ValueError(f"side must be 'AB' or 'BA', got {side!r}")


def ratio_from_draws(d_ab, in_ab, d_ba, in_ba, lam: float = 0.0) -> dict:
    """The `ratio.json` record for one pair of cross-evaluations."""
    if lam < 0:
        raise ValueError(f"lambda must be >= 0, got {lam}")
    d_ab, in_ab = _side(d_ab, in_ab)
    d_ba, in_ba = _side(d_ba, in_ba)
    n_ab, n_ba = int(in_ab.sum()), int(in_ba.sum())
    if n_ab == 0 or n_ba == 0:
        side = "A→B" if n_ab == 0 else "B→A"
        raise ValueError(
            f"no {side} draw has the other model's z inside z_range, so the terms cannot be "
            "normalised: widen z_range or check that the two models are comparable"
        )
    masks = {**side_masks(d_ab, lam, "AB"), **side_masks(d_ba, lam, "BA")}
    counts_terms = {k: int(masks[k].sum()) for k in TERMS}
    terms = {k: counts_terms[k] / (n_ab if k.endswith("AB") else n_ba) for k in TERMS}
    pd_ab = terms["PD_AB"]
    ratio = [terms[k] / pd_ab if pd_ab > 0 else float("nan") for k in TERMS]
    return {
        "lambda": float(lam),
        "terms": terms,
        "ratio": ratio,
        "counts": {
            "n_A": int(len(d_ab)),
            "n_A_in_B": n_ab,
            "n_B": int(len(d_ba)),
            "n_B_in_A": n_ba,
            **{f"{k}_count": v for k, v in counts_terms.items()},
        },
        "D_range": {"A": [float(d_ab.min()), float(d_ab.max())], "B": [float(d_ba.min()), float(d_ba.max())]},
    }


def ratio_from_frames(ab: pd.DataFrame, ba: pd.DataFrame, lam: float = 0.0) -> dict:
    return ratio_from_draws(ab["D"], ab["in_z_other"], ba["D"], ba["in_z_other"], lam)


def lambda_sweep(d_ab, in_ab, d_ba, in_ba, lambdas=None, n: int = 21) -> pd.DataFrame:
    """Terms and ratio for a grid of λ (default: 0 to the largest |D| seen)."""
    if lambdas is None:
        top = max(np.abs(np.asarray(d_ab)).max(), np.abs(np.asarray(d_ba)).max())
        lambdas = np.linspace(0.0, float(top), n)
    rows = []
    for lam in lambdas:
        r = ratio_from_draws(d_ab, in_ab, d_ba, in_ba, float(lam))
        rows.append({"lambda": float(lam), **r["terms"], **{f"ratio_{k}": v for k, v in zip(TERMS, r["ratio"])}})
    return pd.DataFrame(rows)


def summarize_repeats(results: list[dict]) -> dict:
    """Mean ± std (ddof=1) of terms and ratio over seed repeats."""
    if not results:
        raise ValueError("no repeats to summarise")
    terms = np.array([[r["terms"][k] for k in TERMS] for r in results])
    ratio = np.array([r["ratio"] for r in results])
    ddof = 1 if len(results) > 1 else 0
    return {
        "n_repeats": len(results),
        "terms_mean": dict(zip(TERMS, terms.mean(0).tolist())),
        "terms_std": dict(zip(TERMS, terms.std(0, ddof=ddof).tolist())),
        "ratio_mean": ratio.mean(0).tolist(),
        "ratio_std": ratio.std(0, ddof=ddof).tolist(),
    }


def multi_model_terms(forward: dict[str, tuple], backward: dict[str, tuple], lam: float = 0.0) -> pd.DataFrame:
    """Several models against one reference A (paper Appendix B, Eq. 14–17).

    `forward[X] = (D, in_z_X)` for the *same* A draws evaluated by each model X (D = z_A − z_X);
    `backward[X] = (D, in_z_A)` for X's own draws evaluated by A. A→X terms share the
    denominator |X̃_A| (Eq. 14–15); X→A terms are divided by |X̃_X→A| and rescaled by |X̃_A→X|/|X̃_A|
    (Eq. 16–17), so every row is on the common scale 1/|X_A| and models compare with each other.
    """
    sizes = {len(np.asarray(v[0])) for v in forward.values()}
    if len(sizes) != 1:
        raise ValueError("forward evaluations must use the same A draws (equal lengths) for every model")
    rows = []
    for name, (d_fwd, in_fwd) in forward.items():
        if name not in backward:
            raise ValueError(f"model {name!r} has an A→{name} evaluation but no {name}→A one")
        d_fwd, in_fwd = _side(d_fwd, in_fwd)
        d_bwd, in_bwd = _side(*backward[name])
        n_a = len(d_fwd)
        n_a_in_x, n_x_in_a = int(in_fwd.sum()), int(in_bwd.sum())
        if n_x_in_a == 0:
            raise ValueError(f"no {name}→A draw has z_A inside z_range: cannot rescale {name}→A")
        scale = n_a_in_x / n_a / n_x_in_a
        rows.append(
            {
                "model": name,
                "PD_AX": (d_fwd < -lam).sum() / n_a,
                "PA_AX": (d_fwd > lam).sum() / n_a,
                "PA_XA": (d_bwd < -lam).sum() * scale,
                "PD_XA": (d_bwd > lam).sum() * scale,
                "X_AX_fraction": n_a_in_x / n_a,
            }
        )
    return pd.DataFrame(rows)
