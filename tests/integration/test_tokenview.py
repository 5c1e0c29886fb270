"""The token view's HTML page: its data (cross_eval's stratified views, the D they show), and the page itself
opened in a real headless Chromium started by the test and driven over the DevTools protocol: one element per
token, the colours of the Python scale, working bars, details and no console errors."""

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from modeldiff import pipeline
from modeldiff.analysis import tokendiff
from modeldiff.config import load_config
from modeldiff.method.scoring import Scorer
from modeldiff.models import load_model
from modeldiff.views import tokenview
from support.browser import start_browser

SENTENCES = [
    "the cat sat on the mat",
    "the dog ate the food of the cat",
    "a cat and a dog sat on a mat",
    "the food sat on the mat and the cat ate it",
    '<b>bold</b> & "quoted" text',
    "a\ttab and  two spaces",
]


def page_data(html: str) -> dict:
    raw = re.search(r'<script type="application/json" id="tokendiff-data">(.*?)</script>', html, re.S).group(1)
    return json.loads(raw)


# ---------------------------------------------------------------------------------------------- models


@pytest.fixture(scope="module")
def text_models(tmp_path_factory):
    """Two tiny random Llamas sharing a byte-level BPE tokenizer trained here, saved and loaded as model
    directories: the real tokenizer path (vocabulary hash, special tokens, per-token decoding)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(SENTENCES * 3, vocab_size=320, min_frequency=1, special_tokens=["<s>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>")
    root = tmp_path_factory.mktemp("text_models")
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=len(tok),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=64,
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.bos_token_id,
            )
        )
        with torch.no_grad():
            model.lm_head.weight.mul_(40)  # spread the logits so colours span the scale
        model.save_pretrained(root / f"m{seed}")
        tok.save_pretrained(root / f"m{seed}")
    cfg = load_config("toy", "space.vocab_size=null")
    return cfg, load_model(str(root / "m0"), cfg), load_model(str(root / "m1"), cfg)


@pytest.fixture(scope="module")
def corpus_page(text_models, tmp_path_factory):
    cfg, a, b = text_models
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(SENTENCES) + "\n")
    settings = tokendiff.Settings.from_cfg(cfg)
    corpus = tokendiff.load_corpus(path, a, settings.max_length)
    cmp, _ = tokendiff.compare_models(a, b, corpus, settings, cache=False)
    html = tokenview.corpus_page(
        cmp,
        corpus.texts,
        corpus.rows,
        tokenview.models_of(a, b),
        "nll_diff",
        "mean_nll_diff",
        tokendiff.token_text_fn(a),
        settings.max_views,
        10,
        "test corpus",
    )
    out = path.with_suffix(".html")
    out.write_text(html)
    return cmp, corpus, out, tokendiff.token_text_fn(a)


@pytest.fixture(scope="module")
def toy_draws(toy_pair, tiny_task):
    """cross_eval-like draws of a toy pair: inputs drawn with repeats, scored by both models."""
    from modeldiff.models import LoadedModel, decode_digits

    loaded = [
        LoadedModel(m, None, f"test:{i}", tiny_task.space, f"toy{i}", decode_digits) for i, m in enumerate(toy_pair)
    ]
    rng = np.random.default_rng(0)
    distinct = rng.integers(0, tiny_task.vocab_size, size=(300, tiny_task.length))
    rep = rng.integers(0, len(distinct), size=1200)
    z = [Scorer(m, tiny_task.bos_token_id)(torch.from_numpy(distinct)).numpy() for m in toy_pair]
    draws = pd.DataFrame(
        {
            "draw": np.arange(len(rep)),
            "representative": rep,
            "tokens": list(distinct[rep]),
            "text": [decode_digits(t) for t in distinct[rep]],
            "z_A": z[0][rep],
            "z_B": z[1][rep],
            "D": z[0][rep].astype(np.float64) - z[1][rep],
            "in_z_other": z[1][rep] < 1.7,
        }
    )
    return draws, loaded


def test_cross_eval_page_stratifies_views_over_d_and_shows_their_d(toy_draws):
    draws, (a, b) = toy_draws
    cfg = load_config("toy", "tokendiff.cross_eval_views=25 tokendiff.hist_bins=12")
    data = page_data(pipeline.draws_token_view(cfg, draws, a, b, "test"))
    hist = data["overview"]["measures"][0]
    assert sum(hist["counts"]) == len(draws) and len(hist["counts"]) == 12
    examples = {e["id"]: e for e in data["examples"]}
    assert len(examples) == draws["representative"].nunique()
    assert sum(e["info"]["draws"] for e in examples.values()) == len(draws)
    # 25 views: every non-empty D bin has one before any has a second
    viewed = [examples[v["example"]] for v in data["views"]]
    assert len(viewed) == 25 and len({e["id"] for e in viewed}) == 25
    occupied = {e["bins"]["D"] for e in examples.values()}
    assert len(occupied) <= 12 and {e["bins"]["D"] for e in viewed} == occupied
    members = np.bincount([e["bins"]["D"] for e in examples.values()], minlength=12)
    picked = np.bincount([e["bins"]["D"] for e in viewed], minlength=12)
    for i in range(12):  # in turn: a bin has fewer views than another only when it has no more inputs
        assert all(picked[i] >= picked[j] - 1 or picked[i] == members[i] for j in range(12)), (picked, members)
    # each view is of its example's tokens, and its per-token NLL differences average to the example's D
    for v, e in zip(data["views"], viewed):
        assert " ".join(v["tokens"]) == e["text"]
        assert abs(np.mean(v["values"]["nll_diff"]) - e["info"]["D"]) < 1e-5
    # no views: the histogram and the lists still work
    none = page_data(pipeline.draws_token_view(load_config("toy", "tokendiff.cross_eval_views=0"), draws, a, b, "t"))
    assert none["views"] == [] and all(e["view"] is None for e in none["examples"])


def test_colour_scale_and_embedding():
    spec = {"kind": "diverging", "scale": 2.0, "sign": -1}
    assert tokenview.token_color(0.0, spec) == (255, 255, 255)
    assert tokenview.token_color(-2.0, spec) == tokenview.COLORS["A"]  # negative NLL difference: A better, red
    assert tokenview.token_color(5.0, spec) == tokenview.COLORS["B"]  # saturates beyond the scale
    assert tokenview.token_color(1.0, spec) == (161, 201, 225)
    grey = {"kind": "sequential", "lo": 50, "hi": 1}
    assert tokenview.token_color(1, grey) == tokenview.COLORS["grey"] and tokenview.token_color(50, grey) == (255,) * 3
    assert tokenview.token_color(None, grey) == (255, 255, 255)
    text = tokenview.embed_json({"t": "</script><script>alert(1)</script> & <!--"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"t": "</script><script>alert(1)</script> & <!--"}


def test_page_is_self_contained(corpus_page):
    html = corpus_page[2].read_text()
    assert "default-src 'none'" in html  # no fetch of any kind, enforced by the browser
    urls = set(re.findall(r"(?:src|href)\s*=\s*[\"']([^\"']+)", html)) | set(re.findall(r"https?://[^\s\"'<>]+", html))
    assert urls <= {"data:,", "http://www.w3.org/2000/svg"}, urls  # the SVG namespace is a name, not a fetch
    assert len(html) < 400_000


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chrome = start_browser(tmp_path_factory.mktemp("chromium-profile"))
    yield chrome
    chrome.close()


TOKENS_JS = (
    "[...document.querySelectorAll('#tokens .tok')].map(s => [s.textContent, getComputedStyle(s).backgroundColor])"
)


def _rgb(c) -> str:
    return f"rgb({c[0]}, {c[1]}, {c[2]})"


def _select(chrome, session, select_id, value):
    chrome.js(
        session,
        f"(() => {{ const s = document.getElementById('{select_id}'); s.value = '{value}'; "
        "s.dispatchEvent(new Event('change')); })()",
    )


@pytest.mark.integration
def test_corpus_page_in_chromium(browser, corpus_page):
    cmp, corpus, path, token_text = corpus_page
    session = browser.open(path.as_uri())
    assert browser.js(session, "window.tokendiffReady === true")
    viewed = tokenview.viewed_examples(cmp, "mean_nll_diff", cmp.settings.max_views)
    assert sorted(viewed) == list(range(len(SENTENCES)))
    # the conventions that differ from LMdiff's, as a table a user can open
    conventions = browser.js(
        session, "[...document.querySelectorAll('#lmdiff tr th:first-child')].map(c => c.textContent)"
    )
    assert conventions == ["", "rank", "clamped rank", "differences", "max_abs_*"]
    rows = np.concatenate([np.arange(cmp.offsets[e], cmp.offsets[e + 1]) for e in viewed])
    specs = {s["name"]: s for s in tokenview.measure_specs(cmp, rows)}
    assert browser.js(session, "document.getElementById('measure').value") == "nll_diff"
    checked = set()
    for e in viewed:  # open each example from the list of the most different, as a user would
        browser.js(session, f"document.querySelector('#top-list li[data-example=\"{e}\"]').click()")
        t = cmp.tokens.iloc[cmp.rows_of(e)]
        for measure in ("nll_diff", "prob_diff", "clamped_rank_diff", "prob_B", "topk_diff"):
            _select(browser, session, "measure", measure)
            shown = browser.js(session, TOKENS_JS)
            assert len(shown) == len(t) == len(corpus.tokens[e])  # one element per token
            assert [s[0] for s in shown] == [token_text(i) or "∅" for i in t["token_id"]]
            want = [_rgb(tokenview.token_color(tokenview.rounded(v), specs[measure])) for v in t[measure]]
            assert [s[1] for s in shown] == want, (e, measure)
            checked |= {s[1] for s in shown}
        # the text as tokens, whitespace visible, markup in the text shown as text
        assert "".join(token_text(i) for i in t["token_id"]) == corpus.texts[e].translate(tokendiff.VISIBLE_WHITESPACE)
        assert browser.js(session, "document.querySelectorAll('#tokens b, #tokens script').length") == 0
    assert len(checked) > 20  # many distinct colours were compared

    # a token's details: both models' top-k, the actual token marked where it is in them; a click pins it
    last = viewed[-1]
    t = cmp.tokens.iloc[cmp.rows_of(last)]
    k = 2
    browser.js(session, f"document.querySelectorAll('#tokens .tok')[{k}].dispatchEvent(new MouseEvent('mouseenter'))")
    for side in ("A", "B"):
        items = browser.js(
            session,
            f"[...document.querySelectorAll('#detail .topk-{side} li')].map(li => [li.className, li.textContent])",
        )
        ids = cmp.topk_ids[side][cmp.offsets[last] + k]
        assert len(items) == cmp.k == 10
        assert [token_text(i) for i in ids] == [txt.rsplit(" ", 1)[0] for _, txt in items]
        actual = int(t["token_id"].iloc[k])
        assert [("actual" in cls) for cls, _ in items] == [int(i) == actual for i in ids]
    browser.js(session, f"document.querySelectorAll('#tokens .tok')[{k}].click()")
    assert browser.js(session, "document.querySelectorAll('#pinned .card').length") == 1

    # the overview: a bar lists the examples in it
    _select(browser, session, "ov-measure", "max_abs_prob_diff")
    values = cmp.examples["max_abs_prob_diff"].to_numpy()
    edges, counts = tokendiff.histogram(values, 10)
    b = int(np.argmax(counts))
    browser.js(
        session,
        f"document.querySelector('#ov-svg rect.barrect[data-bin=\"{b}\"]')"
        ".dispatchEvent(new MouseEvent('click', {bubbles: true}))",
    )
    listed = browser.js(session, "[...document.querySelectorAll('#bar-list li')].map(li => Number(li.dataset.example))")
    assert sorted(listed) == np.flatnonzero(tokendiff.bin_of(values, edges) == b).tolist() and counts[b] == len(listed)
    assert browser.problems(session) == []


@pytest.mark.integration
def test_cross_eval_page_in_chromium(browser, toy_draws, tmp_path):
    draws, (a, b) = toy_draws
    cfg = load_config("toy", "tokendiff.cross_eval_views=30 tokendiff.hist_bins=15")
    html = pipeline.draws_token_view(cfg, draws, a, b, "test draws")
    data = page_data(html)
    (tmp_path / "draws.html").write_text(html)
    session = browser.open((tmp_path / "draws.html").as_uri())
    # from a bar of the D histogram to the tokens behind it
    viewed = {v["example"]: v for v in data["views"]}
    bar = next(e["bins"]["D"] for e in data["examples"] if e["id"] in viewed)
    browser.js(
        session,
        f"document.querySelector('#ov-svg rect.barrect[data-bin=\"{bar}\"]')"
        ".dispatchEvent(new MouseEvent('click', {bubbles: true}))",
    )
    listed = browser.js(
        session, "[...document.querySelectorAll('#bar-list li')].map(li => [Number(li.dataset.example), li.className])"
    )
    in_bar = [e for e in data["examples"] if e["bins"]["D"] == bar]
    assert sorted(i for i, _ in listed) == sorted(e["id"] for e in in_bar)
    assert all(("has-view" in cls) == (i in viewed) for i, cls in listed)
    target = next(i for i, _ in listed if i in viewed)
    browser.js(session, f"document.querySelector('#bar-list li[data-example=\"{target}\"]').click()")
    shown = browser.js(session, TOKENS_JS)
    view = viewed[target]
    specs = {s["name"]: s for s in data["measures"]}
    assert [s[0] for s in shown] == view["tokens"] and len(shown) == a.space.length
    assert [s[1] for s in shown] == [
        _rgb(tokenview.token_color(v, specs["nll_diff"])) for v in view["values"]["nll_diff"]
    ]
    assert browser.js(session, "document.getElementById('view-title').textContent").startswith(f"example {target}:")
    assert browser.problems(session) == []
