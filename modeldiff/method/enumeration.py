"""Exact enumeration of z over Ω for spaces small enough, and the exact quantities built on it.

Autoregressive models share prefixes: one forward step per prefix node with a KV cache, and the
last position's log-probs give all V children at once, so Ω = V^L costs Σ_{d<L} V^d single-token
steps instead of V^L full forwards of L+1 tokens. Output is in lexicographic order of slots
(`InputSpace.index_to_ids`).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tqdm.auto import tqdm

from .scoring import Scorer
from .space import InputSpace

MAX_ENUMERATION = 2 * 10**9


def _check_size(space: InputSpace):
    if space.size > MAX_ENUMERATION:
        raise ValueError(
            f"|Ω| = {space.size_text()} is too large to enumerate (limit {MAX_ENUMERATION:.0g}); "
            "use sampling (sample_outdist) instead"
        )


def _cache_tensors(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(cache, "layers"):  # transformers >= 4.56
        return [(layer.keys, layer.values) for layer in cache.layers]
    if hasattr(cache, "key_cache"):
        return list(zip(cache.key_cache, cache.value_cache))
    return [tuple(kv[:2]) for kv in cache]  # legacy tuple format


def _module_scaling(module, head_dim: int) -> float:
    """The attention scaling the module itself applies when a version of transformers does not pass it: its own
    `scaling`, or GPT-2's flags (scale_attn_weights=False: none; scale_attn_by_inverse_layer_idx: 1/(layer+1))."""
    if getattr(module, "scaling", None) is not None:
        return float(module.scaling)
    scaling = head_dim**-0.5 if getattr(module, "scale_attn_weights", True) else 1.0
    if getattr(module, "scale_attn_by_inverse_layer_idx", False):
        scaling /= float(module.layer_idx + 1)
    return scaling


def _tree_attention(
    module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, *, tree_past, tree_new, **kwargs
):
    """Attention of the V children of n nodes, fed as one sequence per node: child i attends to its node's past
    (tree_past[layer], [n, kv_heads, p, d]) and to its *own* key/value (key/value [n, kv_heads, V, d]) only.

    Past scores plus one self score per query: no sibling block, no mask. The softmax is by hand because
    torch's is slow on rows this short. The new keys/values go to `tree_new`, to build the children's caches.
    """
    past_k, past_v = tree_past[module.layer_idx]
    window = kwargs.get("sliding_window")
    if kwargs.get("softcap") or kwargs.get("s_aux") is not None or (window and window <= past_k.shape[2]):
        raise NotImplementedError("prefix-tree enumeration supports no attention softcapping, sinks or short windows")
    tree_new.append((key, value))
    n, h, q, d = query.shape
    kv = key.shape[1]
    g = h // kv  # grouped-query attention: query heads [i*g, (i+1)*g) share key/value head i
    scaling = _module_scaling(module, d) if scaling is None else scaling
    q5 = query.unflatten(1, (kv, g))  # [n, kv, g, V, d]
    s_past = (q5.flatten(2, 3) @ past_k.transpose(-1, -2)).unflatten(2, (g, q)).mul_(scaling)  # [n, kv, g, V, p]
    s_self = (q5 * key[:, :, None]).sum(-1, keepdim=True).mul_(scaling)  # [n, kv, g, V, 1]
    top = torch.maximum(s_past.amax(-1, keepdim=True), s_self)
    e_past, e_self = s_past.sub_(top).exp_(), s_self.sub_(top).exp_()
    out = (e_past.flatten(2, 3) @ past_v).unflatten(2, (g, q)).addcmul_(e_self, value[:, :, None])
    out = out.div_(e_past.sum(-1, keepdim=True).add_(e_self))
    return out.flatten(1, 2).transpose(1, 2), None  # [n, V, h, d]


_TREE_ATTENTION = "modeldiff_prefix_tree"


def _per_child(past: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """A node's past [n, h, p, d] and its V children's own entries [n, h, V, d] -> the children's [n*V, h, p+1, d]."""
    n, h, p, d = past.shape
    v = new.shape[2]
    return torch.cat([past.repeat_interleave(v, 0), new.transpose(1, 2).reshape(n * v, h, 1, d)], dim=2)


class _PrefixTree:
    """Depth-first walk of the prefix tree, at most `max_nodes` children per forward call.

    A node's V children go through the model as one *sequence* of V queries that share the node's
    cache, all at the same position, with `_tree_attention` so no child sees its siblings. The cache
    is never copied per child at the last level, which holds 90% of the nodes; at inner levels each
    child's cache is built once as parent cache + own key/value. On CPU the subtrees below the top
    levels are spread over one worker thread per core, each running single-threaded torch ops:
    tiny ops scale poorly inside torch, independent subtrees scale well.
    """

    def __init__(self, model, space: InputSpace, max_nodes: int, progress: bool):
        self.model = model
        self.space = space
        self.device = next(model.parameters()).device
        self.ids = space.ids_tensor(self.device)
        self.max_nodes = max_nodes
        self.out = np.empty(space.size, dtype=np.float32)
        self.bar = tqdm(
            total=space.size, desc="enumerate", unit="x", unit_scale=True, disable=not progress, leave=False
        )
        self.lock = threading.Lock()

    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return logits[..., self.ids] - torch.logsumexp(logits, dim=-1, keepdim=True)  # full-vocab normaliser

    def root(self):
        """BOS alone, with the model's own attention: its cache and the log-probs of the first token."""
        bos = torch.tensor([[self.space.bos_token_id]], device=self.device)
        out = self.model(input_ids=bos, use_cache=True)
        return _cache_tensors(out.past_key_values), self.log_probs(out.logits[:, -1])

    def children(self, kv, depth: int):
        """Run the V children of n nodes at `depth` (cache `kv`, length depth+1) under `_tree_attention`:
        log p(grandchild) [n, V, V] and the children's own keys/values per layer ([n, kv_heads, V, d] each)."""
        n, v = kv[0][0].shape[0], self.ids.numel()
        new, position = [], torch.full((1, v), depth + 1, device=self.device)
        out = self.model(
            input_ids=self.ids.expand(n, v), position_ids=position, use_cache=False, tree_past=kv, tree_new=new
        )
        if len(new) != len(kv):  # a layer that bypassed the interface would let siblings see each other
            raise RuntimeError(
                f"{len(new)} of the {len(kv)} attention layers of {type(self.model).__name__} went through "
                "transformers' AttentionInterface, which prefix-shared enumeration needs in every layer: "
                "compute z with brute_force_z instead"
            )
        return self.log_probs(out.logits), new

    def expand(self, kv, child_cum: torch.Tensor, depth: int):
        """The children [n, V] of n nodes as nodes of their own: caches, child log-probs, prefix log-probs."""
        gc_lp, new_kv = self.children(kv, depth)
        child_kv = [(_per_child(pk, k), _per_child(pv, val)) for (pk, pv), (k, val) in zip(kv, new_kv)]
        return child_kv, gc_lp.flatten(0, 1), child_cum.reshape(-1)

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
            node_kv = [(k[sel], val[sel]) for k, val in kv]
            sub_offset = offset + start * v * per_child
            if depth + 2 == length:  # grandchildren are leaves: no child cache needed
                gc_lp, _ = self.children(node_kv, depth)
                self.emit((child_cum[sel, :, None] + gc_lp).reshape(-1), sub_offset)
            else:
                self.walk(*self.expand(node_kv, child_cum[sel], depth), depth + 1, sub_offset)

    def run(self, kv, lp: torch.Tensor, workers: int):
        """Walk the tree below the root (cache `kv`, first-token log-probs `lp`) with `workers` threads."""
        cum, depth = torch.zeros(1, device=self.device), 0
        # open the top levels until the nodes split into enough subtrees to keep every worker busy to the end
        while cum.numel() < 8 * workers and depth + 2 < self.space.length:
            kv, lp, cum = self.expand(kv, cum[:, None] + lp, depth)
            depth += 1
        per_node = self.ids.numel() ** (self.space.length - depth)  # leaves under each node

        def subtree(sel: slice):
            with torch.inference_mode():  # thread-local
                self.walk([(k[sel], val[sel]) for k, val in kv], lp[sel], cum[sel], depth, sel.start * per_node)

        cuts = np.linspace(0, cum.numel(), min(cum.numel(), 8 * workers) + 1).round().astype(int)
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(subtree, [slice(a, b) for a, b in zip(cuts[:-1], cuts[1:])]))

    def emit(self, leaf_logprob: torch.Tensor, offset: int):
        n = leaf_logprob.numel()
        self.out[offset : offset + n] = leaf_logprob.cpu().numpy()
        with self.lock:
            self.bar.update(n)


@torch.inference_mode()
def enumerate_z(
    model, space: InputSpace, output: str = "mean_nll", max_nodes: int = 1 << 11, progress: bool = True
) -> tuple[np.ndarray, int]:
    """z for every x ∈ Ω in lexicographic order, and the number of forward steps it took."""
    from transformers import AttentionInterface

    _check_size(space)
    tree = _PrefixTree(model.eval(), space, max_nodes, progress)
    kv, lp = tree.root()
    AttentionInterface.register(_TREE_ATTENTION, _tree_attention)
    config, attn, threads = model.config, model.config._attn_implementation, torch.get_num_threads()
    workers = threads if tree.device.type == "cpu" else 1
    config._attn_implementation = _TREE_ATTENTION  # for the walk only: every call there is a tree step
    torch.set_num_threads(threads // workers)
    try:
        tree.run(kv, lp, workers)
    finally:
        config._attn_implementation = attn
        torch.set_num_threads(threads)
        tree.bar.close()
    nll = -tree.out
    steps = sum(space.n_tokens**d for d in range(space.length))  # one single-token step per prefix node
    return (nll / space.length if output == "mean_nll" else nll), steps


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
        X_A=int(in_a.sum()),
        X_B=int(in_b.sum()),
        X_AB=int((in_a & in_b).sum()),
        PD_AB=int((in_a & (d < -lam)).sum()),
        PA_AB=int((in_a & (d > lam)).sum()),
        PA_BA=int((in_b & (d < -lam)).sum()),
        PD_BA=int((in_b & (d > lam)).sum()),
    )


def exact_ratio(z_a: np.ndarray, z_b: np.ndarray, z_range, lam: float = 0.0) -> dict:
    """Exact terms (counts / |X_A∩X_B|) and ratio (terms / PD_AB): what sampling estimates."""
    c = exact_counts(z_a, z_b, z_range, lam)
    if c["X_AB"] == 0:
        raise ValueError("no input has both models' z inside z_range: widen z_range")
    terms = {k: c[k] / c["X_AB"] for k in ("PD_AB", "PA_AB", "PA_BA", "PD_BA")}
    return dict(terms=terms, ratio=[terms[k] / terms["PD_AB"] for k in terms], counts=c)
