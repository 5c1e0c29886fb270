"""Stage `annotate`: score a cross_eval run's inputs in a D window, then precision and recall (Sec. 3.4).

Three modes, by what is given:
- no `scores` and annotator `human`: export the annotation sheet (annotation/sheet.csv to fill in,
  annotation/sheet.html to read) and say how to import it;
- `scores` (a filled sheet): check it against the same selection, then log annotation.json, metrics and
  plots/r_D.png;
- an automatic annotator (toy_rule, judge, module:function): score every draw in the window, log the same.
"""

from __future__ import annotations

import shlex
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow

from modeldiff.analysis import annotate
from modeldiff.analysis.annotate import Selection, Window
from modeldiff.method.uncertainty import REPLICATES_FILE, SideReplicates
from modeldiff.models import LoadedModel, load_model
from modeldiff.views import describe, plots
from modeldiff.views.sheet import sheet_html

from .. import tracking
from ..runtime import Dist
from . import STAGE

SHEET, PAGE, GIVEN = "sheet.csv", "sheet.html", "scores.csv"
ARROWS = {"AB": "A→B", "BA": "B→A"}


def stage_hash(cfg, cross_eval_run: str, window: Window, mode: str, annotator: str) -> str:
    return STAGE["annotate"].hash(
        cfg, cross_eval_run=cross_eval_run, window=window.text, mode=mode, annotator=annotator
    )


@dataclass
class Job:
    """One annotate run: what it annotates and what its pages say about it."""

    cross_eval_run: str
    tags: dict  # the cross_eval run's
    direction: str
    window: Window
    selection: Selection
    title: str
    about: dict
    replicates: SideReplicates | None  # the cross_eval run's (None: a run from before intervals)

    @property
    def arrow(self) -> str:
        return ARROWS[self.direction]


def _reference(cfg, tags: dict) -> LoadedModel:
    """Model A of the cross_eval run, as the judge's tokenizer check needs it, loaded as that run loaded it."""
    a = load_model(tags[tracking.MODEL_A], cfg)
    if a.identity != tags.get(tracking.identity_tag(tracking.MODEL_A)):
        raise ValueError(
            f"{a.ref} now loads as {a.identity}, not as in the cross_eval run: pass the config and "
            "overrides of that run"
        )
    return a


def _log_sheet(selection: Selection, scores, title: str, about: dict, instructions: str, given: str = ""):
    sheet = annotate.to_sheet(selection, scores)
    with tempfile.TemporaryDirectory() as tmp:
        annotate.write_sheet(sheet, Path(tmp) / SHEET)
        (Path(tmp) / PAGE).write_text(sheet_html(sheet, selection, title, about, instructions), encoding="utf-8")
        if given:  # the file as the annotators left it (extra columns, comments)
            shutil.copyfile(given, Path(tmp) / GIVEN)
        mlflow.log_artifacts(tmp, "annotation")


def _import_command(cross_eval_run: str, window: str, cfg_args: dict) -> str:
    params = {"cross_eval_run": cross_eval_run, "window": window, **cfg_args, "scores": "<filled sheet.csv>"}
    experiment = mlflow.get_experiment(mlflow.active_run().info.experiment_id).name
    return f"mlflow run . -e annotate --env-manager local --experiment-name {shlex.quote(experiment)} " + " ".join(
        f"-P {shlex.quote(f'{k}={v}')}" for k, v in params.items() if v != ""
    )


def _export(cfg, job: Job, window_text: str, cfg_args: dict) -> str:
    """Log the blank sheet and print how to fill and import it."""
    selection, run_id = job.selection, mlflow.active_run().info.run_id
    instructions = (
        "Score each input from 0 (completely bad) to 1 (perfectly good: agrees with the training "
        "objective) in the score column of sheet.csv; leave the other columns as they are."
    )
    _log_sheet(selection, None, job.title, job.about, instructions)
    mlflow.log_metrics({"n_to_annotate": len(selection.rows), "n_in_window": int(selection.bin_draws.sum())})
    tracking.set_description(
        describe.sheet_description(
            len(selection.rows),
            int(selection.bin_draws.sum()),
            job.window.text,
            job.arrow,
            _import_command(job.cross_eval_run, window_text, cfg_args),
        )
    )
    tracking.finish(stage_hash(cfg, job.cross_eval_run, job.window, "export", "human"))
    print(
        f"modeldiff: annotate: exported {len(selection.rows)} inputs of cross_eval run {job.cross_eval_run} "
        f"({job.arrow}, D in {job.window.text}, {selection.n_bins} bins) to run {run_id} as annotation/{SHEET} "
        f"and annotation/{PAGE}.\n"
        f"  1. download it: MLFLOW_TRACKING_URI={shlex.quote(mlflow.get_tracking_uri())} "
        f"mlflow artifacts download -r {run_id} -a annotation/{SHEET} -d .\n"
        f"  2. fill its score column (0 = bad .. 1 = good; annotation/{PAGE} shows the inputs)\n"
        f"  3. import it: {_import_command(job.cross_eval_run, window_text, cfg_args)}"
    )
    return run_id


def _read_scores(job: Job, scores: str):
    """A filled sheet's scores for the selection, and the sheet's identity."""
    values = annotate.check_scores(annotate.read_sheet(scores), job.selection, f"annotation sheet {scores!r}")
    return values, f"sheet:{annotate.sheet_sha256(scores)[:16]}"


def _score_automatically(cfg, job: Job, reference, judge: LoadedModel | None):
    """The automatic annotator's scores for the selection, and its identity."""
    name = cfg.annotate.annotator
    judge = judge or (annotate.load_judge(cfg) if name == "judge" else None)
    annotator = annotate.make_annotator(name, cfg, reference or (lambda: _reference(cfg, job.tags)), judge)
    return annotate.score_rows(annotator, job.selection.rows, name), annotate.annotator_identity(name, judge)


def _log_estimate(cfg, job: Job, mode: str, values, identity: str, scores: str) -> str:
    result = annotate.estimate(
        job.selection, values, job.replicates, int(cfg.uncertainty.n_replicates), seed=int(cfg.seed)
    )
    if job.replicates is None:
        print(
            f"modeldiff: warning: cross_eval run {job.cross_eval_run} has no replicates (it ran before intervals "
            "existed): standard errors resample its distinct inputs, which ignores how stage 1 found them; run "
            "cross_eval again for errors that include stage 1"
        )
    result = {
        "annotator": cfg.annotate.annotator if mode == "automatic" else "human",
        "cross_eval_run": job.cross_eval_run,
        "direction": job.direction,
        **result,
    }
    _log_sheet(job.selection, values, job.title, {**job.about, "annotator": result["annotator"]}, "", scores)
    mlflow.log_dict(result, "annotation.json")
    tracking.log_figure(
        plots.r_d_figure(result, title=f"{job.arrow}: r(D) over ρ(D), D in {job.window.text}"), "plots/r_D.png"
    )
    mlflow.log_metrics(
        {k: result[k] for k in ("precision", "precision_se", "recall", "recall_se", "window_mass")}
        | {"n_in_window": result["counts"]["n_in_window"], "n_annotated": result["counts"]["n_annotated"]}
    )
    tracking.set_description(
        describe.annotation_description(
            result,
            runs=tracking.located({f"cross_eval {job.arrow}": job.cross_eval_run}),
            experiment_id=tracking.active_experiment_id(),
        )
    )
    run_id = tracking.finish(stage_hash(cfg, job.cross_eval_run, job.window, mode, identity))
    print(
        f"modeldiff: annotate: {job.arrow} D in {job.window.text}: precision {result['precision']:.4f} ± "
        f"{result['precision_se']:.4f}, recall {result['recall']:.4f} ± {result['recall_se']:.4f} "
        f"({result['counts']['n_annotated']} inputs scored by {result['annotator']})"
    )
    return run_id


def _job(cfg, cross_eval_run: str, window_text: str, mode: str) -> Job:
    """Select the inputs to score and tag the run with what it annotates."""
    tags = tracking.get_run(cross_eval_run, "cross_eval").data.tags
    direction = tags.get(tracking.DIRECTION)
    window = annotate.parse_window(window_text, direction, float(cfg["lambda"]))
    a = cfg.annotate
    draws = tracking.load_draws(cross_eval_run)
    selection = annotate.select(
        draws,
        window,
        float(a.bin_width),
        0 if mode == "automatic" else int(a.per_bin),
        int(cfg.seed),
        id_prefix=f"{direction}-",
    )
    mlflow.set_tags({k: v for k, v in tags.items() if k.startswith((tracking.MODEL_A, tracking.MODEL_B))})
    mlflow.set_tags(
        {
            tracking.DIRECTION: direction,
            "modeldiff.cross_eval_run": cross_eval_run,
            "modeldiff.annotate.mode": mode,
            "modeldiff.annotate.window": window.text,
        }
    )
    about = {
        "cross_eval run": cross_eval_run,
        "A": tags.get(tracking.MODEL_A),
        "B": tags.get(tracking.MODEL_B),
        "sampling model": tags.get(tracking.MODEL_A if direction == "AB" else tracking.MODEL_B),
        "inputs": f"{len(selection.rows)}, for {int(selection.rows['n_draws'].sum())} of the "
        f"{int(selection.bin_draws.sum())} draws in the window ({selection.per_bin or 'all'} per bin)",
    }
    title = f"annotation sheet: {ARROWS[direction]} draws with D in {window.text}"
    replicates = (
        tracking.load_replicates(cross_eval_run)
        if tracking.has_artifact(cross_eval_run, f"cross_eval/{REPLICATES_FILE}")
        else None
    )
    return Job(cross_eval_run, tags, direction, window, selection, title, about, replicates)


def execute(
    cfg,
    dist: Dist,
    cross_eval_run: str,
    window_text: str = "",
    scores: str = "",
    reference=None,
    judge: LoadedModel | None = None,
    cfg_args: dict | None = None,
) -> str | None:
    """Inside an open run on the main process (the others have nothing to do); returns the run id there.
    `reference()` gives model A for the judge's tokenizer check (default: loaded from the run's tags);
    `judge` a loaded judge model (default: loaded from annotate.judge.model)."""
    if not dist.is_main:
        return None
    name = cfg.annotate.annotator
    if scores and name != "human":
        raise ValueError(
            f"scores were given and annotate.annotator is {name}: pass either a filled sheet (with "
            "annotator human) or an automatic annotator, not both"
        )
    mode = "sheet" if scores else "export" if name == "human" else "automatic"
    job = _job(cfg, cross_eval_run, window_text, mode)
    if mode == "export":
        return _export(cfg, job, window_text, cfg_args or {})
    values, identity = (
        _read_scores(job, scores) if mode == "sheet" else _score_automatically(cfg, job, reference, judge)
    )
    return _log_estimate(cfg, job, mode, values, identity, scores)


def run(cfg, dist: Dist, args) -> str | None:
    with dist.main_run("annotate", cfg, vars(args), run_name="annotate"):
        cfg_args = {"config": args.config, "overrides": args.overrides}
        return execute(cfg, dist, args.cross_eval_run.strip(), args.window, args.scores.strip(), cfg_args=cfg_args)
