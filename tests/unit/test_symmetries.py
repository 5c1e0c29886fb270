"""The symmetries the white-box nulls permute: each relabelling of a GPT-2 or (grouped-query) Llama toy computes
exactly the same function, and a permutation that is not a symmetry does not."""

import copy

import numpy as np
import pytest
import torch

from modeldiff.analysis.relatedness import (
    HEADS,
    RESIDUAL,
    UNITS,
    UnknownSymmetries,
    apply_symmetry,
    head_order,
    random_symmetry,
    symmetries,
    weight_relatedness,
)
from modeldiff.method.toy import ToyTask, make_toy_model

TASK = ToyTask(length=5, vocab_size=6, modulus=10)


def toy(family: str):
    """Random weights everywhere (norm gains and biases too, which initialise to constants)."""
    model = make_toy_model(TASK, n_embd=16, n_head=4, n_layer=2, seed=0, family=family, n_kv_head=2).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def relabelled(model, parts):
    """A copy under a random relabelling of `parts`, with every unit and head order moved (4 heads in 2 key/value
    groups: swap the groups and the query heads within the first)."""
    sym = symmetries(model)
    g = random_symmetry(sym, np.random.default_rng(0), parts)
    if HEADS in parts:
        g.heads = {b: head_order(np.array([1, 0]), [np.array([1, 0]), np.array([0, 1])]) for b in sym.heads}
    assert all((order != np.arange(len(order))).any() for order in [*g.units.values(), *g.heads.values()])
    return apply_symmetry(copy.deepcopy(model), g)


def changed(a, b) -> set[str]:
    return {n for (n, p), q in zip(a.named_parameters(), b.parameters()) if not torch.equal(p, q)}


IDS = torch.randint(0, TASK.vocab_size + 1, (8, TASK.length + 1), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("parts", [(RESIDUAL,), (UNITS,), (HEADS,), (RESIDUAL, UNITS, HEADS)])
def test_a_relabelled_model_computes_the_same_function(family, parts):
    model = toy(family)
    permuted = relabelled(model, parts)
    with torch.no_grad():
        torch.testing.assert_close(permuted(IDS).logits, model(IDS).logits, rtol=0, atol=1e-5)
    moved = changed(model, permuted)
    if RESIDUAL in parts:  # every tensor that reads or writes the residual stream, embeddings and norms included
        assert {n for n in moved if "wte" in n or "embed_tokens" in n or "norm" in n or "ln_" in n}
    if UNITS in parts:
        assert {n for n in moved if ".mlp." in n}
    if HEADS in parts:
        assert {n for n in moved if "attn" in n}


def test_what_is_not_a_symmetry_changes_the_function():
    """Token rows, position rows, and the rotary rows of q alone: permuting them changes the logits."""
    gpt2, llama = toy("gpt2"), toy("llama")
    with torch.no_grad():
        ref = {"gpt2": gpt2(IDS).logits, "llama": llama(IDS).logits}
        for model, name, family in (
            (gpt2, "transformer.wte.weight", "gpt2"),
            (gpt2, "transformer.wpe.weight", "gpt2"),
            (llama, "model.layers.0.self_attn.q_proj.weight", "llama"),
        ):
            broken = copy.deepcopy(model)
            p = dict(broken.named_parameters())[name]
            p.copy_(p[torch.arange(p.shape[0]).roll(1)])  # for q: rows of one head's rotary frequencies move
            assert (broken(IDS).logits - ref[family]).abs().max() > 1e-3, name


def test_unknown_architectures_are_not_tested():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

    with pytest.raises(UnknownSymmetries, match="symmetries are not known"):
        symmetries(Tiny())
    r = weight_relatedness(Tiny(), Tiny())
    assert not r.applicable and "cannot be tested against independent training" in r.reason
