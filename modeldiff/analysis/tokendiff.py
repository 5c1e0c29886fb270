"""The token-level view of two models (LMdiff, Strobelt et al. 2021): Model-diff's microscopic view.

For every token of a text, each model's probability and rank of the actual token, its clamped rank, and its
top-k predictions; the differences A − B of each; and per-example aggregates, over one text or a corpus.

Conventions, as everywhere in modeldiff: every sequence is scored after `space.bos_token_id` (the first real
token is predicted from BOS); log-probabilities are float32 over the model's full vocabulary (the Scorer's
forward and logit − logsumexp, so an example's mean NLL is the samplers' z, up to float32 rounding of the mean);
differences are always A minus B, so the mean of `nll_diff` over an example is D = z_A − z_B.
Rank: 1 + the number of tokens whose float32 logit is strictly greater than the actual token's, so rank 1 is
the argmax and tokens tied with the actual one share its (best) rank. Top-k lists are torch.topk's order
(ties among exactly equal logits come in its order).

A corpus (a text file, one example a line, or a parquet column) is processed in batches, and each model's
analysis of it is cached under $MODELDIFF_CACHE/tokendiff, keyed by the model's identity and vocabulary, the
corpus checksum and the settings that change the numbers; comparing two cached models runs neither.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from modeldiff.method.scoring import Scorer
from modeldiff.models import LoadedModel, cache_root, vocabulary_key

from .measures import (
    DIFFS,
    PER_MODEL,
    SIDES,
    SIGNED_AGGREGATES,
    Settings,
    aggregate_columns,
    split_aggregate,
)

# whitespace made visible in token texts (a token " the" shows as "·the")
VISIBLE_WHITESPACE = str.maketrans({" ": "·", "\n": "↵", "\t": "⇥", "\r": "␍"})
CACHE_VERSION = 1


# ---------------------------------------------------------------------------------------------- one model


@dataclass
class TokenAnalysis:
    """One model's view of a list of sequences, flat over all tokens; example i is rows offsets[i]:offsets[i+1]."""

    offsets: np.ndarray  # int64 [n + 1]
    tokens: np.ndarray  # int64 [T] the actual tokens
    logprob: np.ndarray  # float32 [T] log p(actual token | BOS, prefix)
    rank: np.ndarray  # int64 [T]
    topk_ids: np.ndarray  # int64 [T, k]
    topk_logprob: np.ndarray  # float32 [T, k]
    meta: dict = field(default_factory=dict)

    @property
    def n_examples(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def save(self, path: Path):
        """Written to a private file and renamed, so a concurrent or interrupted run never reads half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.npz")
        np.savez(
            tmp,
            offsets=self.offsets,
            tokens=self.tokens,
            logprob=self.logprob,
            rank=self.rank,
            topk_ids=self.topk_ids,
            topk_logprob=self.topk_logprob,
            meta=np.array(json.dumps(self.meta)),
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> TokenAnalysis:
        with np.load(path, allow_pickle=False) as f:
            return cls(
                f["offsets"],
                f["tokens"],
                f["logprob"],
                f["rank"],
                f["topk_ids"],
                f["topk_logprob"],
                json.loads(str(f["meta"])),
            )


def _offsets(sequences) -> np.ndarray:
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    if len(lengths) and lengths.min() < 1:
        raise ValueError("every example needs at least one token")
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


@torch.inference_mode()
def analyse(
    model,
    bos_token_id: int,
    sequences: list[np.ndarray],
    top_k: int = 10,
    batch_size: int = 16,
    progress: bool = False,
    desc: str = "tokendiff",
) -> TokenAnalysis:
    """Probabilities, ranks and top-k of every token of `sequences` (token-id arrays of any lengths), from one
    forward pass per batch. Batches hold examples of similar lengths, right-padded: a causal LM's real positions
    never see the padding after them."""
    scorer = Scorer(model, bos_token_id, batch_size=batch_size)
    offsets = _offsets(sequences)
    lengths, n_tokens = np.diff(offsets), int(offsets[-1])
    tokens = (
        np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences]) if len(sequences) else np.zeros(0, np.int64)
    )
    head = model.get_output_embeddings()
    vocab = head.weight.shape[0] if head is not None else int(model.config.vocab_size)
    top_k = min(int(top_k), vocab)  # a toy may have fewer tokens than k: all of them
    logprob, rank = np.empty(n_tokens, np.float32), np.empty(n_tokens, np.int64)
    topk_ids, topk_logprob = np.empty((n_tokens, top_k), np.int64), np.empty((n_tokens, top_k), np.float32)
    order = np.argsort(-lengths, kind="stable")
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        rows = order[start : start + batch_size]
        width = int(lengths[rows].max())
        chunk = torch.full((len(rows), width), int(bos_token_id), dtype=torch.long)
        for j, i in enumerate(rows):
            chunk[j, : lengths[i]] = torch.from_numpy(tokens[offsets[i] : offsets[i + 1]])
        chunk = chunk.to(scorer.device)
        logits = scorer.scored_logits(width, input_ids=scorer.with_bos(chunk)).float()
        picked = logits.gather(-1, chunk.unsqueeze(-1))
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)
        lp = (picked - lse).squeeze(-1).cpu().numpy()  # scoring.token_logprobs_from_logits, sharing its logsumexp
        rk = ((logits > picked).sum(-1) + 1).cpu().numpy()
        top_v, top_i = logits.topk(top_k, dim=-1)
        top_lp = (top_v - lse).cpu().numpy()
        top_i = top_i.cpu().numpy()
        scorer.n_scored += len(rows)
        for j, i in enumerate(rows):
            a, b, n = offsets[i], offsets[i + 1], lengths[i]
            logprob[a:b], rank[a:b] = lp[j, :n], rk[j, :n]
            topk_ids[a:b], topk_logprob[a:b] = top_i[j, :n], top_lp[j, :n]
    if n_tokens and not np.isfinite(logprob).all():
        raise FloatingPointError(
            "a token got a NaN/inf log-probability: the model's weights or dtype are broken (try dtype float32)"
        )
    return TokenAnalysis(offsets, tokens, logprob, rank, topk_ids, topk_logprob, {"top_k": int(top_k)})


# ---------------------------------------------------------------------------------------------- corpora


@dataclass
class Corpus:
    texts: list[str]  # the examples as read
    rows: np.ndarray  # where each came from: 0-based line (text file) or row (parquet)
    tokens: list[np.ndarray]  # token ids, truncated to max_length
    checksum: str  # sha256 of the examples as read (and the parquet column)
    source: str = ""
    n_truncated: int = 0


def checksum(texts: list[str], column: str | None = None) -> str:
    blob = json.dumps({"column": column, "examples": list(texts)}, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def read_corpus(path: str | Path, column: str = "text") -> tuple[list[str], np.ndarray, str]:
    """(examples, their 0-based rows, checksum) of a text file (one example a line, blank lines skipped) or a
    parquet column (strings, or lists of token ids for models without a tokenizer; nulls skipped)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"corpus {str(path)!r} not found: pass a text file (one example a line) or a .parquet file")
    if p.suffix.lower() == ".parquet":
        try:
            values = pd.read_parquet(p, columns=[column])[column]
        except (KeyError, ValueError) as e:
            import pyarrow.parquet as pq

            try:
                names = pq.read_schema(p).names
            except Exception:
                raise ValueError(
                    f"cannot read the parquet corpus {str(path)!r} ({str(e).splitlines()[0]}): pass a parquet file"
                ) from None
            raise ValueError(
                f"parquet corpus {str(path)!r} has no column {column!r}: pass column= one of {', '.join(names)}"
            ) from None
        rows, texts = [], []
        for i, v in enumerate(values):
            if isinstance(v, (list, tuple, np.ndarray)):
                v = " ".join(str(int(t)) for t in v)
            elif v is None or pd.isna(v):
                continue
            if not isinstance(v, str):
                raise ValueError(
                    f"parquet corpus {str(path)!r}: column {column!r} holds {type(v).__name__} values: "
                    "pass a column of strings (or of token-id lists)"
                )
            if v.strip():
                rows.append(i)
                texts.append(v)
        where = f"column {column!r} of {str(path)!r}"
    else:
        try:
            lines = p.read_text(encoding="utf-8").split("\n")
        except UnicodeDecodeError as e:
            raise ValueError(
                f"corpus {str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start}): "
                "pass a UTF-8 text file, one example a line"
            ) from None
        lines = [line.removesuffix("\r") for line in lines]
        rows = [i for i, line in enumerate(lines) if line.strip()]
        texts = [lines[i] for i in rows]
        where, column = repr(str(path)), None
    if not texts:
        raise ValueError(f"corpus {where} has no examples (only blank lines or nulls): pass a non-empty corpus")
    return texts, np.asarray(rows, dtype=np.int64), checksum(texts, column)


def max_tokens(loaded: LoadedModel, max_length: int) -> int:
    """max_length, or less where the model has fewer positions (BOS takes one)."""
    cfg = loaded.model.config
    positions = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
    return min(int(max_length), int(positions) - 1) if positions else int(max_length)


def tokenize(
    texts: list[str], rows, loaded: LoadedModel, max_length: int, where: str = "the corpus"
) -> tuple[list[np.ndarray], int]:
    """(token ids per example truncated to max_length, how many were truncated). With a tokenizer: no special
    tokens added. Without (toys): an example is space-separated token ids from the model's token set."""
    limit = max_tokens(loaded, max_length)
    if loaded.tokenizer is not None:
        ids = loaded.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    else:
        allowed = set(loaded.space.token_ids)
        ids = []
        for text, row in zip(texts, rows):
            try:
                seq = [int(t) for t in text.split()]
            except ValueError:
                raise ValueError(
                    f"{where}, row {row}: {text[:40]!r} is not space-separated token ids, which is what "
                    f"a model without a tokenizer ({loaded.ref}) reads"
                ) from None
            bad = next((t for t in seq if t not in allowed), None)
            if bad is not None:
                lo, hi = min(allowed), max(allowed)
                raise ValueError(
                    f"{where}, row {row}: token id {bad} is not in {loaded.ref}'s token set "
                    f"({len(allowed)} ids in {lo}..{hi}): use ids of that set"
                )
            ids.append(seq)
    out, n_truncated = [], 0
    for seq, row in zip(ids, rows):
        if not seq:
            raise ValueError(f"{where}, row {row}: the example tokenises to no tokens: remove it")
        n_truncated += len(seq) > limit
        out.append(np.asarray(seq[:limit], dtype=np.int64))
    return out, n_truncated


def load_corpus(path: str | Path, loaded: LoadedModel, max_length: int, column: str = "text") -> Corpus:
    texts, rows, digest = read_corpus(path, column)
    where = f"corpus {str(path)!r}" + (f" column {column!r}" if Path(path).suffix.lower() == ".parquet" else "")
    tokens, n_truncated = tokenize(texts, rows, loaded, max_length, where)
    return Corpus(texts, rows, tokens, digest, str(path), n_truncated)


def text_corpus(text: str, loaded: LoadedModel, max_length: int) -> Corpus:
    """One example given inline."""
    if not text.strip():
        raise ValueError("text is empty: pass the text to look at, or a corpus")
    tokens, n_truncated = tokenize([text], [0], loaded, max_length, "text")
    return Corpus([text], np.zeros(1, np.int64), tokens, checksum([text]), "text", n_truncated)


def ids_corpus(ids: np.ndarray, texts: list[str], source: str = "") -> Corpus:
    """Sequences already in token ids (e.g. cross_eval's representative inputs)."""
    tokens = [np.asarray(t, dtype=np.int64) for t in ids]
    digest = hashlib.sha256(json.dumps([t.tolist() for t in tokens]).encode()).hexdigest()
    return Corpus(list(texts), np.arange(len(tokens)), tokens, digest, source)


# ---------------------------------------------------------------------------------------------- the cache


def model_dtype(loaded: LoadedModel) -> str:
    return str(next(loaded.model.parameters()).dtype).removeprefix("torch.")


def cache_key(loaded: LoadedModel, corpus: Corpus, settings: Settings) -> dict:
    """Everything the cached numbers depend on."""
    return {
        "version": CACHE_VERSION,
        "identity": loaded.identity,
        "vocabulary": vocabulary_key(loaded),
        "bos": int(loaded.space.bos_token_id),
        "dtype": model_dtype(loaded),
        "corpus": corpus.checksum,
        "max_length": max_tokens(loaded, settings.max_length),
        "top_k": settings.top_k,
    }


def cache_path(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_root() / "tokendiff" / f"{digest}.npz"


def _read_cached(path: Path, key: dict, corpus: Corpus) -> TokenAnalysis | None:
    """The cached analysis if it is complete and made from exactly this key and these tokens, else None."""
    try:
        an = TokenAnalysis.load(path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    same_tokens = (
        an.n_examples == len(corpus.tokens)
        and np.array_equal(an.offsets, _offsets(corpus.tokens))
        and np.array_equal(an.tokens, np.concatenate(corpus.tokens))
    )
    return an if an.meta.get("key") == key and same_tokens else None


def analyse_corpus(
    loaded: LoadedModel, corpus: Corpus, settings: Settings, cache: bool = True, progress: bool = False
) -> tuple[TokenAnalysis, bool]:
    """(the model's analysis of the corpus, whether it came from the cache). A cache hit runs no model."""
    key = cache_key(loaded, corpus, settings)
    path = cache_path(key)
    if cache and path.exists():
        found = _read_cached(path, key, corpus)
        if found is not None:
            return found, True
    t0 = time.perf_counter()
    an = analyse(
        loaded.model,
        loaded.space.bos_token_id,
        corpus.tokens,
        settings.top_k,
        settings.batch_size,
        progress=progress,
        desc=f"tokendiff {loaded.ref}",
    )
    an.meta.update(key=key, ref=loaded.ref, source=corpus.source, seconds=time.perf_counter() - t0)
    if cache:
        an.save(path)
    return an, False


# ---------------------------------------------------------------------------------------------- two models


@dataclass
class Comparison:
    tokens: pd.DataFrame  # one row per token: example, position, token_id, per-model measures, differences
    examples: pd.DataFrame  # one row per example: example, n_tokens, z_A, z_B, aggregates of every difference
    topk_ids: dict  # side -> int64 [T, k]
    topk_prob: dict  # side -> float64 [T, k]
    offsets: np.ndarray
    settings: Settings

    @property
    def k(self) -> int:
        """The top-k kept: tokendiff.top_k, or the whole vocabulary where it is smaller."""
        return int(self.topk_ids["A"].shape[1])

    def rows_of(self, example: int) -> slice:
        return slice(int(self.offsets[example]), int(self.offsets[example + 1]))


def _check_same_input(a: TokenAnalysis, b: TokenAnalysis):
    if not (np.array_equal(a.offsets, b.offsets) and np.array_equal(a.tokens, b.tokens)):
        raise ValueError(
            "the two analyses are of different token sequences: analyse one corpus with both models "
            "(models must share a tokenizer)"
        )
    if a.topk_ids.shape[1] != b.topk_ids.shape[1]:
        raise ValueError(
            f"the two analyses kept different top-k ({a.topk_ids.shape[1]} vs {b.topk_ids.shape[1]}): "
            "analyse both with the same tokendiff.top_k"
        )


def topk_difference(ids_a: np.ndarray, ids_b: np.ndarray, block: int = 1 << 16) -> np.ndarray:
    """Per row: how many of A's top-k tokens are not in B's top-k (k − overlap; symmetric for equal k)."""
    out = np.empty(len(ids_a), np.int64)
    for s in range(0, len(ids_a), block):
        a, b = ids_a[s : s + block], ids_b[s : s + block]
        out[s : s + block] = a.shape[1] - (a[:, :, None] == b[:, None, :]).any(-1).sum(-1)
    return out


def aggregate(values: np.ndarray, offsets: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per example (rows offsets[i]:offsets[i+1]): mean and median of the values, and the upper quartile, the
    maximum and the mean of the k largest of |values| (all of them where an example has fewer)."""
    n = len(offsets) - 1
    example = np.repeat(np.arange(n), np.diff(offsets))
    size = np.abs(values)
    signed, absolute = pd.Series(values).groupby(example), pd.Series(size).groupby(example)
    order = np.lexsort((-size, example))  # by example, then largest |value| first
    within = np.arange(len(values)) - offsets[example[order]]
    top = order[within < k]
    return {
        "mean": signed.mean().to_numpy(),
        "median": signed.median().to_numpy(),
        "q75_abs": absolute.quantile(0.75).to_numpy(),
        "max_abs": absolute.max().to_numpy(),
        "topk_abs": pd.Series(size[top]).groupby(example[top]).mean().to_numpy(),
    }


def compare(a: TokenAnalysis, b: TokenAnalysis, settings: Settings) -> Comparison:
    """Per-token measures of both models, their differences A − B, and per-example aggregates."""
    _check_same_input(a, b)
    offsets = a.offsets
    example = np.repeat(np.arange(a.n_examples), a.lengths)
    t = pd.DataFrame({"example": example, "position": np.arange(len(example)) - offsets[example], "token_id": a.tokens})
    for side, an in zip(SIDES, (a, b)):
        t[f"prob_{side}"] = np.exp(an.logprob.astype(np.float64))
        t[f"rank_{side}"] = an.rank
        t[f"clamped_rank_{side}"] = np.minimum(an.rank, settings.clamp_rank)
        t[f"nll_{side}"] = -an.logprob.astype(np.float64)
    for q in PER_MODEL:
        t[f"{q}_diff"] = t[f"{q}_A"] - t[f"{q}_B"]
    t["topk_diff"] = topk_difference(a.topk_ids, b.topk_ids)
    ex = pd.DataFrame({"example": np.arange(a.n_examples), "n_tokens": a.lengths})
    for side in SIDES:
        ex[f"z_{side}"] = t.groupby("example")[f"nll_{side}"].mean().to_numpy()
    for m in DIFFS:
        for agg, v in aggregate(t[m].to_numpy(np.float64), offsets, settings.aggregate_k).items():
            ex[f"{agg}_{m}"] = v
    probs = {side: np.exp(an.topk_logprob.astype(np.float64)) for side, an in zip(SIDES, (a, b))}
    return Comparison(t, ex, {"A": a.topk_ids, "B": b.topk_ids}, probs, offsets, settings)


def most_different(examples: pd.DataFrame, n: int) -> dict[str, list[int]]:
    """Per aggregate column, the example ids of the n most different examples: the largest |value| for signed
    aggregates (both models' sides), the largest value for aggregates of |difference|."""
    out = {}
    for col in aggregate_columns():
        v = examples[col].to_numpy(np.float64)
        key = np.abs(v) if split_aggregate(col)[0] in SIGNED_AGGREGATES else v
        order = np.argsort(-np.nan_to_num(key, nan=-np.inf), kind="stable")[:n]
        out[col] = examples["example"].to_numpy()[order].tolist()
    return out


def compare_models(
    a: LoadedModel, b: LoadedModel, corpus: Corpus, settings: Settings, cache: bool = True, progress: bool = False
) -> tuple[Comparison, dict]:
    """Both models' analyses (from the cache where possible) and their comparison; info says what was cached."""
    info = {}
    analyses = []
    for side, m in zip(SIDES, (a, b)):
        t0 = time.perf_counter()
        an, hit = analyse_corpus(m, corpus, settings, cache=cache, progress=progress)
        analyses.append(an)
        info.update({f"cache_hit_{side}": int(hit), f"analysis_seconds_{side}": time.perf_counter() - t0})
    return compare(*analyses, settings), info


def token_text_fn(loaded: LoadedModel) -> Callable[[int], str]:
    """Token id -> its text, decoded alone, whitespace made visible; tokenizer-less models show the id."""
    tokenizer = loaded.tokenizer
    if tokenizer is None:
        return lambda i: str(int(i))

    @cache
    def text(i: int) -> str:
        return tokenizer.decode([int(i)]).translate(VISIBLE_WHITESPACE)

    return lambda i: text(int(i))


# ---------------------------------------------------------------------------------------------- selection


def distinct_draws(draws: pd.DataFrame) -> pd.DataFrame:
    """cross_eval's draws repeat inputs: one row per distinct input, in first-drawn order, with its draw count."""
    return (
        draws.groupby("representative", sort=False)
        .agg(
            tokens=("tokens", "first"),
            text=("text", "first"),
            z_A=("z_A", "first"),
            z_B=("z_B", "first"),
            D=("D", "first"),
            in_z_other=("in_z_other", "first"),
            n_draws=("draw", "size"),
        )
        .reset_index(drop=True)
    )


def histogram(values: np.ndarray, bins: int, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(edges, counts) over the finite values, as np.histogram."""
    finite = np.isfinite(values)
    edges = np.histogram_bin_edges(values[finite], bins=bins) if finite.any() else np.linspace(-1, 1, bins + 1)
    counts, _ = np.histogram(values[finite], bins=edges, weights=None if weights is None else weights[finite])
    return edges, counts


def bin_of(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The bin of each value as np.histogram counts it (the last bin includes its right edge); −1 if outside."""
    b = np.searchsorted(edges, values, side="right") - 1
    b[values == edges[-1]] = len(edges) - 2
    b[(values < edges[0]) | (values > edges[-1]) | ~np.isfinite(values)] = -1
    return b


def stratified_pick(bins: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Up to n indices, one bin at a time in turn (bins in order, a random member each time), so every
    non-empty bin is represented before any gets a second; bins < 0 are never picked."""
    rng = np.random.default_rng(seed)
    members = [rng.permutation(np.flatnonzero(bins == b)) for b in np.unique(bins[bins >= 0])]
    out = []
    for depth in range(max((len(m) for m in members), default=0)):
        out += [m[depth] for m in members if depth < len(m)]
        if len(out) >= n:
            break
    return np.asarray(out[:n], dtype=np.int64)
