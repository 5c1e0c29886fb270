"""Sec. 3.4: annotate the inputs in a D window, then precision (Eq. 8) and recall (Eq. 9).

A cross_eval run's draws are i.i.d. from the sampling model's meaningful set X_src (∝ ρ̃ inside Z).
The draws whose D lies in a window W are binned in D; people score a stratified sample of each bin
(an annotation sheet), or an automatic annotator scores them all. With r(b) the mean score of bin b
and ρ(b) = #{draws in b} / |X̃| (|X̃| = draws whose other z is in Z, the denominator of the ratio's
terms, so ρ is on the terms' scale):

    precision = Σ_W r(b) ρ(b) / Σ_W ρ(b)      recall = Σ_W r(b) ρ(b)

Recall is on the terms' scale (for the default window of an A→B run, Σ_W ρ(b) is PD_A→B), so the
recall of an A→B and of a B→A run compare like PD_A→B and PD_B→A. A bin with draws but no scored
input is an error, never a silent zero. Standard errors count independent inputs, not draws: they are the spread
over the cross_eval run's replicates (modeldiff.method.uncertainty: stage 1's units resampled, the draws reweighted
and resampled, r(b) recomputed from the resampled scored draws, so a sampled sheet's own sampling is included); a
run without replicates falls back to resampling its distinct inputs, each with all its draws.

Annotators are a registry by name (`modeldiff.analysis.ANNOTATORS`): `human` (no automatic scores: export a sheet),
`toy_rule`, `judge`; any `module:function` is imported and called with the rows to score.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import importlib.util
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from modeldiff.method.scoring import Scorer
from modeldiff.method.uncertainty import SideReplicates, resampled_weights
from modeldiff.models import LoadedModel, check_comparable, load_model, toy_task
from modeldiff.plugins import MODULE_ATTR

from . import ANNOTATORS

# The sheet's columns and their types; people fill `score` only.
SHEET_COLUMNS = {
    "id": str,
    "bin": int,
    "D": float,
    "z_A": float,
    "z_B": float,
    "n_draws": int,
    "text": str,
    "tokens": str,
    "score": float,
}
REQUIRED_COLUMNS = ("id", "score")
WINDOW = re.compile(r"^\s*(?P<open>[\[(]?)\s*(?P<lo>[^,\[\]()]+?)\s*,\s*(?P<hi>[^,\[\]()]+?)\s*(?P<close>[\])]?)\s*$")
WINDOW_HELP = (
    '"lo,hi" (the closed interval [lo, hi], e.g. "-1,-0.6"), with brackets to choose open ends '
    '("(-inf,0)", "[0.6,1]"), or "" for the run\'s PD side'
)


# ---------------------------------------------------------------------------------------------- windows and bins


@dataclass(frozen=True)
class Window:
    lo: float
    hi: float
    lo_closed: bool = True
    hi_closed: bool = True

    def contains(self, d) -> np.ndarray:
        d = np.asarray(d, dtype=np.float64)
        above = d >= self.lo if self.lo_closed else d > self.lo
        below = d <= self.hi if self.hi_closed else d < self.hi
        return above & below

    @property
    def text(self) -> str:
        return f"{'[' if self.lo_closed else '('}{self.lo!r}, {self.hi!r}{']' if self.hi_closed else ')'}"

    def record(self) -> dict:
        """JSON-safe (infinite ends are null)."""
        finite = lambda v: v if math.isfinite(v) else None  # noqa: E731
        return {
            "lo": finite(self.lo),
            "hi": finite(self.hi),
            "lo_closed": self.lo_closed,
            "hi_closed": self.hi_closed,
            "text": self.text,
        }


def pd_window(direction: str, lam: float) -> Window:
    """The PD side of a cross_eval run: D < −λ for A→B (A's inputs that B scores worse), D > λ for B→A."""
    if direction == "AB":
        return Window(-math.inf, -float(lam) + 0.0, False, False)
    if direction == "BA":
        return Window(float(lam), math.inf, False, False)
    raise ValueError(
        f"direction must be AB or BA, got {direction!r}: pass a cross_eval run (it carries the tag modeldiff.direction)"
    )


def parse_window(text: str, direction: str, lam: float) -> Window:
    """`""` -> the run's PD side; `"lo,hi"` -> [lo, hi]; brackets choose open or closed ends."""
    if not str(text).strip():
        return pd_window(direction, lam)
    m = WINDOW.match(str(text))
    if not m or bool(m["open"]) != bool(m["close"]):
        raise ValueError(f"window {text!r} is not a D interval: write {WINDOW_HELP}")
    try:
        lo, hi = float(m["lo"]), float(m["hi"])
    except ValueError:
        raise ValueError(f"window {text!r} has an end that is not a number: write {WINDOW_HELP}") from None
    if math.isnan(lo) or math.isnan(hi) or lo >= hi:
        raise ValueError(f'window {text!r} is empty or reversed: give it as lo,hi with lo < hi (e.g. "-1,-0.6")')
    return Window(lo, hi, m["open"] != "(", m["close"] != ")")


def d_edges(window: Window, d: np.ndarray, width: float) -> np.ndarray:
    """Bins of `width` over the window's draws `d`: a finite window is split into equal bins of about `width`
    (its ends are edges); an open-ended one is tiled from its finite end (from 0 if none) to the furthest draw."""
    if width <= 0:
        raise ValueError(f"annotate.bin_width must be > 0, got {width}")
    lo, hi = window.lo, window.hi
    count = lambda span: max(1, math.ceil(span / width - 1e-9))  # noqa: E731
    if math.isfinite(lo) and math.isfinite(hi):
        return np.linspace(lo, hi, count(hi - lo) + 1)
    if math.isfinite(hi):
        return hi - width * np.arange(count(hi - d.min()), -1, -1)
    if math.isfinite(lo):
        return lo + width * np.arange(count(d.max() - lo) + 1)
    first = math.floor(d.min() / width)
    return width * np.arange(first, max(first + 1, math.ceil(d.max() / width)) + 1)


def bin_index(d: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(edges, d, side="right") - 1, 0, len(edges) - 2)


# ---------------------------------------------------------------------------------------------- selection


@dataclass
class Selection:
    """The inputs to score in one window of one cross_eval run, and the counts the estimate needs.

    `rows` holds one row per distinct input: id, bin, D, z_A, z_B, in_z_other, n_draws (how many of the
    bin's selected draws it stands for), tokens (int arrays) and text."""

    window: Window
    edges: np.ndarray
    rows: pd.DataFrame
    n_draws: int  # all draws of the run
    n_in_z_other: int  # |X̃|
    bin_draws: np.ndarray  # draws in the window per bin
    bin_draws_in_z: np.ndarray  # of those, draws whose other z is in Z
    per_bin: int  # draws sampled per bin (0: all)
    # every draw of the run, grouped by (input, selected): key (the representative, or a number per distinct
    # input), bin (−1 outside the window), in_z_other, selected, n (draws), row (in `rows`, −1 if not selected)
    groups: pd.DataFrame

    @property
    def n_bins(self) -> int:
        return len(self.edges) - 1


def select(
    draws: pd.DataFrame, window: Window, bin_width: float, per_bin: int = 0, seed: int = 0, id_prefix: str = ""
) -> Selection:
    """The draws in `window`, binned in D; from each bin `per_bin` draws uniformly without replacement (0: all),
    grouped by input. Ids are `<id_prefix><draw>` with the input's first selected draw, so they are stable for
    one run, window, bin width, per_bin and seed."""
    if per_bin < 0:
        raise ValueError(f"annotate.per_bin must be >= 0 (0 = every draw in the window), got {per_bin}")
    d = draws["D"].to_numpy(np.float64)
    in_other = draws["in_z_other"].to_numpy(bool)
    n_in = int(in_other.sum())
    if n_in == 0:
        raise ValueError(
            "no draw has the other model's z inside z_range, so ρ(D) cannot be normalised: widen "
            "z_range or check that the two models are comparable"
        )
    inside = np.flatnonzero(window.contains(d))
    if len(inside) == 0:
        raise ValueError(
            f"no draw has D in the window {window.text} (the draws' D range is [{d.min():.4g}, "
            f"{d.max():.4g}]): pick a window inside it"
        )
    edges = d_edges(window, d[inside], float(bin_width))
    b = bin_index(d[inside], edges)
    n_bins = len(edges) - 1
    rng = np.random.default_rng(seed)
    chosen = []
    for k in range(n_bins):
        rows = inside[b == k]
        if per_bin and len(rows) > per_bin:
            rows = np.sort(rng.choice(rows, size=per_bin, replace=False))
        chosen.append(rows)
    chosen = np.concatenate(chosen)
    picked = draws.iloc[chosen].reset_index(drop=True)
    draw_no = picked["draw"].to_numpy() if "draw" in picked else chosen
    keys = (
        draws["representative"].to_numpy()
        if "representative" in draws
        else pd.factorize(pd.Series([tuple(map(int, t)) for t in draws["tokens"]]))[0]
    )
    key = keys[chosen]
    text = picked["text"] if "text" in picked else pd.Series([" ".join(map(str, t)) for t in picked["tokens"]])
    frame = pd.DataFrame(
        {
            "key": key,
            "draw": draw_no,
            "bin": bin_index(picked["D"].to_numpy(np.float64), edges),
            "D": picked["D"].to_numpy(np.float64),
            "z_A": picked["z_A"].to_numpy(np.float64),
            "z_B": picked["z_B"].to_numpy(np.float64),
            "in_z_other": picked["in_z_other"].to_numpy(bool),
            "tokens": [np.asarray(t, dtype=np.int64) for t in picked["tokens"]],
            "text": text.to_numpy(),
        }
    )
    rows = (
        frame.groupby("key", sort=False)
        .agg(
            draw=("draw", "min"),
            bin=("bin", "first"),
            D=("D", "first"),
            z_A=("z_A", "first"),
            z_B=("z_B", "first"),
            in_z_other=("in_z_other", "first"),
            n_draws=("draw", "size"),
            tokens=("tokens", "first"),
            text=("text", "first"),
        )
        .sort_values(["bin", "D", "draw"], kind="stable")
    )
    row_keys = rows.index.to_numpy()
    rows = rows.reset_index(drop=True)
    rows.insert(0, "id", [f"{id_prefix}{int(i)}" for i in rows.pop("draw")])
    rows["text"] = rows["text"].astype(str)
    in_w_other = in_other[inside]
    draw_bin = np.full(len(d), -1)
    draw_bin[inside] = b
    selected = np.zeros(len(d), dtype=bool)
    selected[chosen] = True
    groups = (
        pd.DataFrame({"key": keys, "bin": draw_bin, "in_z_other": in_other, "selected": selected})
        .groupby(["key", "selected"], sort=True)
        .agg(bin=("bin", "first"), in_z_other=("in_z_other", "first"), n=("bin", "size"))
        .reset_index()
    )
    row_of = pd.Series(np.arange(len(row_keys)), index=row_keys)
    groups["row"] = np.where(groups["selected"], row_of.reindex(groups["key"]).fillna(-1).to_numpy(), -1).astype(int)
    return Selection(
        window,
        edges,
        rows,
        n_draws=len(d),
        n_in_z_other=n_in,
        bin_draws=np.bincount(b, minlength=n_bins),
        bin_draws_in_z=np.bincount(b, weights=in_w_other, minlength=n_bins).astype(np.int64),
        per_bin=int(per_bin),
        groups=groups,
    )


# ---------------------------------------------------------------------------------------------- sheets


def to_sheet(selection: Selection, scores=None) -> pd.DataFrame:
    """The annotation sheet: one row per input, `score` empty (NaN) unless given."""
    rows = selection.rows
    sheet = pd.DataFrame(
        {
            "id": rows["id"].astype(str),
            "bin": rows["bin"].astype(np.int64),
            "D": rows["D"],
            "z_A": rows["z_A"],
            "z_B": rows["z_B"],
            "n_draws": rows["n_draws"].astype(np.int64),
            "text": rows["text"].astype(str),
            "tokens": pd.Series([" ".join(map(str, t)) for t in rows["tokens"]], dtype=str),
            "score": np.full(len(rows), np.nan) if scores is None else np.asarray(scores, dtype=np.float64),
        }
    )
    return sheet


def _cell(value) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else repr(float(value))  # repr: floats read back exactly
    return str(value)


def write_sheet(sheet: pd.DataFrame, path: str | Path) -> Path:
    """CSV (UTF-8 with a byte-order mark, so spreadsheets read unicode; RFC 4180 quoting keeps commas, quotes
    and newlines inside cells); floats at full precision, an unfilled score as an empty cell."""
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8-sig") as f:
        w = csv.writer(f, lineterminator="\r\n")
        w.writerow(sheet.columns)
        for row in sheet.itertuples(index=False):
            w.writerow([_cell(v) for v in row])
    return path


def _where(row: int, ident: str | None = None) -> str:
    return f"data row {row}" + (f" (id {ident!r})" if ident else "")


def parse_score(value, row: int, ident: str | None = None, source: str = "the sheet") -> float:
    """One score: a number in [0, 1], or NaN for an empty cell. `row` is 1-based among the data rows."""
    if value is None or isinstance(value, str) and not value.strip():
        return math.nan
    try:
        score = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{source}, {_where(row, ident)}: score {value!r} is not a number: write a number from 0 "
            "(bad) to 1 (good), with a decimal point"
        ) from None
    if not 0.0 <= score <= 1.0:  # also NaN and inf
        raise ValueError(
            f"{source}, {_where(row, ident)}: score {value!r} is outside [0, 1]: scores go from 0 (bad) to 1 (good)"
        )
    return score


def read_sheet(path: str | Path) -> pd.DataFrame:
    """A filled (or unfilled) sheet, checked row by row; rows are numbered 1.. from the first row under the header.

    Needs the columns id and score; the exported ones keep their types, other columns are kept as text."""
    path = Path(path)
    source = f"annotation sheet {str(path)!r}"
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            records = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"cannot read {source} ({e}): pass the CSV exported by annotate, saved as UTF-8 CSV") from None
    if not records:
        raise ValueError(f"{source} is empty: pass the CSV exported by annotate with its header row")
    header = [h.strip() for h in records[0]]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ValueError(
            f"{source} has no column {missing[0]!r} (columns: {', '.join(header)}): keep the exported "
            "header row (id ... score) and save the sheet as comma-separated CSV"
        )
    if len(set(header)) != len(header):
        dup = next(h for h in header if header.count(h) > 1)
        raise ValueError(f"{source} has the column {dup!r} twice: keep one")
    columns = {h: [] for h in header}
    seen: dict[str, int] = {}
    data = records[1:]
    while data and not any(c.strip() for c in data[-1]):
        data.pop()  # blank lines at the end (spreadsheets leave some); one in between is a row without an id
    for row, record in enumerate(data, start=1):
        if len(record) != len(header):
            raise ValueError(
                f"{source}, {_where(row)}: {len(record)} cells under a header of {len(header)}: "
                "quote cells that contain commas, or re-export the sheet"
            )
        cells = dict(zip(header, record))
        ident = cells["id"]
        if not ident.strip():
            raise ValueError(f"{source}, {_where(row)}: the id is empty: restore it from the exported sheet")
        if ident in seen:
            raise ValueError(
                f"{source}, {_where(row, ident)}: the id repeats data row {seen[ident]}: keep one row per id"
            )
        seen[ident] = row
        for name, cell in cells.items():
            kind = SHEET_COLUMNS.get(name, str)
            if name == "score":
                value = parse_score(cell, row, ident, source)
            elif kind is str:
                value = cell
            else:
                try:
                    value = kind(cell)
                except ValueError:
                    raise ValueError(
                        f"{source}, {_where(row, ident)}: column {name!r} holds {cell!r}, not a "
                        f"{kind.__name__}: restore it from the exported sheet (only score is to be "
                        "filled)"
                    ) from None
            columns[name].append(value)
    frame = pd.DataFrame(columns)
    for name in header:
        kind = SHEET_COLUMNS.get(name, str)
        frame[name] = frame[name].astype({str: str, int: np.int64, float: np.float64}[kind])
    return frame


def check_scores(sheet: pd.DataFrame, selection: Selection, source: str = "the sheet") -> np.ndarray:
    """The sheet's scores in the order of the selection's rows; every selected input scored, nothing else."""
    wanted = selection.rows["id"].tolist()
    position = {ident: i for i, ident in enumerate(wanted)}
    scores = np.full(len(wanted), np.nan)
    for row, (ident, score) in enumerate(zip(sheet["id"], sheet["score"]), start=1):
        if ident not in position:
            raise ValueError(
                f"{source}, {_where(row, ident)}: unknown id, not one of the {len(wanted)} inputs this "
                "cross_eval run and window select: pass the window, config and overrides of the "
                "export, and the sheet of this run"
            )
        if math.isnan(score):
            raise ValueError(f"{source}, {_where(row, ident)}: no score: fill in a number from 0 (bad) to 1 (good)")
        scores[position[ident]] = score
    absent = [i for i, s in zip(wanted, scores) if math.isnan(s)]
    if absent:
        shown = ", ".join(absent[:5]) + (", ..." if len(absent) > 5 else "")
        raise ValueError(
            f"{source} has no row for {len(absent)} of the {len(wanted)} selected inputs (ids {shown}): "
            "restore their rows from the exported sheet and score them"
        )
    return scores


def sheet_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------- estimate


def _group_weights(selection: Selection, replicates: SideReplicates | None, n_replicates: int, seed: int) -> np.ndarray:
    """[R, n_groups] weights of the draw groups per replicate: the run's stage-1 replicates through stage 2 when
    given; else its distinct inputs resampled, each with all its draws (stage 1 unknown: inputs as the units)."""
    g = selection.groups
    counts = g["n"].to_numpy(np.float64)
    if replicates is not None:
        rng = np.random.default_rng([seed, 3])
        return resampled_weights(counts, replicates.of_draws(g["key"].to_numpy()), rng)
    inputs, input_of = np.unique(g["key"].to_numpy(), return_inverse=True)
    rng = np.random.default_rng([seed, 4])
    picked = rng.multinomial(len(inputs), np.full(len(inputs), 1.0 / len(inputs)), size=n_replicates)
    return picked[:, input_of] * counts


def _replicate_estimates(selection: Selection, s: np.ndarray, r: np.ndarray, weights: np.ndarray):
    """(precision, recall, r per bin) per replicate: bin masses from all the window's draws, r(b) from the scored
    ones (where a replicate keeps no scored draw of a bin, its r(b) stays the estimate's)."""
    g = selection.groups
    in_window = g["bin"].to_numpy() >= 0
    onehot = np.zeros((len(g), selection.n_bins))
    onehot[np.flatnonzero(in_window), g["bin"].to_numpy()[in_window]] = 1.0
    selected = g["selected"].to_numpy(np.float64)
    score = np.where(g["row"].to_numpy() >= 0, s[g["row"].to_numpy()], 0.0)
    mass = weights @ onehot
    scored = (weights * selected) @ onehot
    with np.errstate(invalid="ignore", divide="ignore"):
        r_rep = np.where(scored > 0, ((weights * selected * score) @ onehot) / scored, np.nan_to_num(r)[None, :])
        good = (r_rep * mass).sum(1)
        return good / mass.sum(1), good / (weights @ g["in_z_other"].to_numpy(np.float64)), r_rep


def estimate(
    selection: Selection,
    scores,
    replicates: SideReplicates | None = None,
    n_replicates: int = 200,
    seed: int = 0,
) -> dict:
    """Precision, recall (terms' scale), their standard errors and r(D) per bin from the selected rows' scores.
    Standard errors are the spread over `replicates` (the cross_eval run's), or over resamples of the distinct
    inputs when there are none."""
    rows = selection.rows
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (len(rows),) or not np.all((s >= 0) & (s <= 1)):
        raise ValueError("scores must be one number in [0, 1] per selected input")
    n_bins, c = selection.n_bins, selection.bin_draws.astype(np.float64)
    b = rows["bin"].to_numpy()
    w = rows["n_draws"].to_numpy(np.float64)
    m = np.bincount(b, weights=w, minlength=n_bins)
    unscored = np.flatnonzero((c > 0) & (m == 0))
    if len(unscored):
        shown = ", ".join(f"[{selection.edges[k]:.4g}, {selection.edges[k + 1]:.4g}]" for k in unscored[:5])
        raise ValueError(
            f"{len(unscored)} D bins of the window {selection.window.text} have draws but no scored "
            f"input ({shown}): score at least one input per bin (annotate.per_bin >= 1)"
        )
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.bincount(b, weights=w * s, minlength=n_bins) / m  # NaN for bins without draws
    total, n_in = c.sum(), selection.n_in_z_other
    tp = float(np.nansum(r * c))  # Σ r(b) · count(b): the window's "good" draws
    precision, recall = tp / total, tp / n_in
    weights = _group_weights(selection, replicates, n_replicates, seed)
    precision_r, recall_r, r_rep = _replicate_estimates(selection, s, r, weights)
    r_se = np.nanstd(r_rep, axis=0, ddof=1)
    per_input = np.bincount(b, minlength=n_bins)
    bins = [
        {
            "bin": k,
            "D_lo": float(selection.edges[k]),
            "D_hi": float(selection.edges[k + 1]),
            "n_draws": int(c[k]),
            "rho": float(c[k] / n_in),
            "n_annotated": int(per_input[k]),
            "n_annotated_draws": int(m[k]),
            "r": None if c[k] == 0 else float(r[k]),
            "r_se": None if c[k] == 0 else float(r_se[k]),
        }
        for k in range(n_bins)
    ]
    return {
        "window": selection.window.record(),
        "precision": precision,
        "precision_se": float(np.std(precision_r, ddof=1)),
        "recall": recall,
        "recall_se": float(np.std(recall_r, ddof=1)),
        "se_from": "replicates" if replicates is not None else "distinct inputs",
        "window_mass": float(total / n_in),
        "per_bin": selection.per_bin,
        "bin_width": float(selection.edges[1] - selection.edges[0]),
        "counts": {
            "n_draws": selection.n_draws,
            "n_in_z_other": n_in,
            "n_in_window": int(total),
            "n_annotated": len(rows),
            "n_annotated_draws": int(m.sum()),
            "n_replicates": int(weights.shape[0]),
        },
        "bins": bins,
    }


def exact_precision_recall(
    z_a: np.ndarray, z_b: np.ndarray, r: np.ndarray, window: Window, z_range, role: str = "A"
) -> dict:
    """The enumeration counterpart of `estimate`, uniform over X_src = {x : z_src(x) ∈ Z} (src = `role`):
    precision = mean r over X_src ∩ {D ∈ W}, recall = Σ_{X_src ∩ {D ∈ W}} r / |X_A ∩ X_B|."""
    lo, hi = z_range
    in_a, in_b = (z_a >= lo) & (z_a <= hi), (z_b >= lo) & (z_b <= hi)
    src = in_a if role == "A" else in_b
    hit = src & window.contains(z_a.astype(np.float64) - z_b)
    r = np.asarray(r, dtype=np.float64)
    return {
        "precision": float(r[hit].mean()),
        "recall": float(r[hit].sum() / (in_a & in_b).sum()),
        "window_mass": float(hit.sum() / (in_a & in_b).sum()),
    }


# ---------------------------------------------------------------------------------------------- annotators

Annotate = Callable[[pd.DataFrame], object]  # rows (id, tokens, text, D, z_A, z_B, ...) -> one score per row


def toy_rule(cfg, reference=None, judge=None) -> Annotate:
    """The toy task's own rule: 1 when the digits sum to a multiple of toy.modulus, else 0."""
    task = toy_task(cfg)

    def annotate(rows: pd.DataFrame) -> np.ndarray:
        tokens = np.stack(rows["tokens"].to_numpy())
        if tokens.shape[1] != task.length:
            raise ValueError(
                f"annotator toy_rule: inputs have {tokens.shape[1]} tokens but space.length is "
                f"{task.length}: use the config of the cross_eval run"
            )
        return task.is_valid(tokens).astype(np.float64)

    return annotate


def judge_threshold(cfg) -> float:
    j = cfg.annotate.judge
    return float(cfg.z_range[1]) if j.threshold is None else float(j.threshold)


def load_judge(cfg) -> LoadedModel:
    ref = str(cfg.annotate.judge.model).strip()
    if not ref:
        raise ValueError(
            "annotator judge needs a model: set annotate.judge.model to a model ref (e.g. overrides "
            '"annotate.judge.model=toy:large:seed=1")'
        )
    return load_model(ref, cfg)


def judge(cfg, reference: Callable[[], LoadedModel] | None = None, judge: LoadedModel | None = None) -> Annotate:
    """A third model: score 1 when its z (mean NLL) is below annotate.judge.threshold, or the soft score
    sigmoid((threshold − z) / softness) when annotate.judge.softness > 0. It scores the draws' token ids, so it
    must share the compared models' tokenizer and input space."""
    judge = judge or load_judge(cfg)
    if reference is not None:
        try:
            check_comparable(judge, reference())
        except ValueError as e:
            raise ValueError(
                f"annotate.judge.model {judge.ref!r} cannot score these inputs ({e}): the judge scores "
                "the draws' token ids, so pick a judge over the compared models' tokenizer"
            ) from None
    scorer = Scorer(judge.model, judge.space.bos_token_id, output=cfg.output, batch_size=int(cfg.model.batch_size))
    threshold, softness = judge_threshold(cfg), float(cfg.annotate.judge.softness)

    def annotate(rows: pd.DataFrame) -> np.ndarray:
        z = scorer(torch.as_tensor(np.stack(rows["tokens"].to_numpy()), dtype=torch.long)).numpy().astype(np.float64)
        if softness > 0:
            return 1.0 / (1.0 + np.exp(-(threshold - z) / softness))
        return (z < threshold).astype(np.float64)

    return annotate


def check_annotator_name(name: str):
    ANNOTATORS.check(name)


def make_annotator(
    name: str, cfg, reference: Callable[[], LoadedModel] | None = None, judge: LoadedModel | None = None
) -> Annotate:
    """The automatic annotator `name` (`reference()` loads a compared model, for the judge's tokenizer check)."""
    if name == "human":
        raise ValueError("annotator human has no automatic scores: export a sheet, fill it, and pass it as scores")
    factory = ANNOTATORS.get(name)
    if not callable(factory):
        raise ValueError(f"annotate.annotator {name!r} is not a function")
    return factory(cfg, reference=reference, judge=judge) if name in ANNOTATORS else factory


def annotator_identity(name: str, judge: LoadedModel | None = None) -> str:
    """What an annotator's scores depend on beyond the config: the judge's weights, or a module's source."""
    if name == "judge" and judge is not None:
        return f"judge:{judge.identity}"
    if MODULE_ATTR.match(name) and name not in ANNOTATORS:
        spec = importlib.util.find_spec(MODULE_ATTR.match(name)["module"])
        origin = Path(spec.origin) if spec and spec.origin and Path(spec.origin).is_file() else None
        return f"{name}#sha256={sheet_sha256(origin)[:16]}" if origin else name
    return name


def score_rows(annotate: Annotate, rows: pd.DataFrame, name: str) -> np.ndarray:
    """Run an annotator on the selected rows and check its output like a sheet: one score in [0, 1] per row."""
    source = f"annotator {name}"
    try:
        out = list(np.asarray(annotate(rows), dtype=object).reshape(-1))
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{source} returned something that is not a list of scores ({e}): return one number in [0, 1] per row"
        ) from None
    if len(out) != len(rows):
        raise ValueError(
            f"{source} returned {len(out)} scores for {len(rows)} rows: return one number in [0, 1] per row"
        )
    scores = np.array([parse_score(v, i, ident, source) for i, (v, ident) in enumerate(zip(out, rows["id"]), 1)])
    if np.isnan(scores).any():
        row = int(np.flatnonzero(np.isnan(scores))[0])
        raise ValueError(
            f"{source}, {_where(row + 1, rows['id'].iloc[row])}: no score (None or NaN): return a "
            "number in [0, 1] for every row"
        )
    return scores
