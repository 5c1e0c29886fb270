"""The paper's toy task (Appendix C): L tokens from 0..V−1 whose sum is divisible by M.

Toy models are GPT-2s (or Llamas) with vocabulary V+1 (BOS = V), trained in-process on sequences drawn
uniformly from the valid set, and saved as ordinary Hugging Face model directories.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .space import InputSpace

# The paper's pair (Appendix C): n_embd 64; small = 4 heads / 6 layers, large = 8 heads / 8 layers.
PAPER_ARCHS = {
    "small": dict(n_embd=64, n_head=4, n_layer=6),
    "large": dict(n_embd=64, n_head=8, n_layer=8),
}


@dataclass(frozen=True)
class ToyTask:
    length: int = 8
    vocab_size: int = 10
    modulus: int = 30

    @property
    def bos_token_id(self) -> int:
        return self.vocab_size

    @property
    def space(self) -> InputSpace:
        return InputSpace.from_vocab_size(self.length, self.vocab_size, self.bos_token_id)

    def is_valid(self, ids) -> np.ndarray:
        ids = np.asarray(ids)
        in_range = ((ids >= 0) & (ids < self.vocab_size)).all(-1)
        return in_range & (ids.sum(-1) % self.modulus == 0)

    def _completions(self) -> np.ndarray:
        """count[i, s] = number of ways to fill positions i..L−1 so the total is 0 mod M, given sum ≡ s."""
        m, v = self.modulus, self.vocab_size
        count = np.zeros((self.length + 1, m), dtype=np.float64)
        count[self.length, 0] = 1.0
        for i in range(self.length - 1, -1, -1):
            for t in range(v):
                count[i] += count[i + 1][(np.arange(m) + t) % m]
        return count

    def n_valid(self) -> int:
        return int(round(self._completions()[0, 0]))

    def entropy_per_token(self) -> float:
        """Per-token NLL of the uniform distribution over valid sequences: the best a model can do."""
        return math.log(self.n_valid()) / self.length

    def sample_valid(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Exactly uniform draws from the valid set, token by token from the completion counts."""
        count = self._completions()
        m, v = self.modulus, self.vocab_size
        out = np.empty((n, self.length), dtype=np.int64)
        s = np.zeros(n, dtype=np.int64)
        for i in range(self.length):
            weights = count[i + 1][(s[:, None] + np.arange(v)[None, :]) % m]
            cdf = np.cumsum(weights / weights.sum(1, keepdims=True), axis=1)
            tok = (rng.random(n)[:, None] > cdf).sum(1).clip(max=v - 1)
            out[:, i] = tok
            s = (s + tok) % m
        return out


def make_toy_model(
    task: ToyTask,
    n_embd: int = 64,
    n_head: int = 4,
    n_layer: int = 6,
    seed: int = 0,
    family: str = "gpt2",
    n_kv_head: int | None = None,
):
    """A randomly initialised toy over the task's vocabulary (+BOS): a GPT-2 (learned positions, LayerNorm, GELU
    MLP of 4·n_embd units), or with `family="llama"` a Llama (RoPE, RMSNorm, SwiGLU MLP of 4·n_embd units,
    `n_kv_head` key/value heads for grouped-query attention, untied output head)."""
    if family not in ("gpt2", "llama"):
        raise ValueError(f"toy model family must be 'gpt2' or 'llama', got {family!r}")
    torch.manual_seed(seed)
    common = dict(vocab_size=task.vocab_size + 1, bos_token_id=task.bos_token_id, eos_token_id=task.bos_token_id)
    if family == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            hidden_size=n_embd,
            intermediate_size=4 * n_embd,
            num_attention_heads=n_head,
            num_key_value_heads=n_kv_head or n_head,
            num_hidden_layers=n_layer,
            max_position_embeddings=task.length + 1,
            **common,
        )
        model_class = LlamaForCausalLM
    else:
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(
            n_positions=task.length + 1,
            n_embd=n_embd,
            n_head=n_head,
            n_layer=n_layer,
            activation_function="gelu_pytorch_tanh",
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **common,
        )
        model_class = GPT2LMHeadModel
    config.modeldiff_toy = dict(length=task.length, vocab_size=task.vocab_size, modulus=task.modulus)
    return model_class(config)


def train_toy_model(
    model,
    task: ToyTask,
    steps: int = 600,
    batch_size: int = 256,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """AdamW with linear warm-up and cosine decay on fresh uniform draws from the valid set."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    bos = torch.full((batch_size, 1), task.bos_token_id, dtype=torch.long)
    model.train()
    losses, t0 = [], time.perf_counter()
    for _ in tqdm(range(steps), desc="train toy", disable=not progress, leave=False):
        x = torch.cat([bos, torch.from_numpy(task.sample_valid(batch_size, rng))], dim=1)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    tail = float(np.mean(losses[-max(1, steps // 20) :]))
    return dict(final_loss=tail, entropy=task.entropy_per_token(), seconds=time.perf_counter() - t0)


@torch.inference_mode()
def generate(model, task: ToyTask, n: int, seed: int = 0) -> np.ndarray:
    """Ancestral samples over the model's full vocabulary (a generated BOS counts as a failure)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((n, 1), task.bos_token_id, dtype=torch.long)
    for _ in range(task.length):
        probs = model(input_ids=ids, use_cache=False).logits[:, -1].float().softmax(-1)
        ids = torch.cat([ids, torch.multinomial(probs, 1, generator=g)], dim=1)
    return ids[:, 1:].numpy()


def rule_satisfaction(model, task: ToyTask, n: int = 2000, seed: int = 0) -> float:
    """Fraction of generated sequences that satisfy the rule (the paper reached 100%)."""
    return float(task.is_valid(generate(model, task, n, seed)).mean())


def train_and_save(
    task: ToyTask, arch: dict, out_dir: str | Path, steps: int = 600, seed: int = 0, progress: bool = True, **train_kw
) -> dict:
    model = make_toy_model(task, seed=seed, **arch)
    report = train_toy_model(model, task, steps=steps, seed=seed, progress=progress, **train_kw)
    report["rule_satisfaction"] = rule_satisfaction(model, task, seed=seed)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    return report
