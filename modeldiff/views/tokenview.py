"""The token view as one self-contained HTML page: inline CSS, JS and SVG, the data embedded as JSON, no network
(a Content-Security-Policy forbids any fetch), so it works from disk and as an MLflow artifact.

What it shows (LMdiff, Fig. 1): an optional overview (a histogram of a per-example measure over a corpus, or of D
over cross_eval's draws, whose bars list the examples in them, plus the most different examples); and per example
the tokens coloured by the chosen measure (red-white-blue: red where it favours A, blue where it favours B,
white for none; single-model measures and the top-k overlap in grey), the step plots of both models'
probability and clamped rank, the measure's histogram over the tokens, and the details of a token (every
measure, both models' top-k) on hover, pinned on click.

`token_color` is the colour scale the page's script applies, in Python (the browser test compares the two).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from modeldiff.analysis.measures import DIFFS, SIDES, aggregate_columns, split_aggregate
from modeldiff.analysis.tokendiff import Comparison, bin_of, histogram, most_different

from . import asset

WHITE = (255, 255, 255)
COLORS = {"A": (214, 96, 77), "B": (67, 147, 195), "grey": (140, 140, 140)}
VIEW_COLUMNS = [f"{q}_{s}" for s in SIDES for q in ("prob", "rank", "clamped_rank", "nll")] + list(DIFFS)
PREVIEW_CHARS = 160
AGGREGATE_LABELS = {
    "mean": "mean",
    "median": "median",
    "q75_abs": "upper quartile of |·|",
    "max_abs": "max of |·|",
    "topk_abs": "mean of the {k} largest |·|",
}
DIFF_LABELS = {
    "prob_diff": "probability, A − B",
    "rank_diff": "rank, A − B",
    "clamped_rank_diff": "rank clamped at {clamp}, A − B",
    "nll_diff": "NLL, A − B (its mean is D)",
    "topk_diff": "top-{k} tokens not shared",
}


def models_of(a, b) -> dict:
    return {"A": {"ref": a.ref, "identity": a.identity}, "B": {"ref": b.ref, "identity": b.identity}}


def rounded(v):
    """A number as the page stores it: 6 significant digits, None for NaN/inf, ints as ints."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v)
    v = float(v)
    return float(f"{v:.6g}") if math.isfinite(v) else None


def token_color(value, spec: dict) -> tuple[int, int, int]:
    """The page's colour of a token whose measure `spec` has `value` (the same arithmetic as its script)."""
    if value is None or not math.isfinite(value):
        return WHITE
    if spec["kind"] == "diverging":
        t = max(-1.0, min(1.0, value / spec["scale"])) * spec["sign"]
        end, a = (COLORS["A"] if t >= 0 else COLORS["B"]), abs(t)
    else:
        t = (value - spec["lo"]) / (spec["hi"] - spec["lo"])
        end, a = COLORS["grey"], max(0.0, min(1.0, t))
    return tuple(math.floor(255 + (c - 255) * a + 0.5) for c in end)


def _robust_scale(values: np.ndarray) -> float:
    """The 99th percentile of |values| (a few outliers saturate instead of washing everything else out)."""
    finite = np.abs(values[np.isfinite(values)])
    scale = rounded(np.quantile(finite, 0.99)) if len(finite) else None
    return scale if scale else 1.0


def measure_specs(cmp: Comparison, rows: np.ndarray) -> list[dict]:
    """The colour scales of the per-token measures, fixed where the measure is bounded, else from the tokens shown."""
    s, t = cmp.settings, cmp.tokens.iloc[rows]
    fmt = dict(k=cmp.k, clamp=s.clamp_rank)
    specs = []
    for m, sign in DIFFS.items():
        label = DIFF_LABELS[m].format(**fmt)
        if sign == 0:
            specs.append({"name": m, "label": label, "kind": "sequential", "lo": 0, "hi": cmp.k})
            continue
        scale = {"prob_diff": 1.0, "clamped_rank_diff": float(max(1, s.clamp_rank - 1))}.get(m)
        specs.append(
            {
                "name": m,
                "label": label,
                "kind": "diverging",
                "sign": sign,
                "scale": scale or _robust_scale(t[m].to_numpy(np.float64)),
            }
        )
    for side in SIDES:
        specs.append(
            {"name": f"prob_{side}", "label": f"probability under {side}", "kind": "sequential", "lo": 0, "hi": 1}
        )
        specs.append(
            {
                "name": f"clamped_rank_{side}",
                "label": f"rank under {side} (clamped at {s.clamp_rank})",
                "kind": "sequential",
                "lo": s.clamp_rank,
                "hi": 1,
            }
        )
    return specs


def view_record(cmp: Comparison, example: int, token_text) -> dict:
    r = cmp.rows_of(example)
    t = cmp.tokens.iloc[r]
    return {
        "example": int(example),
        "ids": t["token_id"].astype(int).tolist(),
        "tokens": [token_text(i) for i in t["token_id"]],
        "values": {c: [rounded(v) for v in t[c].to_numpy()] for c in VIEW_COLUMNS},
        "topk": {s: cmp.topk_ids[s][r].astype(int).tolist() for s in SIDES},
        "topk_prob": {s: [[rounded(p) for p in row] for row in cmp.topk_prob[s][r]] for s in SIDES},
    }


def _vocab(views: list[dict], token_text) -> dict:
    ids = {i for v in views for s in SIDES for row in v["topk"][s] for i in row}
    return {str(i): token_text(i) for i in sorted(ids)}


def _preview(text: str) -> str:
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


def _views(cmp: Comparison | None, examples: list[int], token_text) -> tuple[list[dict], list[int], dict]:
    views = [view_record(cmp, e, token_text) for e in examples] if cmp is not None else []
    rows = (
        np.concatenate([np.arange(cmp.offsets[e], cmp.offsets[e + 1]) for e in examples])
        if views
        else np.zeros(0, np.int64)
    )
    return views, rows, _vocab(views, token_text)


def aggregate_label(column: str, k: int) -> str:
    agg, m = split_aggregate(column)
    return f"{AGGREGATE_LABELS[agg].format(k=k)} of {m}"


def _interleave(lists: list[list[int]]) -> list[int]:
    out = []
    for depth in range(max((len(x) for x in lists), default=0)):
        out += [x[depth] for x in lists if depth < len(x)]
    return list(dict.fromkeys(out))


def _ranking_order(rank_by: str) -> list[str]:
    return [rank_by] + [c for c in aggregate_columns() if c != rank_by]


def viewed_examples(cmp: Comparison, rank_by: str, max_views: int) -> list[int]:
    """The examples given token views: the most different by `rank_by` first, then the other aggregates' most
    different in turn, at most `max_views`; a single example always."""
    if len(cmp.examples) == 1:
        return [0]
    top = most_different(cmp.examples, cmp.settings.n_top)
    return _interleave([top[c] for c in _ranking_order(rank_by)])[:max_views]


def corpus_page(
    cmp: Comparison,
    texts: list[str],
    rows,
    models: dict,
    measure: str,
    rank_by: str,
    token_text,
    max_views: int,
    hist_bins: int,
    title: str,
) -> str:
    """A corpus: histograms of every per-example aggregate with the most different examples marked, and token
    views of the `viewed_examples`. One example (a text given inline) gets no overview."""
    ex = cmp.examples
    overview, shown = None, viewed_examples(cmp, rank_by, max_views)
    if len(ex) > 1:
        top = most_different(ex, cmp.settings.n_top)
        order = _ranking_order(rank_by)
        included = sorted(set(shown) | {e for c in order for e in top[c]})
        hists = {c: histogram(ex[c].to_numpy(np.float64), hist_bins) for c in order}
        bins = {c: bin_of(ex[c].to_numpy(np.float64), hists[c][0]) for c in order}
        overview = {
            "title": "the corpus",
            "unit": "examples",
            "default": rank_by,
            "note": "Every example's aggregates are in tokendiff/examples.parquet; the examples listed "
            f"here are the {cmp.settings.n_top} most different per measure.",
            "measures": [
                {
                    "name": c,
                    "label": aggregate_label(c, cmp.settings.aggregate_k),
                    "edges": [rounded(e) for e in hists[c][0]],
                    "counts": hists[c][1].tolist(),
                    "top": top[c],
                }
                for c in order
            ],
        }
    else:
        included = [0]
    views, view_rows, vocab = _views(cmp, shown, token_text)
    view_of = {e: i for i, e in enumerate(shown)}
    records = []
    for e in included:
        row = ex.iloc[e]
        rec = {
            "id": int(e),
            "text": _preview(texts[e]),
            "view": view_of.get(e),
            "info": {
                "row": int(rows[e]),
                "tokens": int(row["n_tokens"]),
                "z_A": rounded(row["z_A"]),
                "z_B": rounded(row["z_B"]),
                "mean NLL diff (D)": rounded(row["mean_nll_diff"]),
            },
        }
        if overview:
            rec["values"] = {c: rounded(row[c]) for c in aggregate_columns()}
            rec["bins"] = {c: int(bins[c][e]) for c in aggregate_columns()}
        records.append(rec)
    return render(_doc(cmp, title, models, measure, overview, records, views, view_rows, vocab))


def draws_page(
    distinct: pd.DataFrame,
    edges: np.ndarray,
    counts: np.ndarray,
    bins: np.ndarray,
    picked: np.ndarray,
    cmp: Comparison | None,
    models: dict,
    token_text,
    title: str,
    measure: str = "nll_diff",
) -> str:
    """cross_eval's draws: the histogram of D (draws counted with multiplicity) whose bars list the distinct inputs
    in them; the `picked` ones (rows of `distinct`, in the order of cmp's examples) have token views."""
    view_of = {int(d): i for i, d in enumerate(picked)}
    views, view_rows, vocab = _views(cmp, list(range(len(picked))), token_text)
    records = []
    for i, row in enumerate(distinct.itertuples(index=False)):
        records.append(
            {
                "id": i,
                "text": _preview(str(row.text)),
                "view": view_of.get(i),
                "values": {"D": rounded(row.D)},
                "bins": {"D": int(bins[i])},
                "info": {
                    "z_A": rounded(row.z_A),
                    "z_B": rounded(row.z_B),
                    "D": rounded(row.D),
                    "draws": int(row.n_draws),
                    "other model's z in Z": bool(row.in_z_other),
                },
            }
        )
    for v in views:  # the views' examples are rows of `distinct`
        v["example"] = int(picked[v["example"]])
    overview = {
        "title": "D = z_A − z_B over the draws",
        "unit": "draws",
        "default": "D",
        "note": "Click a bar to list the distinct inputs drawn in it; those with a token view open it.",
        "measures": [
            {
                "name": "D",
                "label": "D = z_A − z_B",
                "edges": [rounded(e) for e in edges],
                "counts": np.asarray(counts).astype(int).tolist(),
                "top": None,
            }
        ],
    }
    return render(_doc(cmp, title, models, measure, overview, records, views, view_rows, vocab))


def _doc(cmp, title, models, measure, overview, records, views, view_rows, vocab) -> dict:
    s = cmp.settings if cmp is not None else None
    return {
        "title": title,
        "models": models,
        "measure": measure,
        "overview": overview,
        "examples": records,
        "views": views,
        "vocab": vocab,
        "colors": {k: list(v) for k, v in COLORS.items()},
        "measures": measure_specs(cmp, view_rows) if cmp is not None else [],
        "clamp_rank": s.clamp_rank if s else None,
        "top_k": cmp.k if s else None,
    }


def embed_json(data) -> str:
    """JSON safe inside a <script> element: no '<', '>' or '&' survives (a text can hold '</script>')."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render(doc: dict) -> str:
    page = asset("tokenview.html")
    return (
        page.replace("__TITLE__", _escape(doc["title"]))
        .replace("__CSS__", asset("tokenview.css"))
        .replace("__JS__", asset("tokenview.js"))
        .replace("__DATA__", embed_json(doc))
    )
