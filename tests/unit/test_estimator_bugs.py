"""Estimator bugs found in review (issue 14, item 4): each test failed before its fix."""

import numpy as np

from modeldiff.method.ancestral import AncestralResult
from modeldiff.method.ancestral import build_output_distribution as ancestral_outdist
from modeldiff.method.outdist import bin_of, build_output_distribution, make_edges
from modeldiff.method.toy import ToyTask
from support.samples import mixed_tempering

SPACE = ToyTask(length=3, vocab_size=5, modulus=5).space  # 125 inputs


def test_z_at_the_top_of_z_range_falls_in_z():
    edges = make_edges(0.3, 3.1, (1.0, 2.25), 0.25)
    assert edges[np.flatnonzero(np.isclose(edges, 2.25))[0]] == 2.25  # Z's ends are edges exactly
    top = bin_of(np.array([2.25]), edges, (1.0, 2.25))[0]
    assert edges[top] < 2.25 == edges[top + 1]
    assert bin_of(np.array([1.0]), edges, (1.0, 2.25))[0] == np.flatnonzero(edges == 1.0)[0]


def test_tempering_representatives_at_z_plus_are_kept_and_counted_in_z():
    rng = np.random.default_rng(0)
    z = rng.uniform(0.5, 3.0, SPACE.size)
    z[:10] = 2.25  # ten inputs exactly at z+
    pt = mixed_tempering(SPACE, z, [0.5, 1.0, 2.0], ladders=2, per_replica=400, rng=rng)
    od = build_output_distribution(pt, SPACE, (1.0, 2.25), 0.2, n_replicates=0)
    at_top = od.representatives[od.representatives["z"] == 2.25]
    assert len(at_top) > 0
    assert od.in_z[at_top["bin"].to_numpy()].all()
    top_bin = int(at_top["bin"].iloc[0])
    assert od.hist[:, top_bin].sum() >= at_top["count"].sum()


def test_ancestral_representatives_at_z_plus_are_kept_in_z():
    rng = np.random.default_rng(1)
    n = 600
    index = rng.integers(0, SPACE.size, n)
    z = rng.uniform(0.5, 3.0, SPACE.size)
    z[index[:50]] = 2.25
    res = AncestralResult(
        ids=SPACE.index_to_ids(index),
        z=z[index],
        log_q=np.full((n, 1), -np.log(SPACE.size)),  # uniform proposal
        temperature=np.zeros(n, np.int16),
        block=np.arange(n) % 4,
        temperatures=np.array([1.0]),
        n_per_temperature=np.array([n]),
        seconds=0.0,
        n_scored=n,
    )
    od = ancestral_outdist(res, SPACE, (1.0, 2.25), 0.2, n_replicates=0)
    at_top = od.representatives[od.representatives["z"] == 2.25]
    assert len(at_top) > 0 and od.in_z[at_top["bin"].to_numpy()].all()
