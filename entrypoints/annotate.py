"""Entry point `annotate`: score a cross_eval run's inputs in a D window, then precision and recall (Sec. 3.4).

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
from pathlib import Path

import mlflow

from modeldiff import annotate, plots, tracking
from modeldiff.annotate import Selection, Window
from modeldiff.config import stage_hash as _stage_hash
from modeldiff.models import LoadedModel, load_model

from ._common import Dist, parser, setup, user_errors

SHEET, PAGE, GIVEN = "sheet.csv", "sheet.html", "scores.csv"
ARROWS = {"AB": "A→B", "BA": "B→A"}


def stage_hash(cfg, cross_eval_run: str, window: Window, mode: str, annotator: str) -> str:
    return _stage_hash(cfg, "annotate", cross_eval_run=cross_eval_run, window=window.text, mode=mode,
                       annotator=annotator)


def _reference(cfg, tags: dict) -> LoadedModel:
    """Model A of the cross_eval run, as the judge's tokenizer check needs it, loaded as that run loaded it."""
    a = load_model(tags[tracking.MODEL_A], cfg)
    if a.identity != tags.get(tracking.identity_tag(tracking.MODEL_A)):
        raise ValueError(f"{a.ref} now loads as {a.identity}, not as in the cross_eval run: pass the config and "
                         "overrides of that run")
    return a


def _log_sheet(selection: Selection, scores, title: str, about: dict, instructions: str, given: str = ""):
    sheet = annotate.to_sheet(selection, scores)
    with tempfile.TemporaryDirectory() as tmp:
        annotate.write_sheet(sheet, Path(tmp) / SHEET)
        page = annotate.sheet_html(sheet, selection, title, about, instructions)
        (Path(tmp) / PAGE).write_text(page, encoding="utf-8")
        if given:  # the file as the annotators left it (extra columns, comments)
            shutil.copyfile(given, Path(tmp) / GIVEN)
        mlflow.log_artifacts(tmp, "annotation")


def _import_command(cross_eval_run: str, window: str, cfg_args: dict) -> str:
    params = {"cross_eval_run": cross_eval_run, "window": window, **cfg_args, "scores": "<filled sheet.csv>"}
    return "mlflow run . -e annotate --env-manager local " + " ".join(
        f"-P {shlex.quote(f'{k}={v}')}" for k, v in params.items() if v != "")


def execute(cfg, dist: Dist, cross_eval_run: str, window_text: str = "", scores: str = "",
            reference=None, judge: LoadedModel | None = None, cfg_args: dict | None = None) -> str | None:
    """Inside an open run on the main process (the others have nothing to do); returns the run id there.
    `reference()` gives model A for the judge's tokenizer check (default: loaded from the run's tags);
    `judge` a loaded judge model (default: loaded from annotate.judge.model)."""
    if not dist.is_main:
        return None
    tags = tracking.get_run(cross_eval_run, "cross_eval").data.tags
    direction = tags.get(tracking.DIRECTION)
    window = annotate.parse_window(window_text, direction, float(cfg["lambda"]))
    a = cfg.annotate
    name = a.annotator
    if scores and name != "human":
        raise ValueError(f"scores were given and annotate.annotator is {name}: pass either a filled sheet (with "
                         "annotator human) or an automatic annotator, not both")
    mode = "sheet" if scores else "export" if name == "human" else "automatic"
    draws = tracking.load_draws(cross_eval_run)
    selection = annotate.select(draws, window, float(a.bin_width), 0 if mode == "automatic" else int(a.per_bin),
                                int(cfg.seed), id_prefix=f"{direction}-")
    mlflow.set_tags({k: v for k, v in tags.items() if k.startswith((tracking.MODEL_A, tracking.MODEL_B))})
    mlflow.set_tags({tracking.DIRECTION: direction, "modeldiff.cross_eval_run": cross_eval_run,
                     "modeldiff.annotate.mode": mode, "modeldiff.annotate.window": window.text})
    arrow = ARROWS[direction]
    title = f"annotation sheet: {arrow} draws with D in {window.text}"
    about = {"cross_eval run": cross_eval_run, "A": tags.get(tracking.MODEL_A), "B": tags.get(tracking.MODEL_B),
             "sampling model": tags.get(tracking.MODEL_A if direction == "AB" else tracking.MODEL_B),
             "inputs": f"{len(selection.rows)}, for {int(selection.rows['n_draws'].sum())} of the "
                       f"{int(selection.bin_draws.sum())} draws in the window ({selection.per_bin or 'all'} per bin)"}
    run_id = mlflow.active_run().info.run_id

    if mode == "export":
        cfg_args = cfg_args or {}
        instructions = ("Score each input from 0 (completely bad) to 1 (perfectly good: agrees with the training "
                        "objective) in the score column of sheet.csv; leave the other columns as they are.")
        _log_sheet(selection, None, title, about, instructions)
        mlflow.log_metrics({"n_to_annotate": len(selection.rows), "n_in_window": int(selection.bin_draws.sum())})
        mlflow.set_tag(tracking.CONFIG_HASH, stage_hash(cfg, cross_eval_run, window, mode, name))
        print(f"modeldiff: annotate: exported {len(selection.rows)} inputs of cross_eval run {cross_eval_run} "
              f"({arrow}, D in {window.text}, {selection.n_bins} bins) to run {run_id} as annotation/{SHEET} and "
              f"annotation/{PAGE}.\n"
              f"  1. download it: MLFLOW_TRACKING_URI={shlex.quote(mlflow.get_tracking_uri())} "
              f"mlflow artifacts download -r {run_id} -a annotation/{SHEET} -d .\n"
              f"  2. fill its score column (0 = bad .. 1 = good; annotation/{PAGE} shows the inputs)\n"
              f"  3. import it: {_import_command(cross_eval_run, window_text, cfg_args)}")
        return run_id

    if mode == "sheet":
        source = f"annotation sheet {scores!r}"
        values = annotate.check_scores(annotate.read_sheet(scores), selection, source)
        identity = f"sheet:{annotate.sheet_sha256(scores)[:16]}"
    else:
        judge = judge or (annotate.load_judge(cfg) if name == "judge" else None)
        annotator = annotate.make_annotator(name, cfg, reference or (lambda: _reference(cfg, tags)), judge)
        values = annotate.score_rows(annotator, selection.rows, name)
        identity = annotate.annotator_identity(name, judge)
    result = annotate.estimate(selection, values)
    result = {"annotator": name if mode == "automatic" else "human", "cross_eval_run": cross_eval_run,
              "direction": direction, **result}
    _log_sheet(selection, values, title, {**about, "annotator": result["annotator"]}, "", scores)
    mlflow.log_dict(result, "annotation.json")
    tracking.log_figure(plots.r_d_figure(result, title=f"{arrow}: r(D) over ρ(D), D in {window.text}"),
                        "plots/r_D.png")
    mlflow.log_metrics({k: result[k] for k in ("precision", "precision_se", "recall", "recall_se", "window_mass")}
                       | {"n_in_window": result["counts"]["n_in_window"],
                          "n_annotated": result["counts"]["n_annotated"]})
    mlflow.set_tag(tracking.CONFIG_HASH, stage_hash(cfg, cross_eval_run, window, mode, identity))
    print(f"modeldiff: annotate: {arrow} D in {window.text}: precision {result['precision']:.4f} ± "
          f"{result['precision_se']:.4f}, recall {result['recall']:.4f} ± {result['recall_se']:.4f} "
          f"({result['counts']['n_annotated']} inputs scored by {result['annotator']})")
    return run_id


def main(argv=None):
    p = parser("Annotate a cross_eval run's inputs in a D window: export a sheet, import it, or score automatically.")
    p.add_argument("--cross_eval_run", required=True, help="run id of a cross_eval run")
    p.add_argument("--window", default="", help='D window: "lo,hi" (closed), brackets for open ends, e.g. '
                   '--window=-1,-0.6 or --window "(-inf,0)"; "" = the run\'s PD side (D < -lambda for AB, '
                   '> lambda for BA)')
    p.add_argument("--scores", default="", help="a filled annotation sheet (CSV) to import")
    args = p.parse_args(argv)
    with user_errors():
        cfg, dist = setup(args)
        with dist.main_run("annotate", cfg, vars(args), run_name="annotate"):
            cfg_args = {"config": args.config, "overrides": args.overrides}
            return execute(cfg, dist, args.cross_eval_run.strip(), args.window, args.scores.strip(),
                           cfg_args=cfg_args)


if __name__ == "__main__":
    main()
