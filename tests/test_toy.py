import itertools

import numpy as np

from modeldiff.toy import ToyTask, make_toy_model, rule_satisfaction, train_toy_model


def test_valid_count_matches_brute_force():
    task = ToyTask(4, 5, 6)
    brute = sum(sum(x) % 6 == 0 for x in itertools.product(range(5), repeat=4))
    assert task.n_valid() == brute
    # the paper's toy: "around 3.8 million" valid of 10^8; independent count by convolving digit sums
    sums = np.ones(1)
    for _ in range(8):
        sums = np.convolve(sums, np.ones(10))
    assert ToyTask(8, 10, 30).n_valid() == int(sums[::30].sum()) == 3_785_821


def test_sample_valid_is_uniform_over_the_valid_set(rng):
    task = ToyTask(3, 4, 3)
    valid = [x for x in itertools.product(range(4), repeat=3) if sum(x) % 3 == 0]
    n = 40_000
    draws = task.sample_valid(n, rng)
    assert task.is_valid(draws).all()
    counts = np.array([np.sum((draws == np.array(v)).all(1)) for v in valid])
    expected = n / len(valid)
    chi2 = ((counts - expected) ** 2 / expected).sum()
    # chi-square with len(valid)-1 = 20 dof: the 0.999 quantile is 45.3
    assert chi2 < 45.3, chi2


def test_training_learns_the_rule():
    task = ToyTask(3, 4, 4)  # 16 of 64 inputs are valid: learnable in a few seconds
    model = make_toy_model(task, n_embd=32, n_head=2, n_layer=2, seed=0)
    before = rule_satisfaction(model, task, n=1000)
    report = train_toy_model(model, task, steps=250, progress=False)
    after = rule_satisfaction(model, task, n=1000)
    assert before < 0.5 and after > 0.97, (before, after)
    assert report["final_loss"] < report["entropy"] + 0.05
