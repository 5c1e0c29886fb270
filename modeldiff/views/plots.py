"""Figures for the run pages: ρ̃(z), a cross-evaluation's D histogram, and the paper's Figure 3 overlay.

Each function returns a matplotlib Figure (the Agg backend: no display needed); the caller saves
or logs it and closes it.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from modeldiff.method.outdist import OutputDistribution  # noqa: E402

SIDE_COLORS = {"A→B": "tab:blue", "B→A": "tab:orange"}


def _axes():
    with sns.axes_style("whitegrid"):  # scoped, so importing this module restyles nobody else's figures
        return plt.subplots(figsize=(7, 4))


def rho_z_figure(od: OutputDistribution, title: str = "") -> plt.Figure:
    """ln ρ̃(z) with its replicate band inside Z (where it is defined; ±1σ for files without a band) and Z shaded."""
    fig, ax = _axes()
    c, ln_rho = od.centers, od.ln_rho
    seen = np.isfinite(ln_rho)
    ax.plot(c[seen], ln_rho[seen], color="tab:blue", lw=1.5, label="ln ρ̃(z)")
    if od.ln_rho_lo is not None:
        # the band is of ln ρ̃ normalised inside Z: shift it onto ln ρ̃'s scale (a constant inside Z)
        with np.errstate(invalid="ignore"):  # −∞ − −∞ outside what was sampled: no band there
            shift = ln_rho - od.ln_rho_in_z()
        lo, hi = od.ln_rho_lo + shift, od.ln_rho_hi + shift
        label = f"{od.meta.get('band_level', 0.95):.0%} replicate band"
    else:
        lo, hi, label = ln_rho - od.ln_rho_std, ln_rho + od.ln_rho_std, "bootstrap ±1σ"
    band = seen & np.isfinite(hi)
    floor = ln_rho[seen].min() - 1.0  # an unbounded lower end (a replicate that never reached the bin) ends here
    ax.fill_between(
        c[band],
        np.maximum(np.nan_to_num(lo[band], nan=floor, neginf=floor), floor),
        hi[band],
        color="tab:blue",
        alpha=0.3,
        lw=0,
        label=label,
    )
    ax.axvspan(*od.z_range, color="tab:green", alpha=0.1, label="Z")
    empty = od.empty_bins_in_z
    if len(empty):
        ax.plot(c[empty], np.full(len(empty), ln_rho[seen].min()), "x", color="tab:red", label="empty bins in Z")
    ax.set(xlabel="z (mean NLL per token)", ylabel="ln ρ̃(z)  (Σρ = |Ω|)", title=title or "output distribution")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def d_hist_figure(draws: pd.DataFrame, title: str = "") -> plt.Figure:
    """Histogram of D = z_A − z_B over one side's draws, split by whether the other model's z is in Z."""
    fig, ax = _axes()
    where = draws["in_z_other"].map({True: "in Z", False: "outside Z"})
    sns.histplot(
        draws.assign(**{"other model's z": where}),
        x="D",
        hue="other model's z",
        multiple="stack",
        bins=60,
        ax=ax,
        hue_order=["in Z", "outside Z"],
        palette=["tab:blue", "tab:gray"],
    )
    ax.axvline(0.0, color="black", lw=1)
    ax.set(xlabel="D = z_A − z_B", ylabel="draws", title=title or "cross-evaluation")
    fig.tight_layout()
    return fig


def _interval_text(value: float, interval: list) -> str:
    end = lambda v: "∞" if v is None else f"{v:.3f}"  # noqa: E731
    return f"{value:.3f} [{end(interval[0])}, {end(interval[1])}]"


def _ratio_box(ax, ratio: dict):
    """The terms and the ratio with their intervals, in a corner of the overlay."""
    ci = ratio["ci"]
    lines = [f"{k} = {_interval_text(v, ci['terms'][k])}" for k, v in ratio["terms"].items()]
    lines.append("ratio 1 : " + " : ".join(_interval_text(v, i) for v, i in zip(ratio["ratio"][1:], ci["ratio"][1:])))
    ax.text(
        0.01,
        0.98,
        f"{ci['level']:.0%} intervals\n" + "\n".join(lines),
        transform=ax.transAxes,
        va="top",
        fontsize="x-small",
        family="monospace",
        bbox=dict(boxstyle="round", facecolor="white", alpha=0.8, lw=0.5),
    )


def d_overlay_figure(
    ab: pd.DataFrame, ba: pd.DataFrame, lam: float = 0.0, title: str = "", ratio: dict | None = None
) -> plt.Figure:
    """Paper Fig. 3: ρ̃_A→B(D) and ρ̃_B→A(D) over the draws whose other z is in Z, each divided by its |X̃|,
    so the areas left of −λ and right of λ are the four terms of the ratio; with `ratio` (ratio.json's record), the
    terms and the ratio with their intervals."""
    fig, ax = _axes()
    sides = {"A→B": ab.loc[ab["in_z_other"], "D"].to_numpy(), "B→A": ba.loc[ba["in_z_other"], "D"].to_numpy()}
    both = np.concatenate(list(sides.values()))
    edges = np.histogram_bin_edges(both, bins=60) if len(both) else np.linspace(-1, 1, 61)
    for name, d in sides.items():
        if len(d):
            ax.hist(
                d,
                bins=edges,
                weights=np.full(len(d), 1.0 / len(d)),
                histtype="stepfilled",
                alpha=0.45,
                color=SIDE_COLORS[name],
                label=f"{name} (|X̃| = {len(d)})",
            )
    ax.axvline(0.0, color="black", lw=1)
    if lam > 0:
        for x in (-lam, lam):
            ax.axvline(x, color="black", lw=1, ls="--")
    ax.set(xlabel="D = z_A − z_B", ylabel="fraction of |X̃|", title=title or "A→B and B→A")
    if ratio is not None:
        _ratio_box(ax, ratio)
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    return fig


def aggregates_figure(
    examples: pd.DataFrame, columns: list[str], labels: list[str], top: dict, bins: int = 40, title: str = ""
) -> plt.Figure:
    """LMdiff's corpus view (its Fig. 2), one panel per aggregate of a difference: the histogram over the
    examples, with the most different examples as black stripes under it."""
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns), 3.2), squeeze=False)
    for ax, col, label in zip(axes[0], columns, labels):
        v = examples[col].to_numpy(np.float64)
        v = v[np.isfinite(v)]
        ax.hist(v, bins=bins, color="tab:gray")
        marked = examples.set_index("example").loc[top.get(col, []), col].to_numpy(np.float64)
        ax.plot(marked, np.zeros(len(marked)), "|", color="black", ms=12, mew=1, label=f"{len(marked)} most different")
        if len(v) and v.min() < 0 < v.max():
            ax.axvline(0.0, color="black", lw=0.8)
        ax.set(xlabel=label, ylabel="examples")
    axes[0][0].legend(loc="best", fontsize="small")
    fig.suptitle(title or "per-example aggregates")
    fig.tight_layout()
    return fig


def r_d_figure(annotation: dict, title: str = "") -> plt.Figure:
    """Sec. 3.4: ρ(D) of the window's bins (bars, on the terms' scale: fraction of |X̃|) and the mean score r(D)
    over them (points with ±1 standard error of the annotation sample), with precision and recall in the legend."""
    fig, ax = _axes()
    bins = [b for b in annotation["bins"] if b["n_draws"] > 0]
    lo = np.array([b["D_lo"] for b in annotation["bins"]])
    hi = np.array([b["D_hi"] for b in annotation["bins"]])
    ax.bar(
        lo,
        [b["rho"] for b in annotation["bins"]],
        width=hi - lo,
        align="edge",
        color="tab:blue",
        alpha=0.35,
        edgecolor="tab:blue",
        label="ρ(D)",
    )
    ax.set(
        xlabel="D = z_A − z_B",
        ylabel="ρ(D)  (fraction of |X̃|)",
        title=title or f"annotation of {annotation['window']['text']}",
    )
    r_ax = ax.twinx()
    centres = [(b["D_lo"] + b["D_hi"]) / 2 for b in bins]
    r_ax.errorbar(
        centres,
        [b["r"] for b in bins],
        yerr=[b["r_se"] for b in bins],
        fmt="o-",
        color="tab:red",
        ms=4,
        capsize=2,
        label="r(D)",
    )
    r_ax.set(ylim=(-0.05, 1.05), ylabel="r(D)  (mean score)")
    r_ax.grid(False)
    handles = ax.get_legend_handles_labels()[0] + r_ax.get_legend_handles_labels()[0]
    note = (
        f"precision {annotation['precision']:.3f} ± {annotation['precision_se']:.3f}, "
        f"recall {annotation['recall']:.3f} ± {annotation['recall_se']:.3f}"
    )
    r_ax.legend(handles, ["ρ(D)", "r(D)"], loc="upper left", fontsize="small", title=note, title_fontsize="small")
    fig.tight_layout()
    return fig


def compare_ratio_figure(rows: list[dict], reference: str, title: str = "") -> plt.Figure:
    """Several models against one reference (Appendix B), one colour per model: left, the four terms on the scale the
    rows share (per likely input of A: they compare across models); right, each row's ratio to its PD_A→X (the same
    as the pair's own ratio). Points with their intervals."""
    labels = ["PD_A→X", "PA_A→X", "PA_X→A", "PD_X→A"]
    keys = ["PD_AX", "PA_AX", "PA_XA", "PD_XA"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11.0, 1.5 + 0.45 * 4 * len(rows)), sharey=True)
    step = 1.0 / (len(rows) + 1)

    def point(ax, value, interval, y, colour, label=None):
        lo, hi = interval
        err = [[value - lo if lo is not None else 0.0], [hi - value if hi is not None else 0.0]]
        ax.errorbar([value], [y], xerr=err, fmt="o", color=colour, capsize=3, label=label)

    for m, row in enumerate(rows):
        colour = f"C{m}"
        for j, k in enumerate(keys):
            y = j + (m + 1) * step
            point(left, row["terms"][k], row["ci"]["terms"][k], y, colour, row["model"] if j == 0 else None)
            point(right, row["ratio"][j], row["ci"]["ratio"][j], y, colour)
    left.set_yticks([j + 0.5 for j in range(len(keys))], labels)
    left.invert_yaxis()
    level = rows[0]["ci"]["level"] if rows else 0.95
    left.set(xlabel=f"count per likely input of A ({level:.0%} intervals)", title="terms, on A's scale")
    right.axvline(1.0, color="black", lw=0.8, ls=":")
    right.set(xlabel="ratio to PD_A→X", title="ratio")
    left.legend(loc="best", fontsize="small")
    fig.suptitle(title or f"{len(rows)} models against the reference A = {reference}")
    fig.tight_layout()
    return fig
