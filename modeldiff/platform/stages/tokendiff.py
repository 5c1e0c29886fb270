"""Stage `tokendiff`: the token-level view of two models (LMdiff) on a corpus or one text.

A corpus (a text file, one example a line, or a parquet column) gives per-example aggregates of every
difference, their histograms, the most different examples per aggregate, and the HTML page; each model's
analysis of the corpus is cached, so comparing two cached models runs neither. `text` looks at one input.
Logs tokendiff/examples.parquet, tokendiff/tokens.parquet (the tokens of the examples with views),
tokendiff/top_examples.json and tables/top_examples.json, plots/tokendiff_<difference>.png (corpus) and
tokendiff/index.html.
"""

from __future__ import annotations

import mlflow
import pandas as pd

from modeldiff.analysis import tokendiff
from modeldiff.analysis.measures import AGGREGATES, DIFFS, SIDES, resolve_measure
from modeldiff.models import LoadedModel, check_comparable, load_model
from modeldiff.views import plots, tokenview

from .. import tracking
from ..runtime import Dist


def read_input(cfg, a: LoadedModel, corpus: str, column: str, text: str) -> tokendiff.Corpus:
    if bool(corpus.strip()) == bool(text.strip()):
        raise ValueError(
            "pass either corpus (a text file, one example a line, or a .parquet file) or text "
            "(one input inline), not both and not neither"
        )
    max_length = int(cfg.tokendiff.max_length)
    if text.strip():
        return tokendiff.text_corpus(text, a, max_length)
    return tokendiff.load_corpus(corpus.strip(), a, max_length, column.strip() or "text")


def _top_table(top: dict, examples: pd.DataFrame) -> pd.DataFrame:
    rows = [
        {
            "measure": col,
            "place": k + 1,
            "example": e,
            "row": int(examples.at[e, "row"]),
            "value": float(examples.at[e, col]),
            "text": examples.at[e, "text"],
        }
        for col, ids in top.items()
        for k, e in enumerate(ids)
    ]
    return pd.DataFrame(rows)


def execute(cfg, a: LoadedModel, b: LoadedModel, corpus: tokendiff.Corpus, measure: str) -> str:
    """Inside an open run: analyse (or read from the cache), compare, log; returns the run id."""
    colour_by, rank_by = resolve_measure(measure)
    settings = tokendiff.Settings.from_cfg(cfg)
    cmp, info = tokendiff.compare_models(a, b, corpus, settings, cache=bool(cfg.tokendiff.cache), progress=True)
    examples = cmp.examples.copy()
    examples.insert(1, "row", corpus.rows)
    examples.insert(2, "text", corpus.texts)
    tracking.log_parquet(examples, "tokendiff/examples.parquet")
    title = f"tokendiff: A = {a.ref}, B = {b.ref}" + (f" on {corpus.source}" if len(examples) > 1 else "")
    html = tokenview.corpus_page(
        cmp,
        corpus.texts,
        corpus.rows,
        tokenview.models_of(a, b),
        colour_by,
        rank_by,
        tokendiff.token_text_fn(a),
        settings.max_views,
        settings.hist_bins,
        title,
    )
    mlflow.log_text(html, "tokendiff/index.html")
    if len(examples) > 1:
        top = tokendiff.most_different(cmp.examples, settings.n_top)
        mlflow.log_dict(top, "tokendiff/top_examples.json")
        tracking.log_table(_top_table(top, examples), "tables/top_examples.json")
        for m in DIFFS:
            cols = [f"{agg}_{m}" for agg in AGGREGATES]
            labels = [tokenview.aggregate_label(c, settings.aggregate_k) for c in cols]
            tracking.log_figure(
                plots.aggregates_figure(cmp.examples, cols, labels, top, settings.hist_bins, title),
                f"plots/tokendiff_{m}.png",
            )
        viewed = tokenview.viewed_examples(cmp, rank_by, settings.max_views)
    else:
        viewed = [0]
    tokens = cmp.tokens[cmp.tokens["example"].isin(viewed)].copy()
    token_text = tokendiff.token_text_fn(a)
    tokens.insert(3, "token", [token_text(i) for i in tokens["token_id"]])
    for side in SIDES:
        tokens[f"topk_ids_{side}"] = list(cmp.topk_ids[side][tokens.index])
        tokens[f"topk_prob_{side}"] = list(cmp.topk_prob[side][tokens.index])
    tracking.log_parquet(tokens, "tokendiff/tokens.parquet")
    t = cmp.tokens
    mlflow.log_metrics(
        {
            **info,
            "n_examples": len(examples),
            "n_tokens": len(t),
            "n_truncated": corpus.n_truncated,
            "D_mean": float(examples["mean_nll_diff"].mean()),
            "frac_tokens_A_more_likely": float((t["prob_diff"] > 0).mean()),
            "frac_tokens_B_more_likely": float((t["prob_diff"] < 0).mean()),
            **{f"token_mean_{m}": float(t[m].mean()) for m in DIFFS},
        }
    )
    return mlflow.active_run().info.run_id


def run(cfg, dist: Dist, args) -> str:
    model_a, model_b = args.model_a.strip() or cfg.models.a, args.model_b.strip() or cfg.models.b
    measure = args.measure.strip() or cfg.tokendiff.measure
    with tracking.start_run("tokendiff", cfg, vars(args), run_name=f"tokendiff {model_a} vs {model_b}"):
        resolve_measure(measure)  # a misspelt measure fails before any model loads
        a, b = load_model(model_a, cfg), load_model(model_b, cfg)
        check_comparable(a, b)
        mlflow.set_tags(
            {
                tracking.MODEL_A: a.ref,
                tracking.MODEL_B: b.ref,
                tracking.identity_tag(tracking.MODEL_A): a.identity,
                tracking.identity_tag(tracking.MODEL_B): b.identity,
            }
        )
        corpus = read_input(cfg, a, args.corpus, args.column, args.text)
        mlflow.set_tags({"modeldiff.corpus": corpus.source, "modeldiff.corpus_checksum": corpus.checksum})
        return execute(cfg, a, b, corpus, measure)
