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

from .tokendiff import (DIFFS, SIDES, Comparison, aggregate_columns, bin_of, histogram, most_different,
                        split_aggregate)

WHITE = (255, 255, 255)
COLORS = {"A": (214, 96, 77), "B": (67, 147, 195), "grey": (140, 140, 140)}
VIEW_COLUMNS = ([f"{q}_{s}" for s in SIDES for q in ("prob", "rank", "clamped_rank", "nll")]
                + list(DIFFS))
PREVIEW_CHARS = 160
AGGREGATE_LABELS = {"mean": "mean", "median": "median", "q75_abs": "upper quartile of |·|", "max_abs": "max of |·|",
                    "topk_abs": "mean of the {k} largest |·|"}
DIFF_LABELS = {"prob_diff": "probability, A − B", "rank_diff": "rank, A − B",
               "clamped_rank_diff": "rank clamped at {clamp}, A − B", "nll_diff": "NLL, A − B (its mean is D)",
               "topk_diff": "top-{k} tokens not shared"}


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
        specs.append({"name": m, "label": label, "kind": "diverging", "sign": sign,
                      "scale": scale or _robust_scale(t[m].to_numpy(np.float64))})
    for side in SIDES:
        specs.append({"name": f"prob_{side}", "label": f"probability under {side}", "kind": "sequential",
                      "lo": 0, "hi": 1})
        specs.append({"name": f"clamped_rank_{side}", "label": f"rank under {side} (clamped at {s.clamp_rank})",
                      "kind": "sequential", "lo": s.clamp_rank, "hi": 1})
    return specs


def view_record(cmp: Comparison, example: int, token_text) -> dict:
    r = cmp.rows_of(example)
    t = cmp.tokens.iloc[r]
    return {"example": int(example), "ids": t["token_id"].astype(int).tolist(),
            "tokens": [token_text(i) for i in t["token_id"]],
            "values": {c: [rounded(v) for v in t[c].to_numpy()] for c in VIEW_COLUMNS},
            "topk": {s: cmp.topk_ids[s][r].astype(int).tolist() for s in SIDES},
            "topk_prob": {s: [[rounded(p) for p in row] for row in cmp.topk_prob[s][r]] for s in SIDES}}


def _vocab(views: list[dict], token_text) -> dict:
    ids = {i for v in views for s in SIDES for row in v["topk"][s] for i in row}
    return {str(i): token_text(i) for i in sorted(ids)}


def _preview(text: str) -> str:
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS - 1] + "…"


def _views(cmp: Comparison | None, examples: list[int], token_text) -> tuple[list[dict], list[int], dict]:
    views = [view_record(cmp, e, token_text) for e in examples] if cmp is not None else []
    rows = np.concatenate([np.arange(cmp.offsets[e], cmp.offsets[e + 1]) for e in examples]) if views else \
        np.zeros(0, np.int64)
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


def corpus_page(cmp: Comparison, texts: list[str], rows, models: dict, measure: str, rank_by: str, token_text,
                max_views: int, hist_bins: int, title: str) -> str:
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
        overview = {"title": "the corpus", "unit": "examples", "default": rank_by,
                    "note": "Every example's aggregates are in tokendiff/examples.parquet; the examples listed "
                            f"here are the {cmp.settings.n_top} most different per measure.",
                    "measures": [{"name": c, "label": aggregate_label(c, cmp.settings.aggregate_k),
                                  "edges": [rounded(e) for e in hists[c][0]], "counts": hists[c][1].tolist(),
                                  "top": top[c]} for c in order]}
    else:
        included = [0]
    views, view_rows, vocab = _views(cmp, shown, token_text)
    view_of = {e: i for i, e in enumerate(shown)}
    records = []
    for e in included:
        row = ex.iloc[e]
        rec = {"id": int(e), "text": _preview(texts[e]), "view": view_of.get(e),
               "info": {"row": int(rows[e]), "tokens": int(row["n_tokens"]), "z_A": rounded(row["z_A"]),
                        "z_B": rounded(row["z_B"]), "mean NLL diff (D)": rounded(row["mean_nll_diff"])}}
        if overview:
            rec["values"] = {c: rounded(row[c]) for c in aggregate_columns()}
            rec["bins"] = {c: int(bins[c][e]) for c in aggregate_columns()}
        records.append(rec)
    return render(_doc(cmp, title, models, measure, overview, records, views, view_rows, vocab))


def draws_page(distinct: pd.DataFrame, edges: np.ndarray, counts: np.ndarray, bins: np.ndarray, picked: np.ndarray,
               cmp: Comparison | None, models: dict, token_text, title: str, measure: str = "nll_diff") -> str:
    """cross_eval's draws: the histogram of D (draws counted with multiplicity) whose bars list the distinct inputs
    in them; the `picked` ones (rows of `distinct`, in the order of cmp's examples) have token views."""
    view_of = {int(d): i for i, d in enumerate(picked)}
    views, view_rows, vocab = _views(cmp, list(range(len(picked))), token_text)
    records = []
    for i, row in enumerate(distinct.itertuples(index=False)):
        records.append({"id": i, "text": _preview(str(row.text)), "view": view_of.get(i),
                        "values": {"D": rounded(row.D)}, "bins": {"D": int(bins[i])},
                        "info": {"z_A": rounded(row.z_A), "z_B": rounded(row.z_B), "D": rounded(row.D),
                                 "draws": int(row.n_draws), "other model's z in Z": bool(row.in_z_other)}})
    for v in views:  # the views' examples are rows of `distinct`
        v["example"] = int(picked[v["example"]])
    overview = {"title": "D = z_A − z_B over the draws", "unit": "draws", "default": "D",
                "note": "Click a bar to list the distinct inputs drawn in it; those with a token view open it.",
                "measures": [{"name": "D", "label": "D = z_A − z_B", "edges": [rounded(e) for e in edges],
                              "counts": np.asarray(counts).astype(int).tolist(), "top": None}]}
    return render(_doc(cmp, title, models, measure, overview, records, views, view_rows, vocab))


def _doc(cmp, title, models, measure, overview, records, views, view_rows, vocab) -> dict:
    s = cmp.settings if cmp is not None else None
    return {"title": title, "models": models, "measure": measure, "overview": overview, "examples": records,
            "views": views, "vocab": vocab, "colors": {k: list(v) for k, v in COLORS.items()},
            "measures": measure_specs(cmp, view_rows) if cmp is not None else [],
            "clamp_rank": s.clamp_rank if s else None, "top_k": cmp.k if s else None}


def embed_json(data) -> str:
    """JSON safe inside a <script> element: no '<', '>' or '&' survives (a text can hold '</script>')."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render(doc: dict) -> str:
    return (PAGE.replace("__TITLE__", _escape(doc["title"])).replace("__CSS__", CSS).replace("__JS__", JS)
            .replace("__DATA__", embed_json(doc)))


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>__TITLE__</title>
<style>__CSS__</style>
</head><body>
<header><h1>__TITLE__</h1><div id="models"></div>
<label>colour tokens by <select id="measure"></select></label><div id="legend"></div></header>
<section id="overview" hidden><h2 id="ov-title"></h2><p class="note" id="ov-note"></p>
<label id="ov-pick">measure <select id="ov-measure"></select></label>
<div id="ov-hist"></div><div class="cols"><div><h3 id="bar-title">click a bar</h3><ol id="bar-list"></ol></div>
<div><h3 id="top-title"></h3><ol id="top-list"></ol></div></div></section>
<section id="view"><h2 id="view-title"></h2><div id="view-info" class="note"></div><div id="tokens"></div>
<div class="cols"><div id="plots"></div><div id="token-hist"></div></div>
<div class="cols"><div id="detail"></div><div id="pinned"></div></div></section>
<script type="application/json" id="tokendiff-data">__DATA__</script>
<script>__JS__</script>
</body></html>
"""

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1em 2em; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .3em; } h2 { font-size: 1.1em; margin: 1.2em 0 .3em; } h3 { font-size: 1em; }
header { border-bottom: 1px solid #ccc; padding-bottom: .5em; }
.note { color: #666; font-size: .9em; }
.model-A { color: rgb(178, 60, 45); font-weight: 600; } .model-B { color: rgb(40, 105, 150); font-weight: 600; }
#legend { display: inline-block; margin-left: 1em; vertical-align: middle; }
#legend .bar { display: inline-block; width: 160px; height: 12px; vertical-align: middle; border: 1px solid #aaa; }
#tokens { font: 15px/2 ui-monospace, monospace; margin: .6em 0; }
.tok { white-space: pre; padding: 2px 1px; margin: 0 1px; border: 1px solid #ddd; border-radius: 3px; cursor: pointer; }
.tok.hl { outline: 2px solid #000; }
.cols { display: flex; flex-wrap: wrap; gap: 2em; } .cols > div { min-width: 320px; }
ol { padding-left: 2em; max-height: 22em; overflow-y: auto; }
li.ex { cursor: default; } li.ex.has-view { cursor: pointer; } li.ex.has-view:hover { background: #eef; }
li.ex .val { font-family: ui-monospace, monospace; margin-right: .6em; } li.ex .txt { white-space: pre-wrap; }
li.ex.current { background: #ffd; }
svg text { font: 10px sans-serif; fill: #444; }
.barrect { cursor: pointer; } .barrect:hover { opacity: .7; } .barrect.sel { stroke: #000; stroke-width: 1.5; }
table.detail { border-collapse: collapse; } table.detail td, table.detail th { padding: 1px 8px; text-align: right; }
table.detail th { background: #f3f3f3; }
.topk { display: flex; gap: 1.5em; } .topk ol { max-height: none; overflow: visible; font-family: ui-monospace, monospace; }
.topk li.actual { font-weight: 700; text-decoration: underline; } .topk li.only { font-style: italic; }
.card { border: 1px solid #ccc; border-radius: 4px; padding: .4em .8em; margin-bottom: .6em; position: relative; }
.card button { position: absolute; right: .3em; top: .3em; }
"""

JS = r"""
(function () {
"use strict";
const D = JSON.parse(document.getElementById("tokendiff-data").textContent);
const NS = "http://www.w3.org/2000/svg";
const specs = new Map(D.measures.map(function (m) { return [m.name, m]; }));
const examples = new Map(D.examples.map(function (e) { return [e.id, e]; }));
const $ = function (id) { return document.getElementById(id); };
let measure = specs.has(D.measure) ? D.measure : (D.measures.length ? D.measures[0].name : null);
let view = null, spans = [], ovName = D.overview ? D.overview.default : null, selectedBar = -1;

function el(tag, attrs, children) {
  const node = document.createElement(tag);
  Object.entries(attrs || {}).forEach(function (kv) {
    if (kv[0] === "text") node.textContent = kv[1]; else node.setAttribute(kv[0], kv[1]);
  });
  (children || []).forEach(function (c) { node.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
  return node;
}
function svg(tag, attrs) {
  const node = document.createElementNS(NS, tag);
  Object.entries(attrs || {}).forEach(function (kv) { node.setAttribute(kv[0], kv[1]); });
  return node;
}
function fmt(v) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (typeof v !== "number") return String(v);
  return Number.isInteger(v) ? String(v) : v.toPrecision(4);
}
// the colour scale: the same arithmetic as tokenview.token_color in Python
function color(v, s) {
  if (v === null || v === undefined || !Number.isFinite(v)) return [255, 255, 255];
  let end, a;
  if (s.kind === "diverging") {
    const t = Math.max(-1, Math.min(1, v / s.scale)) * s.sign;
    end = t >= 0 ? D.colors.A : D.colors.B; a = Math.abs(t);
  } else {
    const t = (v - s.lo) / (s.hi - s.lo);
    end = D.colors.grey; a = Math.max(0, Math.min(1, t));
  }
  return end.map(function (c) { return Math.floor(255 + (c - 255) * a + 0.5); });
}
function rgb(c) { return "rgb(" + c[0] + ", " + c[1] + ", " + c[2] + ")"; }

function header() {
  ["A", "B"].forEach(function (s) {
    const m = D.models[s];
    $("models").appendChild(el("div", {}, [el("span", {"class": "model-" + s, text: s + ": " + m.ref}),
      el("span", {"class": "note", text: "  " + m.identity})]));
  });
  D.measures.forEach(function (m) { $("measure").appendChild(el("option", {value: m.name, text: m.label})); });
  if (measure) $("measure").value = measure;
  $("measure").addEventListener("change", function () { measure = this.value; paint(); });
}
function legend() {
  const s = specs.get(measure), box = $("legend");
  box.textContent = "";
  if (!s) return;
  if (s.kind === "diverging") {
    const stops = [-1, 0, 1].map(function (t) { return rgb(color(t * s.scale * s.sign, s)); });
    box.appendChild(el("span", {"class": "model-B", text: "B better "}));
    box.appendChild(el("span", {"class": "bar", style: "background: linear-gradient(to right, " + stops.join(", ") + ")"}));
    box.appendChild(el("span", {"class": "model-A", text: " A better"}));
    box.appendChild(el("span", {"class": "note", text: "  (full colour at |value| ≥ " + fmt(s.scale) + ")"}));
  } else {
    box.appendChild(el("span", {text: fmt(s.lo) + " "}));
    box.appendChild(el("span", {"class": "bar", style: "background: linear-gradient(to right, " +
      rgb(color(s.lo, s)) + ", " + rgb(color(s.hi, s)) + ")"}));
    box.appendChild(el("span", {text: " " + fmt(s.hi)}));
  }
}

// ---------------------------------------------------------------- overview: histogram, bar members, top list
function ovMeasure() { return D.overview.measures.find(function (m) { return m.name === ovName; }); }
function exampleItem(e, value) {
  const li = el("li", {"class": "ex" + (e.view !== null ? " has-view" : ""), "data-example": e.id}, [
    el("span", {"class": "val", text: fmt(value)}), el("span", {"class": "txt", text: e.text})]);
  if (e.view !== null) li.addEventListener("click", function () { showView(e.view); $("view").scrollIntoView(); });
  else li.title = "no token view in this page";
  return li;
}
function overview() {
  const o = D.overview;
  $("overview").hidden = false;
  $("ov-title").textContent = o.title;
  $("ov-note").textContent = o.note;
  if (o.measures.length > 1) {
    o.measures.forEach(function (m) { $("ov-measure").appendChild(el("option", {value: m.name, text: m.label})); });
    $("ov-measure").value = ovName;
    $("ov-measure").addEventListener("change", function () { ovName = this.value; selectedBar = -1; drawOverview(); });
  } else {
    $("ov-pick").hidden = true;
  }
  drawOverview();
}
function label(root, x, y, text, anchor) {
  const t = svg("text", {x: x, y: y, "text-anchor": anchor || "start"});
  t.textContent = text;
  root.appendChild(t);
}
function drawOverview() {
  const m = ovMeasure(), W = 640, H = 160, pad = 30, box = $("ov-hist");
  box.textContent = "";
  const n = m.counts.length, top = Math.max.apply(null, m.counts.concat([1]));
  const lo = m.edges[0], hi = m.edges[n];
  const x = function (v) { return pad + (W - 2 * pad) * (v - lo) / ((hi - lo) || 1); };
  const root = svg("svg", {width: W, height: H + 30, id: "ov-svg"});
  m.counts.forEach(function (c, b) {
    const h = (H - 10) * c / top, x0 = x(m.edges[b]), x1 = x(m.edges[b + 1]);
    const r = svg("rect", {x: x0, y: H - h, width: Math.max(1, x1 - x0 - 1), height: Math.max(h, c ? 1 : 0),
      fill: "#8896ab", "class": "barrect" + (b === selectedBar ? " sel" : ""), "data-bin": b});
    r.appendChild(svg("title")).textContent =
      "[" + fmt(m.edges[b]) + ", " + fmt(m.edges[b + 1]) + "]: " + c + " " + D.overview.unit;
    r.addEventListener("click", function () { selectedBar = b; drawOverview(); });
    root.appendChild(r);
  });
  (m.top || []).forEach(function (id) {  // the most different examples as black stripes under the axis
    const v = examples.get(id).values[m.name];
    if (v !== null) root.appendChild(svg("rect", {x: x(v) - 0.5, y: H + 2, width: 1, height: 8, fill: "#000"}));
  });
  [lo, (lo + hi) / 2, hi].forEach(function (v) { label(root, x(v), H + 24, fmt(v), "middle"); });
  if (lo < 0 && hi > 0) root.appendChild(svg("line", {x1: x(0), x2: x(0), y1: 0, y2: H, stroke: "#000"}));
  box.appendChild(root);
  $("bar-list").textContent = "";
  if (selectedBar >= 0) {
    const members = D.examples.filter(function (e) { return e.bins[m.name] === selectedBar; })
      .sort(function (a, b) { return a.values[m.name] - b.values[m.name]; });
    const withViews = members.filter(function (e) { return e.view !== null; }).length;
    $("bar-title").textContent = m.counts[selectedBar] + " " + D.overview.unit + " in [" +
      fmt(m.edges[selectedBar]) + ", " + fmt(m.edges[selectedBar + 1]) + "]; " + members.length + " listed, " +
      withViews + " with token views";
    members.slice(0, 500).forEach(function (e) { $("bar-list").appendChild(exampleItem(e, e.values[m.name])); });
  } else {
    $("bar-title").textContent = "click a bar to list its examples";
  }
  $("top-list").textContent = "";
  $("top-title").textContent = m.top ? "the " + m.top.length + " most different by " + m.label : "";
  (m.top || []).forEach(function (id) {
    const e = examples.get(id);
    $("top-list").appendChild(exampleItem(e, e.values[m.name]));
  });
}

// ---------------------------------------------------------------- one example: tokens, step plots, details
const PLOT = {W: 560, H: 90, pad: 34, gap: 22};
function plotX(k) { return PLOT.pad + (PLOT.W - PLOT.pad - 4) * k / view.tokens.length; }
function showView(i) {
  view = D.views[i];
  const e = examples.get(view.example);
  $("view-title").textContent = "example " + e.id + ": " + e.text;
  $("view-info").textContent = Object.entries(e.info)
    .map(function (kv) { return kv[0] + " " + fmt(kv[1]); }).join(" · ");
  document.querySelectorAll("li.ex").forEach(function (li) {
    li.classList.toggle("current", Number(li.dataset.example) === e.id);
  });
  const box = $("tokens");
  box.textContent = "";
  spans = view.tokens.map(function (t, k) {
    const s = el("span", {"class": "tok", "data-i": k, text: t === "" ? "∅" : t});
    s.addEventListener("mouseenter", function () { highlight(k); });
    s.addEventListener("click", function () { pin(k); });
    box.appendChild(s);
    return s;
  });
  $("pinned").textContent = "";
  plots();
  paint();
  highlight(0);
}
function paint() {
  legend();
  if (!view || !specs.has(measure)) return;
  const s = specs.get(measure), v = view.values[measure];
  spans.forEach(function (span, k) { span.style.backgroundColor = rgb(color(v[k], s)); });
  tokenHist();
}
function stepPath(vals, y) {
  let d = "";
  vals.forEach(function (v, k) { d += (k ? "L" : "M") + plotX(k) + "," + y(v) + "L" + plotX(k + 1) + "," + y(v); });
  return d;
}
function plots() {  // LMdiff's step plots: both models' probability and clamped rank of each actual token
  const box = $("plots"), n = view.tokens.length, H = PLOT.H, row = PLOT.H + PLOT.gap;
  box.textContent = "";
  const panels = [["probability of the actual token", "prob", 0, 1],
                  ["rank (clamped at " + D.clamp_rank + ")", "clamped_rank", D.clamp_rank, 1]];
  const root = svg("svg", {width: PLOT.W, height: panels.length * row, id: "step-plots"});
  panels.forEach(function (p, j) {
    const top = j * row + 14, y = function (v) { return top + H * (1 - (v - p[2]) / (p[3] - p[2])); };
    label(root, PLOT.pad, top - 3, p[0]);
    root.appendChild(svg("rect", {x: PLOT.pad, y: top, width: PLOT.W - PLOT.pad - 4, height: H, fill: "none",
      stroke: "#ccc"}));
    [p[2], p[3]].forEach(function (v) { label(root, PLOT.pad - 3, y(v) + 3, fmt(v), "end"); });
    ["A", "B"].forEach(function (s) {
      root.appendChild(svg("path", {d: stepPath(view.values[p[1] + "_" + s], y), fill: "none",
        stroke: rgb(D.colors[s]), "stroke-width": 1.5, "class": "step-" + s}));
    });
  });
  root.appendChild(svg("rect", {id: "step-cursor", x: 0, y: 14, width: 0, height: panels.length * row - PLOT.gap,
    fill: "#000", opacity: 0.12}));
  for (let k = 0; k < n; k++) {  // hover targets, one per token, over both panels
    const r = svg("rect", {x: plotX(k), y: 0, width: plotX(k + 1) - plotX(k), height: panels.length * row,
      fill: "transparent"});
    r.addEventListener("mouseenter", function () { highlight(k); });
    r.addEventListener("click", function () { pin(k); });
    root.appendChild(r);
  }
  box.appendChild(root);
}
function tokenHist() {  // the chosen measure over this example's tokens
  const s = specs.get(measure), v = view.values[measure], box = $("token-hist"), nb = 20, W = 300, H = 120;
  box.textContent = "";
  const lo = s.kind === "diverging" ? -s.scale : Math.min(s.lo, s.hi);
  const hi = s.kind === "diverging" ? s.scale : Math.max(s.lo, s.hi);
  const counts = new Array(nb).fill(0);
  v.forEach(function (x) {
    if (x !== null) counts[Math.max(0, Math.min(nb - 1, Math.floor(nb * (x - lo) / ((hi - lo) || 1))))] += 1;
  });
  const top = Math.max.apply(null, counts.concat([1]));
  const root = svg("svg", {width: W, height: H + 30, id: "token-hist-svg"});
  label(root, 0, 10, "this example's tokens by " + s.label);
  counts.forEach(function (c, b) {
    const h = (H - 20) * c / top, mid = lo + (hi - lo) * (b + 0.5) / nb;
    root.appendChild(svg("rect", {x: b * W / nb, y: H - h, width: W / nb - 1, height: h, fill: rgb(color(mid, s)),
      stroke: "#999"}));
  });
  label(root, 0, H + 14, fmt(lo));
  label(root, W, H + 14, fmt(hi), "end");
  box.appendChild(root);
}
function highlight(k) {
  spans.forEach(function (s, j) { s.classList.toggle("hl", j === k); });
  const cursor = $("step-cursor");
  cursor.setAttribute("x", plotX(k));
  cursor.setAttribute("width", plotX(k + 1) - plotX(k));
  $("detail").textContent = "";
  $("detail").appendChild(detail(k));
}
function detail(k) {  // every measure of token k, and both models' top-k (the actual token underlined)
  const V = view.values, card = el("div", {"class": "card detail-card"});
  card.appendChild(el("div", {}, [el("b", {text: "token " + k + ": "}), el("span", {"class": "tok", text: view.tokens[k]}),
    " (id " + view.ids[k] + ")"]));
  const rows = [["probability", "prob"], ["rank", "rank"], ["rank clamped at " + D.clamp_rank, "clamped_rank"],
                ["NLL", "nll"]];
  const table = el("table", {"class": "detail"}, [el("tr", {}, [el("th", {text: ""}),
    el("th", {"class": "model-A", text: "A"}), el("th", {"class": "model-B", text: "B"}), el("th", {text: "A − B"})])]);
  rows.forEach(function (r) {
    table.appendChild(el("tr", {}, [el("th", {text: r[0]}), el("td", {text: fmt(V[r[1] + "_A"][k])}),
      el("td", {text: fmt(V[r[1] + "_B"][k])}), el("td", {text: fmt(V[r[1] + "_diff"][k])})]));
  });
  table.appendChild(el("tr", {}, [el("th", {text: "top-" + D.top_k + " tokens not shared"}),
    el("td", {colspan: 3, text: fmt(V.topk_diff[k])})]));
  card.appendChild(table);
  const lists = el("div", {"class": "topk"});
  ["A", "B"].forEach(function (s) {
    const other = new Set(view.topk[s === "A" ? "B" : "A"][k]);
    const ol = el("ol", {"class": "topk-" + s});
    view.topk[s][k].forEach(function (id, j) {
      const cls = (id === view.ids[k] ? "actual " : "") + (other.has(id) ? "" : "only");
      ol.appendChild(el("li", {"class": cls.trim()}, [el("span", {"class": "tok", text: D.vocab[String(id)]}),
        " " + fmt(view.topk_prob[s][k][j])]));
    });
    lists.appendChild(el("div", {}, [el("div", {"class": "model-" + s, text: "top-" + D.top_k + " of " + s}), ol]));
  });
  card.appendChild(lists);
  return card;
}
function pin(k) {
  const card = detail(k), close = el("button", {text: "×", title: "unpin"});
  close.addEventListener("click", function () { card.remove(); });
  card.appendChild(close);
  $("pinned").prepend(card);
}

header();
if (D.overview) overview();
if (D.views.length) showView(0); else $("view-title").textContent = "no token views in this page";
legend();
window.tokendiffReady = true;
})();
"""
