"""The stages: one record per MLproject entry point, the one list they are declared in, and what they share.

A stage is its record here (name, parameters, the config keys that enter its hash, the CLI command) plus one module of
this package with `run(cfg, dist, args)` (the entry point: open the run, do the work, return the result) and, for
stages `main` chains, an `execute(...)` that works inside an open run. `MLproject`, `docker/project/MLproject`, the
`entrypoints/<name>.py` launchers and the CLI's commands follow from `STAGES` (modeldiff.platform.project writes
them; a test checks they agree). Adding a stage is one module here and one entry in `STAGES`. This file imports
neither MLflow nor torch, so the CLI lists its commands at once.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass

from modeldiff.config import config_hash


@dataclass(frozen=True)
class Param:
    """An entry-point parameter besides `config` and `overrides`; default None = required."""

    name: str
    default: str | None = None
    help: str = ""
    equals: bool = False  # passed as --name={name}: a value may start with "-" (e.g. a D window -1,-0.6)


@dataclass(frozen=True)
class Stage:
    name: str  # the entry point and this package's module
    command: str  # the `modeldiff` CLI command
    summary: str  # one line: the CLI's list of commands
    description: str  # the entry point's --help
    params: tuple[Param, ...] = ()
    hash_keys: tuple[str, ...] | None = None  # config keys its result depends on (None: the whole config)
    launcher: str = "python"  # "accelerate": MLproject starts it with `accelerate launch` (parameter accelerate_config)

    @property
    def module(self) -> str:
        return f"{__name__}.{self.name}"

    def load(self):
        return importlib.import_module(self.module)

    def hash(self, cfg, **extra) -> str:
        """The fingerprint of everything this stage's result depends on: its config keys and `extra` (model
        identities, upstream run ids). A finished run with the same hash is reused."""
        return config_hash(cfg, extra, self.hash_keys)

    def parser(self) -> argparse.ArgumentParser:
        from ..runtime import parser

        p = parser(self.description)
        for param in self.params:
            if param.default is None:
                p.add_argument(f"--{param.name}", required=True, help=param.help)
            else:
                p.add_argument(f"--{param.name}", default=param.default, help=param.help)
        return p

    def main(self, argv=None):
        """The entry point: parse, set up (config, processes), run; a user error is one line and exit code 2."""
        from ..runtime import setup, user_errors

        args = self.parser().parse_args(argv)
        with user_errors():
            cfg, dist = setup(args)
            return self.load().run(cfg, dist, args)


_MODEL_REFS = "toy:small, a model directory, a .gguf file, a hub id or models:/name/version"
# what the chain's token-view page (cross_eval) depends on, besides the draws
_PAGE_KEYS = ("tokendiff.top_k", "tokendiff.clamp_rank", "tokendiff.cross_eval_views", "tokendiff.hist_bins")

STAGES: tuple[Stage, ...] = (
    Stage(
        "sample_outdist",
        "sample-outdist",
        "stage 1: one model's output distribution",
        "Sample one model's output distribution rho(z) (stage 1).",
        (
            Param("model", help=_MODEL_REFS),
            Param("resume", "", "run id of an interrupted sample_outdist run: continue from its last checkpoint"),
        ),
        ("seed", "space", "z_range", "output", "bins", "sampler", "uncertainty", "model.dtype"),
    ),
    Stage(
        "cross_eval",
        "cross-eval",
        "stage 2: one model's draws scored by the other",
        "Cross-evaluate a sample_outdist run's draws on another model (stage 2).",
        (
            Param("outdist_run", help="run id of the sampling model's sample_outdist run"),
            Param("other_model", help="the model that scores the draws"),
            Param("direction", "AB", "AB: the outdist run's model is A; BA: it is B"),
        ),
        ("seed", "output", "cross_eval", "uncertainty.n_replicates", "model.dtype", *_PAGE_KEYS),
    ),
    Stage(
        "normalize",
        "normalize",
        "stage 3: the ratio from an A→B and a B→A cross_eval run",
        "Normalise an A→B and a B→A cross_eval run into the ratio (stage 3).",
        (
            Param("ab_run", help="run id of the A→B cross_eval run"),
            Param("ba_run", help="run id of the B→A cross_eval run"),
        ),
        ("lambda", "seed", "uncertainty.level"),  # the seed draws stage 2's resamples
    ),
    Stage(
        "plagiarism_check",
        "plagiarism-check",
        "is one model a (noise-added) copy of another? (or screen a version)",
        "Check whether one model is a (noise-added) copy of another, or screen a registry version against the "
        "registered models of its vocabulary.",
        (
            Param("model_a", "", "the candidate parent"),
            Param("model_b", "", "the candidate copy"),
            Param("version", "", "models:/<name>/<version>: screen it against the registry instead"),
        ),
        ("seed", "plagiarism"),
    ),
    Stage(
        "main",
        "run-main",
        "the whole chain as child runs, reusing finished identical runs",
        "Compare two models: the whole Model-diff chain as child runs, reusing finished identical runs.",
        (Param("model_a", "", '"" = the config\'s models.a'), Param("model_b", "", '"" = the config\'s models.b')),
        None,
        launcher="accelerate",
    ),
    Stage(
        "compare",
        "compare",
        "several models against one reference (Appendix B), sharing its sampling and draws",
        "Compare several models with one reference model (paper Appendix B): one main chain per model, the "
        "reference sampled once, every row on the scale of the reference's likely inputs, with intervals.",
        (
            Param("reference", "", '"" = the config\'s models.a'),
            Param("models", help='the models to compare with the reference, space-separated: "m1 m2 m3"'),
        ),
        None,
    ),
    Stage(
        "tokendiff",
        "tokendiff",
        "the token-level view of two models on a corpus or one text (LMdiff)",
        "The token-level view of two models (LMdiff) on a corpus or one text.",
        (
            Param("model_a", "", '"" = the config\'s models.a'),
            Param("model_b", "", '"" = the config\'s models.b'),
            Param("corpus", "", "a text file (one example a line) or a .parquet file"),
            Param("column", "text", "the parquet corpus's column"),
            Param("text", "", "one input inline, instead of a corpus"),
            Param("measure", "", '"" = the config\'s tokendiff.measure'),
        ),
    ),
    Stage(
        "annotate",
        "annotate",
        "Sec. 3.4: annotation sheets, automatic annotators, precision and recall",
        "Annotate a cross_eval run's inputs in a D window: export a sheet, import it, or score automatically.",
        (
            Param("cross_eval_run", help="run id of a cross_eval run"),
            Param(
                "window",
                "",
                '"lo,hi" = [lo, hi] (brackets for open ends, e.g. "(-inf,0)"); "" = the run\'s PD '
                "side (D < -lambda for AB, > lambda for BA)",
                equals=True,
            ),
            Param("scores", "", "a filled annotation sheet (CSV) to import"),
        ),
        # the window's default and the annotators (toy rule, judge) read these (not annotate.in_main, so main and
        # a standalone run share results); the cross_eval run, window and annotator identity enter as extra
        (
            "seed",
            "lambda",
            "space",
            "z_range",
            "output",
            "model.dtype",
            "toy.modulus",
            "annotate.annotator",
            "annotate.per_bin",
            "annotate.bin_width",
            "annotate.judge",
            "uncertainty.n_replicates",  # a cross_eval run without replicates resamples its inputs this often
        ),
    ),
)
STAGE = {s.name: s for s in STAGES}


def entry_point(name: str):
    """`main(argv=None)` of the entry point `name` (what entrypoints/<name>.py runs)."""
    return STAGE[name].main
