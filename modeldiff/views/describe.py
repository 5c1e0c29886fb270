"""Run descriptions: what a run found, in words, as the Markdown MLflow shows on the run's overview page (the tag
`mlflow.note.content`). Pure functions of the records the stages log (ratio.json, plagiarism.json, annotation.json,
a sampling summary); no MLflow here: the platform sets them (tracking.set_description).

The four terms (DESIGN §2, stage 3) are counts per input that *both* models find likely: PD_A→B counts A's likely
inputs (z_A in Z) on which A has the lower NLL (D = z_A − z_B < −λ), divided by |X̃_A→B|, the A draws whose z_B is
in Z too; PA_A→B those on which B has the lower NLL (D > λ); PA_B→A and PD_B→A the same on B's likely inputs (A
lower, B lower), divided by |X̃_B→A|. The numerators count all of a side's likely inputs, the denominators only those
both find likely, so a term is "as many as" a share of the common set (a side's two terms may add to more than 1).
"""

from __future__ import annotations

import math

TERMS = ("PD_AB", "PA_AB", "PA_BA", "PD_BA")
LABEL = {"PD_AB": "PD_A→B", "PA_AB": "PA_A→B", "PA_BA": "PA_B→A", "PD_BA": "PD_B→A"}
# (whose likely inputs the term counts, the model with the lower NLL on them)
MEANING = {"PD_AB": ("A", "A"), "PA_AB": ("A", "B"), "PA_BA": ("B", "A"), "PD_BA": ("B", "B")}
# MLflow 3's UI opens an experiment in the mode the URL names (else the browser's last one, GenAI at first): links
# name the training mode, where the runs table with metrics is
WORKFLOW = "workflowType=machine_learning"


# ---------------------------------------------------------------------------------------------- numbers and links


def number(v, digits: int = 3) -> str:
    """A value as the descriptions show it: `digits` decimals, ∞ for an unbounded end (None or infinite)."""
    if v is None or (isinstance(v, float) and math.isinf(v)):
        return "∞"
    if isinstance(v, float) and math.isnan(v):
        return "undefined"
    return f"{v:.{digits}f}"


def percent(v) -> str:
    """0.42 -> 42%; below 10% one decimal (4.5%); ∞ for an unbounded end."""
    if v is None or (isinstance(v, float) and math.isinf(v)):
        return "∞"
    p = 100 * v
    return f"{p:.1f}%" if abs(p) < 10 and p != 0 else f"{p:.0f}%"


def with_interval(v, interval, fmt=number) -> str:
    """`0.420 [0.400, 0.450]`; the point alone without an interval."""
    if not interval:
        return fmt(v)
    return f"{fmt(v)} [{fmt(interval[0])}, {fmt(interval[1])}]"


def ui_route(experiment_id, run_id: str | None = None) -> str:
    """The UI's route (after the server's address) of an experiment, in its training view, or of one run."""
    if run_id:
        return f"#/experiments/{experiment_id}/runs/{run_id}?{WORKFLOW}"
    return f"#/experiments/{experiment_id}?{WORKFLOW}"


def where_to_look(tracking_uri: str, experiment_name: str, experiment_id, run_id: str) -> list[str]:
    """Where a run is and how to open it: the server's address when the tracking URI is a server, else the `mlflow
    ui` command for the local store (links name the training view: MLflow 3's UI otherwise opens an experiment in the
    mode the browser used last, GenAI at first)."""
    lines = [f"run {run_id} in experiment '{experiment_name}' (id {experiment_id}), tracking URI {tracking_uri}"]
    if tracking_uri.startswith(("http://", "https://")):
        base = tracking_uri.rstrip("/")
        lines.append(f"open {base}/{ui_route(experiment_id)} (the experiment's runs table)")
    else:
        base = "http://127.0.0.1:5000"
        lines.append(f"open it: mlflow ui --backend-store-uri {tracking_uri}   then {base}/{ui_route(experiment_id)}")
    lines.append(f"this run: {base}/{ui_route(experiment_id, run_id)}")
    return lines


def run_link(label: str, experiment_id, run_id: str) -> str:
    """A Markdown link to a run that works inside the MLflow UI (a route relative to the page)."""
    return f"[{label}]({ui_route(experiment_id, run_id)})"


def step_label(step: str) -> str:
    """A chain step's name as a link label: sample_outdist_A -> "sample_outdist A", cross_eval_AB -> "cross_eval
    A→B"."""
    stage, _, role = step.rpartition("_")
    if stage and role in ("A", "B", "AB", "BA"):
        return f"{stage} {role[0] + '→' + role[1] if len(role) == 2 else role}"
    return step


def _runs_section(runs: dict, experiment_id, title: str = "Runs") -> list[str]:
    """Links to runs: label -> run id (in `experiment_id`) or (experiment id, run id)."""
    if not runs:
        return []
    lines = ["", f"**{title}**", ""]
    for name, ref in runs.items():
        exp, run_id = ref if isinstance(ref, tuple) else (experiment_id, ref)
        lines.append(f"- {run_link(name, exp, run_id)} (`{run_id}`)")
    return lines


def _warnings_section(warnings) -> list[str]:
    if not warnings:
        return ["", "**Warnings:** none."]
    return ["", "**Warnings**", "", *[f"- {w}" for w in warnings]]


def _models_line(model_a, model_b) -> list[str]:
    return [f"A = `{model_a}`, B = `{model_b}`.", ""] if model_a or model_b else []


# ---------------------------------------------------------------------------------------------- the ratio


def term_sentence(term: str, value: float, interval=None, lam: float = 0.0) -> str:
    """One term in words, e.g. "PA_A→B = 0.420 [0.400, 0.450]: on A's likely inputs, B assigns the lower NLL to 42%
    [40%, 45%] as many inputs as both models find likely"."""
    src, lower = MEANING[term]
    margin = f" by more than λ = {lam:g}" if lam > 0 else ""
    share = with_interval(value, interval, percent)
    return (
        f"{LABEL[term]} = {with_interval(value, interval)}: on {src}'s likely inputs, {lower} assigns the lower "
        f"NLL{margin} to {share} as many inputs as both models find likely"
    )


def ratio_line(ratio: dict) -> str:
    """`1.000 : 0.690 [0.620, 0.760] : ...` (the first term divides, so it is exactly 1)."""
    ci = ratio.get("ci", {}).get("ratio")
    parts = [number(ratio["ratio"][0])]
    parts += [with_interval(r, ci[i + 1] if ci else None) for i, r in enumerate(ratio["ratio"][1:])]
    return " : ".join(parts)


def _scope_note(z_range, lam: float) -> str:
    z = f" (z in Z = [{z_range[0]:g}, {z_range[1]:g}])" if z_range else ""
    return (
        f"A model's likely inputs are those whose mean per-token NLL it puts in Z{z}. Each term counts one model's "
        "likely inputs on which one model has the lower NLL"
        f"{f' by more than λ = {lam:g}' if lam > 0 else ''}, per input that both models find likely (Eq. 5–7): the "
        "four share one scale, so they compare, and a side's two terms can add up to more than 100%."
    )


def _counts_line(counts: dict) -> str:
    c = counts
    text = (
        f"Draws: {c['n_A']:,} of A ({c['n_A_in_B']:,} also likely for B), {c['n_B']:,} of B "
        f"({c['n_B_in_A']:,} also likely for A)"
    )
    if "ess_inputs_A" in c:
        text += (
            f"; they amount to {c['ess_inputs_A']:,.0f} and {c['ess_inputs_B']:,.0f} effectively independent "
            f"inputs, from {c['n_units_A']} and {c['n_units_B']} independent stage-1 units"
        )
    return text + "."


def ratio_description(
    ratio: dict,
    *,
    model_a: str | None = None,
    model_b: str | None = None,
    z_range=None,
    warnings=(),
    runs: dict | None = None,
    experiment_id=None,
    title: str = "Model-diff ratio",
    extra: list[str] | None = None,
) -> str:
    """normalize's and main's description: the ratio with its intervals, one sentence per term, the draws behind it,
    the warnings and links to the runs it came from (`runs`: label -> run id)."""
    ci = ratio.get("ci", {})
    level = ci.get("level")
    lam = float(ratio.get("lambda", 0.0))
    lines = [f"### {title}", "", *_models_line(model_a, model_b)]
    lines.append(
        f"**PD_A→B : PA_A→B : PA_B→A : PD_B→A = {ratio_line(ratio)}**"
        + (f" ({level:.0%} intervals, λ = {lam:g})" if level else f" (λ = {lam:g})")
    )
    lines.append("")
    for k in TERMS:
        lines.append(f"- {term_sentence(k, ratio['terms'][k], ci.get('terms', {}).get(k), lam)}.")
    lines += ["", _scope_note(z_range, lam)]
    if "counts" in ratio:
        lines += ["", _counts_line(ratio["counts"])]
    if "D_range" in ratio:
        d = ratio["D_range"]
        lines.append(
            f"D = z_A − z_B spans [{number(d['A'][0])}, {number(d['A'][1])}] on A's draws and "
            f"[{number(d['B'][0])}, {number(d['B'][1])}] on B's."
        )
    lines += extra or []
    lines += _warnings_section(warnings)
    lines += _runs_section(runs or {}, experiment_id)
    return "\n".join(lines) + "\n"


def annotation_line(direction: str, ann: dict) -> str:
    arrow = {"AB": "A→B", "BA": "B→A"}.get(direction, direction)
    return (
        f"- annotate {arrow} (D in {ann['window']['text']}, {ann.get('annotator', '?')}): precision "
        f"{number(ann['precision'])} ± {number(ann['precision_se'])}, recall {number(ann['recall'])} ± "
        f"{number(ann['recall_se'])} (± one standard error)"
    )


# ---------------------------------------------------------------------------------------------- plagiarism_check


VERDICT_TEXT = {
    "suspected_copy_of": "suspected copy",
    "related": "related",
    "independent": "independent",
    "inconclusive": "inconclusive",
}


EVIDENCE_TEXT = {
    "black_box_dominance": "the draws: on the copy's own likely inputs the other model has the lower NLL almost always",
    "black_box_balance": "the draws: summed over both sides' inputs, D = z_A − z_B leans to the parent (it has the "
    "lower NLL on both sides)",
    "weight_energy": "the weights: the copy carries the extra energy of added noise",
    "registration_order": "the registry: the copy was registered after its parent (neither the draws nor the weights "
    "tell which one)",
    "unknown": "unknown: neither the draws nor the weights tell which one (the order of the arguments is no evidence)",
}


def _p(v, spec: str = ".3g") -> str:
    """A statistic from a JSON record: `undefined` where it is missing or NaN."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "undefined"
    return format(v, spec)


def _side_line(rep_side: dict, side: str, other: str, level: float) -> str:
    lo, hi = rep_side["interval"]
    return (
        f"- on {side}'s own inputs, {other} has the lower NLL on {percent(rep_side['other_wins'])} of the draws "
        f"[{percent(lo)}, {percent(hi)}] ({level:.0%} Wilson interval over {rep_side['n_effective']:.0f} effective "
        f"inputs of {rep_side['n_distinct']} distinct)"
    )


def plagiarism_description(rep: dict, *, runs: dict | None = None, experiment_id=None) -> str:
    """plagiarism_check's description (a pair): the verdict, who is the copy of whom (the parent), the evidence, and
    the chain's runs."""
    verdict = rep["verdict"]
    a, b = rep.get("model_a"), rep.get("model_b")
    if verdict == "suspected_copy_of" and rep.get("copy_model"):
        head = f"`{rep['copy_model']}` is a suspected copy of `{rep['parent_model']}` (its parent)"
    elif verdict == "suspected_copy_of":
        head = f"one of A = `{a}` and B = `{b}` is a suspected copy of the other"
    else:
        head = f"{VERDICT_TEXT.get(verdict, verdict)}: A = `{a}`, B = `{b}`"
    lines = [f"### Verdict: {verdict}", "", f"**{head}.**", ""]
    if rep.get("direction_evidence"):
        lines.append(
            f"Which one is the copy: {EVIDENCE_TEXT.get(rep['direction_evidence'], rep['direction_evidence'])}."
        )
    lines += [f"Why: {rep.get('reason', '')}.", "", f"Evidence used: {rep.get('mode', 'combined').replace('_', ' ')}."]
    bb = rep.get("black_box")
    th = rep.get("thresholds") or {}
    if bb:
        level = float(th.get("confidence", 0.95))
        lines += ["", "**Black box** (Model-diff draws):", ""]
        lines.append(_side_line(bb["A"], "A", "B", level))
        lines.append(_side_line(bb["B"], "B", "A", level))
        if "relative_D" in bb:
            lo, hi = bb["relative_D_interval"]
            lines.append(
                f"- median |D| over the pair's own z spread ({number(bb['scale'], 4)}): {number(bb['relative_D'])} "
                f"[{number(lo)}, {number(hi)}] ({level:.0%} interval over {bb['n_effective']:.0f} effective inputs; "
                f"near copies at most {th.get('near_identical', float('nan')):g}, farther apart than any copy above "
                f"{th.get('distinct', float('nan')):g})"
            )
            lines.append(
                f"- balance mean_A(D) + mean_B(D) = {number(bb['balance'], 4)} ± {number(bb['balance_se'], 4)} "
                f"(z = {_p(bb.get('balance_z'), '+.2f')}; below 0: A has the lower NLL on both sides' inputs)"
            )
        lines.append(f"- 95th percentile of |D| over both sides: {number(bb['abs_D_q95'], 4)}")
    wb = rep.get("white_box")
    if wb:
        lines += ["", "**White box** (the weights):", ""]
        if wb.get("applicable"):
            lines.append(
                f"- independence p = {_p(wb.get('p_value'))} (small: the weights are related), noise-structure "
                f"p = {_p(wb.get('structure_p_value'))} (large: the difference looks like i.i.d. noise), "
                f"weight-energy z = {_p(wb.get('direction_z'), '+.2f')}"
            )
        else:
            lines.append(f"- not applicable: {wb.get('reason', '')}")
    if rep.get("ratio"):
        lines += ["", "The ratio with its intervals is on the normalize run."]
    lines += _runs_section(runs or {}, experiment_id)
    return "\n".join(lines) + "\n"


def screening_description(body: dict, *, experiment_id=None, runs: dict | None = None) -> str:
    """plagiarism_check's description for a registry version screened against the registry."""
    head = body["verdict"] + (f" `{body['counterpart']}`" if body.get("counterpart") else "")
    lines = [f"### Screening of `{body['version']}`: {head}", ""]
    pairs = body.get("pairs") or {}
    if pairs:
        lines += ["| counterpart | verdict | copy | evidence |", "| --- | --- | --- | --- |"]
        for c, r in pairs.items():
            copy = {"B": "this version", "A": "the counterpart"}.get(r.get("copy"), "")
            lines.append(f"| `{c}` | {r.get('verdict')} | {copy} | {r.get('direction_evidence') or ''} |")
    else:
        lines.append("No registered version of the same vocabulary to compare with.")
    for c, why in (body.get("skipped") or {}).items():
        lines.append(f"- skipped `{c}`: {why}")
    lines += _runs_section(runs or {}, experiment_id)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- sample_outdist


def outdist_description(summary: dict, *, warnings=(), runs: dict | None = None, experiment_id=None) -> str:
    """sample_outdist's description: how well the samples cover Z, and the diagnostics the run has.

    `summary`: model, method, z_range, n_units, bins_in_z, bins_reached (bins of Z with a sample), empty_bins
    ([lo, hi] of the bins of Z without one), n_records, n_in_z, n_distinct_in_z, and `diagnostics` (name -> value:
    round_trips_min, round_trips_mean, rhat_max_in_z, ess_min_in_z, acceptance_mean, swap_acceptance_min,
    wham_iterations, ess_in_z, where present)."""
    s = summary
    unit = "ladders" if s["method"] == "tempering" else "blocks"
    lo, hi = s["z_range"]
    lines = [
        f"### ρ̃(z) of `{s['model']}`",
        "",
        f"Sampled by {s['method']} ({s['n_units']} independent {unit}, {s['n_records']:,} records).",
        "",
        f"**Coverage of Z = [{lo:g}, {hi:g}]:** {s['bins_reached']} of its {s['bins_in_z']} bins hold samples; "
        f"{s['n_in_z']:,} records and {s['n_distinct_in_z']:,} distinct inputs fall in Z.",
    ]
    empty = s.get("empty_bins") or []
    if empty:
        shown = ", ".join(f"[{a:.3g}, {b:.3g}]" for a, b in empty[:8])
        more = f" and {len(empty) - 8} more" if len(empty) > 8 else ""
        lines.append(f"Bins of Z without a sample: {shown}{more} (stage 2 cannot draw there).")
    diag = s.get("diagnostics") or {}
    names = {
        "round_trips_min": ("round trips per ladder, fewest", "{:.0f}"),
        "round_trips_mean": ("round trips per ladder, mean", "{:.1f}"),
        "rhat_max_in_z": ("split-R̂, largest over Z's bins (want ≤ 1.1)", "{:.3f}"),
        "ess_min_in_z": ("effective sample size, smallest over Z's bins (want ≥ 100)", "{:.0f}"),
        "ess_in_z": ("effective sample size in Z", "{:.0f}"),
        "acceptance_mean": ("move acceptance, mean over temperatures", "{:.2f}"),
        "swap_acceptance_min": ("swap acceptance, lowest neighbour pair", "{:.2f}"),
        "wham_iterations": ("WHAM iterations", "{:.0f}"),
    }
    present = [(names[k][0], names[k][1].format(v)) for k, v in diag.items() if k in names and v is not None]
    if present:
        lines += ["", "**Diagnostics**", "", *[f"- {label}: {value}" for label, value in present]]
    lines += _warnings_section(warnings)
    lines += _runs_section(runs or {}, experiment_id)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- annotate


def annotation_description(result: dict, *, runs: dict | None = None, experiment_id=None) -> str:
    """annotate's description (scores given or automatic): precision and recall with their standard errors."""
    arrow = {"AB": "A→B", "BA": "B→A"}.get(result.get("direction"), result.get("direction", ""))
    c = result["counts"]
    lines = [
        f"### Annotation of the {arrow} draws with D in {result['window']['text']}",
        "",
        f"**Precision {number(result['precision'])} ± {number(result['precision_se'])}, recall "
        f"{number(result['recall'])} ± {number(result['recall_se'])}** (± one standard error, from "
        f"{result.get('se_from', 'replicates')}).",
        "",
        f"Precision is the share of the window's draws that agree with the training objective (Σ r(D) ρ(D) / Σ ρ(D)); "
        f"recall is that count on the ratio's scale (per input both models find likely), so two models' recalls "
        f"compare like PD_A→B and PD_B→A. The window's {c['n_in_window']:,} draws are "
        f"{percent(result['window_mass'])} as many as the draws both models find likely (the terms' scale); "
        f"{c['n_annotated']:,} distinct inputs were scored by "
        f"{result.get('annotator', 'human')}.",
    ]
    lines += _runs_section(runs or {}, experiment_id)
    return "\n".join(lines) + "\n"


def sheet_description(n_inputs: int, n_in_window: int, window: str, arrow: str, command: str) -> str:
    """annotate's description when it exported a sheet: what to do next."""
    return (
        f"### Annotation sheet: {arrow} draws with D in {window}\n\n"
        f"{n_inputs:,} inputs to score (for {n_in_window:,} draws in the window), in `annotation/sheet.csv` "
        f"(read them in `annotation/sheet.html`). Fill the score column (0 = bad .. 1 = good), then import it:\n\n"
        f"    {command}\n"
    )


# ---------------------------------------------------------------------------------------------- compare


def compare_description(table: dict, *, z_range=None, warnings=(), runs: dict | None = None, experiment_id=None) -> str:
    """compare's description: the table of several models against one reference (tables/compare.json's record), a
    sentence per model, the scale the rows share, the warnings and links to each pair's main run."""
    rows, lam = table["rows"], float(table.get("lambda", 0.0))
    level = table.get("level")
    lines = [f"### {len(rows)} models against the reference `{table['reference']}`", ""]
    lines += [
        f"| model | PD_A→X | PA_A→X | PA_X→A | PD_X→A | ratio ({level:.0%} intervals) |" if level else "",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        ci = row["ci"]["terms"]
        cells = [with_interval(row["terms"][k], ci[k]) for k in ("PD_AX", "PA_AX", "PA_XA", "PD_XA")]
        lines.append(f"| `{row['model']}` | {' | '.join(cells)} | {ratio_line(row)} |")
    lines.append("")
    margin = f" by more than λ = {lam:g}" if lam > 0 else ""
    for row in rows:
        share = {k: with_interval(row["terms"][k], row["ci"]["terms"][k], percent) for k in row["terms"]}
        lines.append(
            f"- `{row['model']}`: of A's likely inputs, X has the lower NLL{margin} on {share['PA_AX']} and A on "
            f"{share['PD_AX']}; X's own likely inputs on which A has the lower NLL number {share['PA_XA']} of A's "
            f"likely inputs, those on which X has it {share['PD_XA']}."
        )
    z = f" (z in Z = [{z_range[0]:g}, {z_range[1]:g}])" if z_range else ""
    lines += [
        "",
        f"Every term counts inputs per likely input of the reference A{z}, |X_A| (paper Appendix B, Eq. 14–17): the "
        "A→X terms over A's draws, which every model scores (A is sampled once), the X→A terms rescaled by the share "
        "of A's draws that X also finds likely. So the rows compare: a model with a larger PA_A→X assigns the lower "
        "NLL to more of A's likely inputs.",
    ]
    lines += _warnings_section(warnings)
    if runs:
        lines += _runs_section(runs, experiment_id, "Each pair's main run")
    return "\n".join(lines)
