"""Stage `plagiarism_check`: is one model a (noise-added) copy of another? (paper Sec. 4.3)

Two ways to call it:
- a pair, `--model_a A --model_b B`: the Model-diff chain for the pair (child runs, reusing finished identical ones),
  then the black-box asymmetry of both sides' draws and, for equal architectures, the white-box weight tests
  (modeldiff.analysis.plagiarism); logs plagiarism.json. The copy is named only from evidence (the black box's
  dominance or balance, the weights' energy); otherwise its direction is `unknown`: argument order is no evidence.
  If B is a registry version, its lineage tags are written too. `plagiarism.mode` chooses the evidence: with
  `white_box` the chain is not run at all (the weights alone decide).
- a registry version, `--version models:/name/N`: that version against the registered versions of the same
  vocabulary created before it, one pair each; the strongest finding becomes the version's lineage tags
  (DESIGN §4). The screening service runs this mode for every new version. Only a shortlist gets the full check:
  the `screening.shortlist` nearest by lineage fingerprint (modeldiff.analysis.lineage; the version's own is stored
  with it, tag `modeldiff.lineage.fingerprint`), plus any version with the same weights identity.
"""

from __future__ import annotations

import mlflow

from modeldiff import pipeline
from modeldiff.analysis import lineage
from modeldiff.analysis.plagiarism import screening_verdict, statistic
from modeldiff.models import LoadedModel, check_comparable, load_model
from modeldiff.views import describe, plots

from .. import lineage_index, screening, tracking
from ..chain import pair_tags, run_steps
from ..model_registry import IDENTITY_TAG, safe_name, screening_policy
from ..runtime import Dist
from . import STAGE


def check_pair(
    cfg, dist: Dist, a: LoadedModel, b: LoadedModel, experiment_id, order: str | None = None
) -> tuple[dict, tuple | None]:
    """The chain's steps for (a, b), then the verdict; returns the plagiarism.json body and the two sides' draws
    (main process; no draws in white_box mode, which runs no chain), or ({}, None). `order`: see pipeline.plagiarism."""
    white_box = cfg.plagiarism.mode == "white_box"
    runs = {} if white_box else run_steps(cfg, dist, a, b, experiment_id)
    if not dist.is_main:
        return {}, None
    draws = (
        None if white_box else (tracking.load_draws(runs["cross_eval_AB"]), tracking.load_draws(runs["cross_eval_BA"]))
    )
    verdict, rep = pipeline.plagiarism(cfg, a, b, *(draws or (None, None)), order=order)
    names = {"A": a.ref, "B": b.ref}
    return {
        "model_a": a.ref,
        "model_b": b.ref,
        "identity_a": a.identity,
        "identity_b": b.identity,
        "copy_model": names.get(verdict.copy),
        "parent_model": names.get(verdict.parent),
        **rep,
        "ratio": None if white_box else tracking.load_json(runs["normalize"], "normalize", "ratio.json")["ratio"],
        "runs": runs,
    }, draws


def _metrics(rep: dict) -> dict:
    bb, wb = rep.get("black_box"), rep.get("white_box") or {}
    out = {}
    if bb:
        out.update(
            q_A=bb["A"]["other_wins"],
            q_B=bb["B"]["other_wins"],
            q_B_lower=bb["B"]["interval"][0],
            q_A_lower=bb["A"]["interval"][0],
            abs_D_q95=bb["abs_D_q95"],
        )
    if wb.get("applicable"):
        out.update(
            weight_p_value=wb["p_value"],
            structure_p_value=wb["structure_p_value"],
            cosine_median=wb["cosine_median"],
            direction_z=wb["direction_z"],
        )
    return out


def _pair_mode(cfg, dist: Dist, model_a: str, model_b: str) -> dict | None:
    with dist.main_first():
        a, b = load_model(model_a, cfg), load_model(model_b, cfg)
    check_comparable(a, b)
    run = mlflow.active_run() if dist.is_main else None
    if run:
        mlflow.set_tags(pair_tags(a, b))
    rep, draws = check_pair(cfg, dist, a, b, run.info.experiment_id if run else None)
    if not run:
        return None
    mlflow.log_dict(rep, "plagiarism.json")
    mlflow.log_metrics(_metrics(rep))
    if draws:
        tracking.log_figure(
            plots.d_overlay_figure(*draws, title=f"A = {a.ref}, B = {b.ref}: {rep['verdict']}"), "plots/D_overlay.png"
        )
    mlflow.set_tag("modeldiff.verdict", rep["verdict"])
    steps = {describe.step_label(step): r for step, r in (rep.get("runs") or {}).items()}
    tracking.set_description(describe.plagiarism_description(rep, runs=steps, experiment_id=run.info.experiment_id))
    if model_b.startswith("models:/"):  # a registry version gets its lineage tags from an explicit check too
        verdict = rep["verdict"] if rep["copy"] in (None, "B") else "related"
        screening.write_lineage(
            model_b, verdict, model_a if verdict != "independent" else "", statistic(rep), run.info.run_id
        )
    tracking.finish(STAGE["plagiarism_check"].hash(cfg, a=a.identity, b=b.identity))
    print(f"modeldiff: plagiarism verdict: {_describe(rep)}")
    return rep


def _describe(rep: dict) -> str:
    if rep["verdict"] == "suspected_copy_of":
        return (
            f"{rep['copy_model']} is a suspected copy of {rep['parent_model']} "
            f"(direction: {rep['direction_evidence']}; mode {rep['mode']})"
        )
    return f"{rep['verdict']} ({rep['reason']}; mode {rep['mode']})"


# a counterpart that fails to load or compare (unreadable, refused by the screening policy, another vocabulary, a
# model whose scores break the sampler) is skipped and reported; a registry that is down fails the job (MlflowException)
COUNTERPART_ERRORS = (ValueError, OSError, FloatingPointError, RuntimeError)


def _version_mode(cfg, dist: Dist, uri: str) -> dict | None:
    """The version (loaded first: one that cannot be loaded fails its screening), then every counterpart in turn
    (each loaded, compared, released), all as untrusted registry input; the version's lineage tags at the end."""
    version = screening.parse_version(uri)
    earlier = screening.earlier_versions(version) if dist.is_main else []
    identity = version.tags[IDENTITY_TAG]
    counterparts = dist.broadcast(
        [(screening.version_uri(v), v.tags[IDENTITY_TAG] == identity) for v in earlier] if dist.is_main else None
    )
    run = mlflow.active_run() if dist.is_main else None
    if run:
        mlflow.set_tags(
            {
                tracking.MODEL_B: uri,
                tracking.identity_tag(tracking.MODEL_B): version.tags[IDENTITY_TAG],
                screening.SCREENED_TAG: screening.version_key(version),
            }
        )
    results, skipped = [], {}
    with screening_policy():
        with dist.main_first():
            new = load_model(uri, cfg)
        index = _shortlist(cfg, version, new, earlier, counterparts) if run else None
        check = set(dist.broadcast(index["checked"] if run else None))
        for other_uri, same_identity in counterparts:
            if same_identity:  # registered twice: the same weights, nothing to sample
                results.append((other_uri, screening.identical_report(other_uri, uri)))
                continue
            if other_uri not in check:  # far from the new version by fingerprint: no full check
                continue
            try:
                rep = _compare(cfg, dist, other_uri, new, run)
            except COUNTERPART_ERRORS as e:
                skipped[other_uri] = " ".join(str(e).split())[:500] or type(e).__name__
                print(f"modeldiff: {uri}: skipped the counterpart {other_uri}: {skipped[other_uri]}")
                continue
            if run:
                results.append((other_uri, rep))
    if not run:
        return None
    verdict, counterpart, stat = screening_verdict(results, skipped)
    body = {
        "version": uri,
        "verdict": verdict,
        "counterpart": counterpart,
        "statistic": stat,
        "counterparts": [c for c, _ in counterparts],
        "mode": cfg.plagiarism.mode,
        "pairs": {
            c: {k: r.get(k) for k in ("verdict", "mode", "copy", "direction_evidence", "reason")} for c, r in results
        },
        "skipped": skipped,
        "lineage": index,
    }
    mlflow.log_dict(body, "plagiarism.json")
    mlflow.set_tags({"modeldiff.verdict": verdict, "modeldiff.counterpart": counterpart})
    tracking.set_description(describe.screening_description(body))
    screening.write_lineage(uri, verdict, counterpart, stat, run.info.run_id, skipped)
    print(
        f"modeldiff: {uri}: {verdict}{' ' + counterpart if counterpart else ''} "
        f"({len(results)} registered model(s) compared, {len(skipped)} skipped, "
        f"{len(index['screened_out'])} ruled out by fingerprint)"
    )
    return body


def _shortlist(cfg, version, new: LoadedModel, earlier: list, counterparts: list) -> dict:
    """(main process) The new version's fingerprint, stored with it; every earlier version's (made and stored now for
    one screened before the lineage index existed, where it loads); the shortlist of those to check in full (versions
    with the same weights identity are always compared: that costs nothing)."""
    fp = lineage_index.compute(cfg, new)
    reference = lineage_index.store(fp, "lineage/fingerprint.npz", version.name, str(version.version))
    fingerprints = {}
    for v, (other_uri, same_identity) in zip(earlier, counterparts):
        if same_identity:
            continue
        tag = v.tags.get(lineage_index.FINGERPRINT_TAG)
        fingerprints[other_uri] = lineage_index.load(tag) if tag else None
        if fingerprints[other_uri] is None:
            try:
                other = load_model(other_uri, cfg)
                fingerprints[other_uri] = lineage_index.compute(cfg, other)
                path = f"lineage/counterparts/{safe_name(other_uri.removeprefix('models:/'))}.npz"
                lineage_index.store(fingerprints[other_uri], path, v.name, str(v.version))
                del other
            except COUNTERPART_ERRORS as e:  # kept on the shortlist: its full check says why it cannot be compared
                print(f"modeldiff: no lineage fingerprint for {other_uri}: {' '.join(str(e).split())[:300]}")
    keep, rest = lineage.shortlist(fp, fingerprints, int(cfg.screening.shortlist))
    return {
        "fingerprint": reference,
        "shortlist_size": int(cfg.screening.shortlist),
        "checked": [c.key for c in keep],
        "shortlist": [c.summary() for c in keep],
        "screened_out": [c.summary() for c in rest],
    }


def _compare(cfg, dist: Dist, other_uri: str, new: LoadedModel, run) -> dict:
    """One counterpart against the new version: the pair's report (logged under pairs/)."""
    with dist.main_first():
        other = load_model(other_uri, cfg)
    check_comparable(other, new)
    # the counterpart was registered before the new version: that order is evidence of direction (the last resort)
    rep, _ = check_pair(cfg, dist, other, new, run.info.experiment_id if run else None, order="registration_order")
    if run:
        mlflow.log_dict(rep, f"pairs/{safe_name(other_uri.removeprefix('models:/'))}.json")
    return rep


def run(cfg, dist: Dist, args) -> dict | None:
    version = args.version.strip()
    if not version and not (args.model_a.strip() and args.model_b.strip()):
        raise ValueError(
            "plagiarism_check needs model_a and model_b, or version=models:/<name>/<version>: "
            "e.g. -P model_a=toy:small -P model_b=noise:1e-2:relative:toy:small"
        )
    name = f"plagiarism_check {version}" if version else f"plagiarism_check {args.model_a} vs {args.model_b}"
    with dist.main_run("plagiarism_check", cfg, vars(args), run_name=name):
        if version:
            return _version_mode(cfg, dist, version)
        return _pair_mode(cfg, dist, args.model_a.strip(), args.model_b.strip())
