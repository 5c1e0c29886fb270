"""Exact enumeration of z over Ω for spaces small enough, and the exact quantities built on it.

Autoregressive models share prefixes: one forward step per prefix node with a KV cache, and the
last position's log-probs give all V children at once, so Ω = V^L costs Σ_{d<L} V^d single-token
steps instead of V^L full forwards of L+1 tokens. Output is in lexicographic order of slots
(`InputSpace.index_to_ids`).
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AttentionInterface

from .scoring import Scorer
from .space import InputSpace

MAX_ENUMERATION = 2 * 10**9


def _check_size(space: InputSpace):
    if space.size > MAX_ENUMERATION:
        raise ValueError(f"|Ω| = {space.size:.3g} is too large to enumerate (limit {MAX_ENUMERATION:.0g}); "
                         "use sampling (sample_outdist) instead")


def _cache_tensors(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(cache, "layers"):  # transformers >= 4.56
        return [(layer.keys, layer.values) for layer in cache.layers]
    if hasattr(cache, "key_cache"):
        return list(zip(cache.key_cache, cache.value_cache))
    return [tuple(kv[:2]) for kv in cache]  # legacy tuple format


def _make_cache(kv: list[tuple[torch.Tensor, torch.Tensor]], config):
    from transformers import DynamicCache

    try:
        return DynamicCache(ddp_cache_data=kv, config=config)
    except TypeError:  # older transformers
        return DynamicCache.from_legacy_cache(tuple(kv))


class _PrefixTree:
    """Depth-first walk of the prefix tree, at most `max_nodes` children per forward call.

    A node's V children go through the model as one *sequence* of V queries that share the
    node's cache, all at the same position, masked so no child sees its siblings ("tree
    attention"). The cache is never copied per child at the last level, which holds 90% of the
    nodes; at inner levels each child's cache is built once as parent cache + own key/value.
    """

    def __init__(self, model, space: InputSpace, max_nodes: int, progress: bool):
        self.model = model
        self.space = space
        self.device = next(model.parameters()).device
        self.ids = space.ids_tensor(self.device)
        self.max_nodes = max_nodes
        self.steps = 0  # single-token forward steps (one per prefix node)
        self.out = np.empty(space.size, dtype=np.float32)
        self.bar = tqdm(total=space.size, desc="enumerate", unit="x", unit_scale=True, disable=not progress,
                        leave=False)

    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return logits[..., self.ids] - torch.logsumexp(logits, dim=-1, keepdim=True)  # full-vocab normaliser

    def root(self):
        bos = torch.tensor([[self.space.bos_token_id]], device=self.device)
        out = self.model(input_ids=bos, use_cache=True)
        self.steps += 1
        return _cache_tensors(out.past_key_values), self.log_probs(out.logits[:, -1])

    def children(self, kv, depth: int, keep_cache: bool):
        """Run the V children of n nodes at `depth` (cache `kv`, length depth+1): log p(grandchild) [n, V, V] and,
        if `keep_cache`, the children's own keys/values per layer ([n, kv_heads, V, head_dim] each)."""
        n, v = kv[0][0].shape[0], self.ids.numel()
        new = [] if keep_cache else None
        out = self.model(input_ids=self.ids.expand(n, v), position_ids=torch.full((1, v), depth + 1, device=self.device),
                         use_cache=False, tree_past=kv, tree_new=new)
        self.steps += n * v
        return self.log_probs(out.logits), new

    def walk(self, kv, lp: torch.Tensor, cum: torch.Tensor, depth: int, offset: int):
        """n nodes at `depth` with cache `kv`, child log-probs `lp` [n, V] and prefix log-prob `cum` [n]."""
        v, length = self.ids.numel(), self.space.length
        child_cum = cum[:, None] + lp  # [n, V]
        if depth + 1 == length:  # children are leaves
            self.emit(child_cum.reshape(-1), offset)
            return
        n = child_cum.shape[0]
        per_child = v ** (length - depth - 1)  # leaves under each child
        chunk = max(1, self.max_nodes // v)
        for start in range(0, n, chunk):
            sel = slice(start, min(n, start + chunk))
            m = sel.stop - sel.start
            node_kv = [(k[sel], val[sel]) for k, val in kv]
            last = depth + 2 == length  # grandchildren are leaves: no child cache needed
            gc_lp, new_kv = self.children(node_kv, depth, keep_cache=not last)
            sub_offset = offset + start * v * per_child
            if last:
                self.emit((child_cum[sel, :, None] + gc_lp).reshape(-1), sub_offset)
                continue
            child_kv = [(_per_child(pk, k), _per_child(pv, val)) for (pk, pv), (k, val) in zip(node_kv, new_kv)]
            self.walk(child_kv, gc_lp.reshape(m * v, v), child_cum[sel].reshape(-1), depth + 1, sub_offset)

    def emit(self, leaf_logprob: torch.Tensor, offset: int):
        n = leaf_logprob.numel()
        self.out[offset:offset + n] = leaf_logprob.cpu().numpy()
        self.bar.update(n)


def _per_child(past: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Shared past [n, h, p, d] + the V children's own entries [n, h, V, d] -> [n*V, h, p+1, d]."""
    n, h, p, d = past.shape
    v = new.shape[2]
    return torch.cat([past.repeat_interleave(v, 0), new.transpose(1, 2).reshape(n * v, h, 1, d)], dim=2)


def _tree_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, *, tree_past,
                    tree_new=None, **kwargs):
    """Attention of q sibling queries [n, h, q, d] to their node's shared past (tree_past[layer], [n, kv, p, d]) and
    each to its *own* new key/value only (key/value [n, kv, q, d]): no sibling block, no mask.

    Softmax by hand over past + self: torch's softmax is slow on rows this short.
    """
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        raise NotImplementedError("prefix-tree enumeration does not support attention softcapping or sinks")
    past_k, past_v = tree_past[module.layer_idx]
    if tree_new is not None:
        tree_new.append((key, value))
    n, h, q, d = query.shape
    kv = key.shape[1]
    g = h // kv  # grouped-query attention: g query heads share each key/value head
    scaling = d ** -0.5 if scaling is None else scaling
    q5 = query.unflatten(1, (kv, g))  # [n, kv, g, q, d]
    s_past = (q5.flatten(2, 3) @ past_k.transpose(-1, -2)).unflatten(2, (g, q)).mul_(scaling)  # [n, kv, g, q, p]
    s_self = (q5 * key[:, :, None]).sum(-1, keepdim=True).mul_(scaling)  # [n, kv, g, q, 1]
    top = torch.maximum(s_past.amax(-1, keepdim=True), s_self)
    e_past, e_self = s_past.sub_(top).exp_(), s_self.sub_(top).exp_()
    out = (e_past.flatten(2, 3) @ past_v).unflatten(2, (g, q)).addcmul_(e_self, value[:, :, None])
    out = out.div_(e_past.sum(-1, keepdim=True).add_(e_self))
    return out.flatten(1, 2).transpose(1, 2), None  # [n, q, h, d]


_TREE_ATTENTION = "modeldiff_prefix_tree"
AttentionInterface.register(_TREE_ATTENTION, _tree_attention)


@torch.inference_mode()
def enumerate_z(model, space: InputSpace, output: str = "mean_nll", max_nodes: int = 1 << 16,
                progress: bool = True) -> tuple[np.ndarray, int]:
    """z for every x ∈ Ω in lexicographic order, and the number of forward steps it took."""
    _check_size(space)
    tree = _PrefixTree(model.eval(), space, max_nodes, progress)
    kv, lp = tree.root()
    config, original = model.config, model.config._attn_implementation
    config._attn_implementation = _TREE_ATTENTION  # only for the walk below: every call there is a tree step
    try:
        tree.walk(kv, lp, torch.zeros(1, device=tree.device), 0, 0)
    finally:
        config._attn_implementation = original
        tree.bar.close()
    nll = -tree.out
    return (nll / space.length if output == "mean_nll" else nll), tree.steps


def brute_force_z(scorer: Scorer, space: InputSpace, batch: int = 1 << 15, progress: bool = False) -> np.ndarray:
    """Full-sequence scoring of every x ∈ Ω: the reference the prefix-shared walk must equal."""
    _check_size(space)
    out = np.empty(space.size, dtype=np.float32)
    for start in tqdm(range(0, space.size, batch), disable=not progress, desc="brute force", leave=False):
        idx = np.arange(start, min(space.size, start + batch))
        out[idx] = scorer.score_numpy(space.index_to_ids(idx))
    return out


def exact_log_rho(z: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """ln ρ(b) = ln #{x : z(x) ∈ bin b} (−inf for empty bins)."""
    counts = np.histogram(z, bins=edges)[0].astype(np.float64)
    with np.errstate(divide="ignore"):
        return np.log(counts)


def in_range(z: np.ndarray, z_range) -> np.ndarray:
    return (z >= z_range[0]) & (z <= z_range[1])


def exact_counts(z_a: np.ndarray, z_b: np.ndarray, z_range, lam: float = 0.0) -> dict:
    """The Eq. 3 counts over all of Ω: X_A, X_B, X_A∩X_B and the four PD/PA sets."""
    in_a, in_b = in_range(z_a, z_range), in_range(z_b, z_range)
    d = z_a.astype(np.float64) - z_b
    return dict(
        X_A=int(in_a.sum()), X_B=int(in_b.sum()), X_AB=int((in_a & in_b).sum()),
        PD_AB=int((in_a & (d < -lam)).sum()), PA_AB=int((in_a & (d > lam)).sum()),
        PA_BA=int((in_b & (d < -lam)).sum()), PD_BA=int((in_b & (d > lam)).sum()),
    )


def exact_ratio(z_a: np.ndarray, z_b: np.ndarray, z_range, lam: float = 0.0) -> dict:
    """Exact terms (counts / |X_A∩X_B|) and ratio (terms / PD_AB): what sampling estimates."""
    c = exact_counts(z_a, z_b, z_range, lam)
    if c["X_AB"] == 0:
        raise ValueError("no input has both models' z inside z_range: widen z_range")
    terms = {k: c[k] / c["X_AB"] for k in ("PD_AB", "PA_AB", "PA_BA", "PD_BA")}
    return dict(terms=terms, ratio=[terms[k] / terms["PD_AB"] for k in terms], counts=c)
