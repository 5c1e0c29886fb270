"""What every entry point and CLI command shares: the process group (Accelerate), set-up, arguments, and one-line
errors."""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager, nullcontext

from mlflow.exceptions import MlflowException

from modeldiff.config import load_config
from modeldiff.method.scoring import ShardedScorer
from modeldiff.method.tempering import ladder_slice

from . import tracking

# Errors whose message tells the user what to do; anything else is a bug and keeps its traceback.
# (RuntimeError: e.g. WHAM not converging, which names its fix.) MODELDIFF_DEBUG=1 shows tracebacks.
USER_ERRORS = (ValueError, OSError, FloatingPointError, RuntimeError, MlflowException)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", default="configs/toy.yaml", help="YAML file or preset name (configs/<name>.yaml)")
    p.add_argument("--overrides", default="", help='OmegaConf dot-list, e.g. "space.length=6 z_range=[1.8,2.1]"')
    return p


class Dist:
    """The processes of an `accelerate launch` (a single one without it). Only the main process logs;
    sampler ladders and cross-eval scoring are split across all of them."""

    def __init__(self):
        from accelerate import PartialState

        self.state = PartialState()
        self.is_main, self.index = self.state.is_main_process, self.state.process_index
        self.n = self.state.num_processes

    def gather(self, parts: list) -> list:
        from accelerate.utils import gather_object

        return gather_object(parts) if self.n > 1 else parts

    def broadcast(self, obj):
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([obj])[0] if self.n > 1 else obj

    def share(self, n_units: int) -> slice | None:
        """This process's contiguous share of stage 1's independent units (ladders or blocks); None: all of them."""
        return ladder_slice(n_units, self.index, self.n) if self.n > 1 else None

    def rounds(self, n_units: int) -> int:
        """The most units any process gets (shares differ by at most one)."""
        return -(-n_units // self.n)

    def shard(self, scorer):
        return ShardedScorer(scorer, self.index, self.n, self.gather) if self.n > 1 else scorer

    def main_first(self):
        """Main process first (e.g. it trains and caches a toy model, the others then load it)."""
        return self.state.main_process_first()

    def main_run(self, entry_point: str, cfg, params: dict, run_name: str | None = None):
        return tracking.start_run(entry_point, cfg, params, run_name) if self.is_main else nullcontext()


def setup(args) -> tuple:
    """(config, Dist) for parsed `args`; model.device=auto becomes this process's device."""
    from transformers.utils import logging as hf_logging

    # progress bars for tiny local files only clutter the log (and `mlflow run`'s output)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    hf_logging.disable_progress_bar()
    tracking.setup()
    from . import model_registry  # noqa: F401  (plugs models:/<name>/<version> refs into the model loader)

    cfg = load_config(args.config, args.overrides)
    dist = Dist()
    if cfg.model.device == "auto":
        cfg.model.device = str(dist.state.device)
    return cfg, dist


@contextmanager
def user_errors():
    """Print a user error as one `modeldiff: error: ...` line and exit 2 (open runs have already ended FAILED)."""
    try:
        yield
    except USER_ERRORS as e:
        if os.environ.get("MODELDIFF_DEBUG"):
            raise
        print(f"modeldiff: error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(2)
