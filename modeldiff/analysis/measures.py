"""The token view's measures (LMdiff): what is measured per token and model, the differences A − B, their
per-example aggregates, how a `measure` parameter names one, and the settings (the config's `tokendiff` section).
Plain names and numbers: the config checks them without importing torch."""

from __future__ import annotations

from dataclasses import dataclass, fields

SIDES = ("A", "B")
PER_MODEL = ("prob", "rank", "clamped_rank", "nll")
# differences A − B; the sign says which model a positive difference favours (+1: A, −1: B)
DIFFS = {"prob_diff": +1, "rank_diff": -1, "clamped_rank_diff": -1, "nll_diff": -1, "topk_diff": 0}
# per-example aggregates of a difference: signed centre (which model the example leans to) and size of the
# largest differences (|d|: how different the most different tokens are)
SIGNED_AGGREGATES = ("mean", "median")
AGGREGATES = SIGNED_AGGREGATES + ("q75_abs", "max_abs", "topk_abs")


def aggregate_columns() -> list[str]:
    return [f"{agg}_{m}" for m in DIFFS for agg in AGGREGATES]


def split_aggregate(column: str) -> tuple[str, str]:
    """ "max_abs_rank_diff" -> ("max_abs", "rank_diff")."""
    for agg in sorted(AGGREGATES, key=len, reverse=True):
        if column.startswith(agg + "_") and column[len(agg) + 1 :] in DIFFS:
            return agg, column[len(agg) + 1 :]
    raise KeyError(column)


def resolve_measure(measure: str) -> tuple[str, str]:
    """A `measure` parameter -> (the per-token difference to colour by, the aggregate to rank examples by).
    A difference ranks by its mean; an aggregate colours by its difference."""
    if measure in DIFFS:
        return measure, f"mean_{measure}"
    try:
        return split_aggregate(measure)[1], measure
    except KeyError:
        raise ValueError(
            f"unknown measure {measure!r}: pass a per-token difference ({', '.join(DIFFS)}) or an "
            f"aggregate <aggregate>_<difference> with <aggregate> one of {', '.join(AGGREGATES)} "
            "(e.g. max_abs_clamped_rank_diff)"
        ) from None


@dataclass(frozen=True)
class Settings:
    """The config's `tokendiff` section, typed and checked; its defaults are base.yaml's (tested)."""

    measure: str = "nll_diff"  # the default measure (a difference, or an aggregate of one)
    max_length: int = 128  # tokens per example (longer ones are truncated)
    top_k: int = 10  # predictions kept per token and model
    clamp_rank: int = 50  # ranks above this count as this in the clamped rank
    aggregate_k: int = 5  # topk_abs: mean of the k largest |differences| of an example
    n_top: int = 50  # most different examples per measure
    batch_size: int = 16  # sequences per forward pass
    cache: bool = True  # keep each model's analysis of a corpus under $MODELDIFF_CACHE/tokendiff
    max_views: int = 100  # corpus examples given a token view in the page
    cross_eval_views: int = 100  # distinct cross_eval inputs given a token view in its page
    hist_bins: int = 40  # bins of the page's histograms

    def __post_init__(self):
        for name, least in (
            ("max_length", 1),
            ("top_k", 1),
            ("clamp_rank", 1),
            ("aggregate_k", 1),
            ("n_top", 1),
            ("batch_size", 1),
            ("max_views", 0),
            ("cross_eval_views", 0),
            ("hist_bins", 1),
        ):
            if int(getattr(self, name)) < least:
                raise ValueError(
                    f"config key 'tokendiff.{name}' must be >= {least}, got {getattr(self, name)!r}: "
                    f'fix it in the config or with overrides "tokendiff.{name}=..."'
                )
        try:
            resolve_measure(self.measure)
        except ValueError as e:
            raise ValueError(f"config key 'tokendiff.measure': {e}") from None

    @classmethod
    def from_node(cls, node) -> Settings:
        return cls(**{f.name: node[f.name] for f in fields(cls)})

    @classmethod
    def from_cfg(cls, cfg) -> Settings:
        return cls.from_node(cfg.tokendiff)
