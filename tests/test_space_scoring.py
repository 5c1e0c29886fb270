import numpy as np
import pytest
import torch

from modeldiff.scoring import Scorer
from modeldiff.space import InputSpace


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
    torch.testing.assert_close(scorer(ids), direct.mean(1))
    torch.testing.assert_close(Scorer(model, task.bos_token_id, output="sum_nll")(ids), direct.sum(1))
    assert scorer.n_scored == 2


def test_scorer_rejects_non_finite(random_gpt2):
    task, model = random_gpt2
    with torch.no_grad():
        model.transformer.wte.weight[1] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN/inf"):
        Scorer(model, task.bos_token_id)(torch.tensor([[1, 0, 0]]))
