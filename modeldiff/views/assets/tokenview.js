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
