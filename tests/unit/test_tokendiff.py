"""The token-level view (LMdiff): per-token measures against a direct per-prefix computation, the aggregates
against numpy, corpus reading, and the per-(model, corpus) cache (hits run no model, any change misses)."""

import numpy as np
import pandas as pd
import pytest
import torch

from modeldiff.analysis import measures, tokendiff
from modeldiff.analysis.tokendiff import Settings
from modeldiff.config import load_config
from modeldiff.method.scoring import Scorer
from modeldiff.method.space import InputSpace
from modeldiff.method.toy import ToyTask, make_toy_model
from modeldiff.models import LoadedModel, decode_digits, load_model

V = 80  # more tokens than the clamp (50), so clamping and top-10 both bite


def _sharpen(weight: torch.nn.Parameter, factor: float = 30.0):
    """Untrained models have logits within ~0.1 of each other; spread them (gaps ≫ float32 noise) so ranks are
    unambiguous and the direct computation must agree exactly."""
    with torch.no_grad():
        weight.mul_(factor)


@pytest.fixture(scope="module")
def gpt2():
    model = make_toy_model(ToyTask(12, V, 7), n_embd=32, n_head=2, n_layer=2, seed=5).eval()
    _sharpen(model.transformer.wte.weight)  # tied with the LM head
    return model, V  # BOS = V


@pytest.fixture(scope="module")
def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(7)
    cfg = LlamaConfig(
        vocab_size=V + 1,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        bos_token_id=V,
        eos_token_id=V,
    )  # no pad: its embedding row would be 0
    model = LlamaForCausalLM(cfg).eval()
    _sharpen(model.lm_head.weight)
    return model, V


def sequences(seed=0, n=7):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, V, size=int(length)) for length in rng.integers(1, 11, size=n)]


@torch.no_grad()
def direct(model, bos, seq, k=10):
    """A plain loop over prefixes: p, rank, top-k of x_i from BOS + x_<i alone."""
    out = []
    for i, tok in enumerate(seq):
        prefix = torch.tensor([[bos] + [int(t) for t in seq[:i]]])
        logits = model(input_ids=prefix).logits[0, -1].float()
        logp = logits.log_softmax(-1)
        top = torch.argsort(logits, descending=True, stable=True)[:k]
        gaps = (logits - logits[tok]).abs()
        gaps[tok] = np.inf
        out.append(
            dict(
                prob=float(logp[tok].exp()),
                rank=1 + int((logits > logits[tok]).sum()),
                top=top.tolist(),
                top_prob=logp[top].exp().tolist(),
                probs=logp.exp().numpy(),
                min_gap=float(gaps.min()),
                top_gap=float((logits[top[:-1]] - logits[top[1:]]).min()),
            )
        )
    return out


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_measures_match_a_direct_per_prefix_computation(which, request):
    model, bos = request.getfixturevalue(which)
    seqs = sequences(seed=1 if which == "llama" else 0)
    an = tokendiff.analyse(model, bos, seqs, top_k=10, batch_size=3)  # several batches, padded ones among them
    assert an.n_examples == len(seqs) and an.lengths.tolist() == [len(s) for s in seqs]
    n_clamped = n_exact = n_positions = 0
    for e, seq in enumerate(seqs):
        rows = slice(an.offsets[e], an.offsets[e + 1])
        want = direct(model, bos, seq)
        # the precondition of exact rank agreement: no logit within float32 noise of the actual token's
        assert min(w["min_gap"] for w in want) > 1e-4  # 5× the 2e-5 the probabilities are checked to
        np.testing.assert_allclose(np.exp(an.logprob[rows]), [w["prob"] for w in want], rtol=2e-5, atol=1e-9)
        np.testing.assert_array_equal(an.rank[rows], [w["rank"] for w in want])
        np.testing.assert_array_equal(an.tokens[rows], seq)
        for w, ids, logp in zip(want, an.topk_ids[rows], an.topk_logprob[rows]):
            # the 10 largest probabilities in order, each carried by the token it belongs to ...
            np.testing.assert_allclose(np.exp(logp), w["top_prob"], rtol=2e-5, atol=1e-9)
            np.testing.assert_allclose(w["probs"][ids], np.exp(logp), rtol=2e-5, atol=1e-9)
            assert len(set(ids.tolist())) == 10
            # ... and the same tokens in the same order wherever no two of them are within float32 noise
            if w["top_gap"] > 1e-4:
                assert ids.tolist() == w["top"]
                n_exact += 1
        n_clamped += int((an.rank[rows] > 50).sum())
        n_positions += len(seq)
    assert an.rank.min() >= 1 and an.rank.max() <= V + 1
    assert n_clamped > 0, "the data should have ranks above the clamp"
    assert n_exact >= n_positions // 2, "too few positions without near-ties to check the top-k order"
    # the clamped rank, against the direct ranks
    cmp = tokendiff.compare(an, an, Settings())
    np.testing.assert_array_equal(cmp.tokens["clamped_rank_A"], np.minimum(an.rank, 50))
    assert (cmp.tokens["prob_diff"] == 0).all() and (cmp.tokens["topk_diff"] == 0).all()


def test_rank_ties_share_the_best_rank():
    """A model whose logits tie everywhere (all-zero LM head): every token has rank 1 and probability 1/V."""
    model = make_toy_model(ToyTask(4, 20, 7), n_embd=16, n_head=2, n_layer=1, seed=0).eval()
    with torch.no_grad():
        model.transformer.wte.weight.zero_()
    an = tokendiff.analyse(model, 20, [np.array([3, 1, 4, 1])], top_k=5)
    assert an.rank.tolist() == [1, 1, 1, 1]
    np.testing.assert_allclose(np.exp(an.logprob), 1 / 21, rtol=1e-6)


def test_mean_nll_is_the_scorers_z(gpt2):
    """An example's mean NLL is z as the samplers compute it (the same float32 pieces), so mean nll_diff = D."""
    model, bos = gpt2
    rng = np.random.default_rng(3)
    ids = rng.integers(0, V, size=(6, 9))
    a = tokendiff.analyse(model, bos, list(ids), batch_size=4)
    cmp = tokendiff.compare(a, a, Settings())
    np.testing.assert_allclose(cmp.examples["z_A"], Scorer(model, bos)(torch.from_numpy(ids)).numpy(), rtol=1e-6)


def test_comparison_differences_and_aggregates(gpt2, llama):
    seqs = sequences(seed=2, n=9)
    a = tokendiff.analyse(*gpt2, seqs)
    b = tokendiff.analyse(llama[0], llama[1], seqs)
    s = Settings(aggregate_k=3)
    cmp = tokendiff.compare(a, b, s)
    t = cmp.tokens
    np.testing.assert_allclose(t["prob_diff"], np.exp(a.logprob.astype(float)) - np.exp(b.logprob.astype(float)))
    np.testing.assert_array_equal(t["rank_diff"], a.rank - b.rank)
    np.testing.assert_array_equal(t["clamped_rank_diff"], np.minimum(a.rank, 50) - np.minimum(b.rank, 50))
    np.testing.assert_allclose(t["nll_diff"], -(a.logprob.astype(float) - b.logprob.astype(float)))
    shared = [len(set(x) & set(y)) for x, y in zip(a.topk_ids.tolist(), b.topk_ids.tolist())]
    np.testing.assert_array_equal(t["topk_diff"], 10 - np.array(shared))
    assert t["topk_diff"].between(1, 10).any()
    ex = cmp.examples
    for e, seq in enumerate(seqs):
        rows = t[t["example"] == e]
        assert ex.loc[e, "n_tokens"] == len(seq) and rows["position"].tolist() == list(range(len(seq)))
        np.testing.assert_allclose(ex.loc[e, "z_A"] - ex.loc[e, "z_B"], rows["nll_diff"].mean(), atol=1e-12)
        for m in tokendiff.DIFFS:
            d = rows[m].to_numpy(float)
            want = {
                "mean": d.mean(),
                "median": np.median(d),
                "q75_abs": np.quantile(np.abs(d), 0.75),
                "max_abs": np.abs(d).max(),
                "topk_abs": np.sort(np.abs(d))[::-1][:3].mean(),
            }
            for agg, value in want.items():
                np.testing.assert_allclose(ex.loc[e, f"{agg}_{m}"], value, rtol=1e-12, atol=1e-12, err_msg=f"{agg}_{m}")
    top = tokendiff.most_different(ex, 4)
    assert set(top) == set(tokendiff.aggregate_columns()) and all(len(v) == 4 for v in top.values())
    signed = ex["mean_prob_diff"].abs().sort_values(ascending=False, kind="stable")
    assert top["mean_prob_diff"] == signed.index[:4].tolist()
    assert (
        top["max_abs_rank_diff"]
        == ex["max_abs_rank_diff"].sort_values(ascending=False, kind="stable").index[:4].tolist()
    )


def test_measure_names():
    assert measures.resolve_measure("clamped_rank_diff") == ("clamped_rank_diff", "mean_clamped_rank_diff")
    assert measures.resolve_measure("max_abs_rank_diff") == ("rank_diff", "max_abs_rank_diff")
    assert measures.resolve_measure("topk_abs_topk_diff") == ("topk_diff", "topk_abs_topk_diff")
    with pytest.raises(ValueError, match="unknown measure 'rank'"):
        measures.resolve_measure("rank")


def test_stratified_pick_covers_every_bin_first():
    bins = np.array([0] * 50 + [1] * 3 + [3] * 10 + [-1] * 5)
    picked = tokendiff.stratified_pick(bins, 5, seed=0)
    assert len(picked) == 5 and len(set(picked)) == 5
    assert sorted(bins[picked[:3]]) == [0, 1, 3] and -1 not in bins[picked]
    assert len(tokendiff.stratified_pick(bins, 1000)) == 63
    edges = np.array([0.0, 1.0, 2.0])
    assert tokendiff.bin_of(np.array([0.0, 0.5, 1.0, 2.0, 2.5, np.nan]), edges).tolist() == [0, 0, 1, 1, -1, -1]


# ---------------------------------------------------------------------------------------------- corpora


def test_read_corpus_text_and_parquet(tmp_path):
    (tmp_path / "c.txt").write_text("first line\n\n  \nsecond\r\nthird")
    texts, rows, digest = tokendiff.read_corpus(tmp_path / "c.txt")
    assert texts == ["first line", "second", "third"] and rows.tolist() == [0, 3, 4]
    pd.DataFrame({"text": ["first line", None, "second", "third"], "other": ["x"] * 4}).to_parquet(
        tmp_path / "c.parquet"
    )
    ptexts, prows, pdigest = tokendiff.read_corpus(tmp_path / "c.parquet")
    assert ptexts == texts and prows.tolist() == [0, 2, 3]
    assert pdigest != digest  # the parquet column is part of the checksum
    assert tokendiff.read_corpus(tmp_path / "c.parquet", "other")[2] != pdigest
    pd.DataFrame({"tokens": [[1, 2], [3]]}).to_parquet(tmp_path / "ids.parquet")
    assert tokendiff.read_corpus(tmp_path / "ids.parquet", "tokens")[0] == ["1 2", "3"]
    with pytest.raises(ValueError, match="has no column 'txt': pass column= one of text, other"):
        tokendiff.read_corpus(tmp_path / "c.parquet", "txt")
    with pytest.raises(ValueError, match="not found"):
        tokendiff.read_corpus(tmp_path / "missing.txt")
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="has no examples"):
        tokendiff.read_corpus(tmp_path / "blank.txt")


def toy_loaded(model, identity="test:toy") -> LoadedModel:
    return LoadedModel(model, None, identity, InputSpace.from_vocab_size(5, V, V), "toy-test", decode_digits)


def test_tokenizer_less_corpora_are_token_ids(gpt2, tmp_path):
    loaded = toy_loaded(gpt2[0])
    (tmp_path / "c.txt").write_text("1 2 3\n" + " ".join(["4"] * 20) + "\n")
    corpus = tokendiff.load_corpus(tmp_path / "c.txt", loaded, max_length=8)
    assert [t.tolist() for t in corpus.tokens] == [[1, 2, 3], [4] * 8] and corpus.n_truncated == 1
    # the model's positions bound the length too (toy GPT-2: 13 positions, BOS takes one)
    assert len(tokendiff.load_corpus(tmp_path / "c.txt", loaded, max_length=100).tokens[1]) == 12
    (tmp_path / "bad.txt").write_text("1 2\n1 x\n")
    with pytest.raises(ValueError, match="row 1: '1 x' is not space-separated token ids"):
        tokendiff.load_corpus(tmp_path / "bad.txt", loaded, 8)
    (tmp_path / "bad.txt").write_text("1 2\n\n1 80\n")
    with pytest.raises(ValueError, match="row 2: token id 80 is not in toy-test's token set"):
        tokendiff.load_corpus(tmp_path / "bad.txt", loaded, 8)


# ---------------------------------------------------------------------------------------------- the cache


class ForwardCounter:
    def __init__(self, model):
        self.n = 0
        model.register_forward_hook(self)

    def __call__(self, *_):
        self.n += 1


@pytest.fixture
def toys(tmp_path, monkeypatch):
    """toy:small and its noise copy, loaded through model refs with a private cache."""
    monkeypatch.setenv("MODELDIFF_CACHE", str(tmp_path / "cache"))
    cfg = load_config("toy", "toy.train_steps=20")
    return cfg, load_model("toy:small", cfg), load_model("noise:0.05:toy:small", cfg)


def test_cache_hits_run_no_model_and_any_change_misses(toys, tmp_path):
    cfg, a, b = toys
    counters = {"A": ForwardCounter(a.model), "B": ForwardCounter(b.model)}
    path = tmp_path / "corpus.txt"
    path.write_text("0 1 2 3 4\n5 5 0\n2 4\n1 1 1 1 1\n3\n")
    s = Settings(batch_size=2)

    def run(model, settings=s):
        corpus = tokendiff.load_corpus(path, model, settings.max_length)
        counter = counters["A" if model is a else "B"]
        before = counter.n
        an, hit = tokendiff.analyse_corpus(model, corpus, settings)
        return an, hit, counter.n - before

    first, hit, forwards = run(a)
    assert not hit and forwards == 3  # 5 examples in batches of 2
    again, hit, forwards = run(a)
    assert hit and forwards == 0
    for field in ("offsets", "tokens", "logprob", "rank", "topk_ids", "topk_logprob"):
        np.testing.assert_array_equal(getattr(again, field), getattr(first, field))
    files = list((tmp_path / "cache" / "tokendiff").glob("*.npz"))
    assert len(files) == 1 and not list(files[0].parent.glob("*.tmp*"))

    # a different model (noise copy: other weights, other identity) misses, then hits
    assert run(b)[1:] == (False, 3) and run(b)[1:] == (True, 0)
    # comparing two cached models runs neither, and gives what a fresh comparison gives
    corpus = tokendiff.load_corpus(path, a, s.max_length)
    n_before = (counters["A"].n, counters["B"].n)
    cached, info = tokendiff.compare_models(a, b, corpus, s)
    assert (counters["A"].n, counters["B"].n) == n_before and info["cache_hit_A"] == info["cache_hit_B"] == 1
    fresh, info = tokendiff.compare_models(a, b, corpus, s, cache=False)
    assert info["cache_hit_A"] == 0 and counters["A"].n > n_before[0]
    pd.testing.assert_frame_equal(cached.examples, fresh.examples)

    # settings that change the numbers miss: top-k, and max_length where it truncates (toy: 5 positions)
    assert run(a, Settings(batch_size=2, top_k=5))[1] is False
    assert run(a, Settings(batch_size=2, max_length=3))[1] is False
    assert run(a, Settings(batch_size=2, max_length=50))[1] is True  # 50 and 128 both keep all 5 tokens
    assert run(a, Settings(batch_size=5, n_top=3))[1] is True  # batching and page settings do not enter the key

    # an edited line misses
    path.write_text("0 1 2 3 4\n5 5 1\n2 4\n1 1 1 1 1\n3\n")
    edited, hit, forwards = run(a)
    assert not hit and forwards == 3
    assert edited.logprob[5:8].tolist() != first.logprob[5:8].tolist()

    # a retrained model (other training steps: another identity) misses
    retrained = load_model("toy:small", load_config("toy", "toy.train_steps=25"))
    assert retrained.identity != a.identity
    assert not tokendiff.analyse_corpus(retrained, tokendiff.load_corpus(path, retrained, 128), s)[1]

    # a damaged cache file is recomputed and rewritten
    for f in (tmp_path / "cache" / "tokendiff").glob("*.npz"):
        f.write_bytes(f.read_bytes()[:100])
    assert run(a)[1:] == (False, 3) and run(a)[1:] == (True, 0)


def test_config_keys_are_checked_at_load():
    from modeldiff.config import ConfigError

    assert Settings.from_cfg(load_config("toy")) == Settings()  # base.yaml's defaults are the dataclass's
    with pytest.raises(ConfigError, match="'tokendiff.top_k' must be >= 1, got 0"):
        load_config("toy", "tokendiff.top_k=0")
    with pytest.raises(ConfigError, match="'tokendiff.cross_eval_views' must be >= 0"):
        load_config("toy", "tokendiff.cross_eval_views=-1")
    with pytest.raises(ConfigError, match="config key 'tokendiff.measure': unknown measure 'rank'"):
        load_config("toy", "tokendiff.measure=rank")
