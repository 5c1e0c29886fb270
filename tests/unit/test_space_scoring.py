import numpy as np
import pytest
import torch

from modeldiff.method.scoring import Scorer
from modeldiff.method.space import InputSpace


def test_index_roundtrip_is_lexicographic():
    space = InputSpace(3, (4, 7, 9), bos_token_id=0)
    idx = np.arange(space.size)
    ids = space.index_to_ids(idx)
    assert ids[0].tolist() == [4, 4, 4] and ids[1].tolist() == [4, 4, 7] and ids[-1].tolist() == [9, 9, 9]
    np.testing.assert_array_equal(space.ids_to_index(ids), idx)


def test_space_rejects_bad_input():
    with pytest.raises(ValueError, match="length"):
        InputSpace(0, (0, 1), 2)
    with pytest.raises(ValueError, match="bos_token_id"):
        InputSpace(2, (0, 1), None)
    with pytest.raises(ValueError, match="outside the allowed"):
        InputSpace(2, (0, 1), 2).ids_to_slots(torch.tensor([[0, 5]]))


def test_scorer_matches_direct_full_vocabulary_logsoftmax(random_gpt2):
    task, model = random_gpt2
    ids = torch.tensor([[0, 1, 2], [3, 3, 0]])
    scorer = Scorer(model, task.bos_token_id, batch_size=1)
    with torch.no_grad():
        x = torch.cat([torch.full((2, 1), task.bos_token_id), ids], 1)
        logp = model(x).logits[:, :-1].float().log_softmax(-1)  # over the full vocab, BOS included
        direct = -logp.gather(-1, ids[..., None]).squeeze(-1)
    torch.testing.assert_close(scorer(ids), direct.double().mean(1))  # z sums float32 log-probs in float64
    torch.testing.assert_close(Scorer(model, task.bos_token_id, output="sum_nll")(ids), direct.double().sum(1))
    assert scorer.n_scored == 2


def test_scorer_rejects_non_finite(random_gpt2):
    task, model = random_gpt2
    with torch.no_grad():
        model.transformer.wte.weight[1] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN/inf"):
        Scorer(model, task.bos_token_id)(torch.tensor([[1, 0, 0]]))


@pytest.mark.parametrize("output", ["mean_nll", "sum_nll"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_onehot_gradient_equals_autograd_through_a_one_hot_input(arch, output, random_gpt2, tiny_llama):
    """GWG's ∂z/∂onehot(x) (embedding projection + target log-probs, computed by hand) equals autograd
    through an explicit one-hot relaxation, for every allowed (position, token); and the log-probs
    that lm_proposal caches are the model's own conditionals."""
    model = random_gpt2[1] if arch == "gpt2" else tiny_llama
    bos = random_gpt2[0].bos_token_id if arch == "gpt2" else 11
    allowed = torch.tensor([0, 1, 3]) if arch == "gpt2" else torch.arange(2, 9)
    scorer = Scorer(model, bos, output=output)
    ids = allowed[torch.randint(len(allowed), (5, 4), generator=torch.Generator().manual_seed(0))]
    z, grad = scorer.with_onehot_gradient(ids, allowed)

    E = model.get_input_embeddings().weight.detach()
    onehot = torch.nn.functional.one_hot(ids, E.shape[0]).float().requires_grad_(True)
    emb = torch.cat([E[bos].expand(len(ids), 1, -1), onehot @ E], dim=1)
    logp = torch.log_softmax(model(inputs_embeds=emb).logits[:, :-1].float(), -1)
    nll = -(onehot * logp).sum((-1, -2))
    z_ref = nll / ids.shape[1] if output == "mean_nll" else nll
    (g_ref,) = torch.autograd.grad(z_ref.sum(), onehot)
    torch.testing.assert_close(z, z_ref.detach().double(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, g_ref[..., allowed], rtol=1e-4, atol=1e-5)
    assert torch.equal(z, scorer(ids))

    z2, cond = scorer.with_logprobs(ids, allowed)
    torch.testing.assert_close(cond, logp.detach()[..., allowed], rtol=1e-5, atol=1e-5)
    assert torch.equal(z2, z) or torch.allclose(z2, z, atol=1e-6)
