"""The lineage index (modeldiff.analysis.lineage): a copy's parent is the nearest fingerprint among independently
initialised models of its vocabulary, whether its units and heads were relabelled or not, so the shortlist holds it."""

import copy
import hashlib

import numpy as np
import pytest

from modeldiff.analysis import lineage
from modeldiff.analysis.relatedness import HEADS, RESIDUAL, UNITS, apply_symmetry, random_symmetry, symmetries
from modeldiff.method.toy import ToyTask, make_toy_model
from modeldiff.models.derive import add_weight_noise

TASK = ToyTask(length=6, vocab_size=10, modulus=10)
VOCAB = "ids:test"


def toy(seed: int):
    return make_toy_model(TASK, n_embd=16, n_head=4, n_layer=2, seed=seed).eval()


def fingerprint(model, vocabulary=VOCAB):
    return lineage.fingerprint(model, TASK.space, vocabulary, 32)


@pytest.fixture(scope="module")
def registry():
    """A parent (seed 0) and six independent initialisations of the same architecture."""
    parent = toy(0)
    return parent, {"parent": fingerprint(parent), **{f"independent-{s}": fingerprint(toy(s)) for s in range(1, 7)}}


def copy_of(parent, sigma: float, parts=()):
    child = add_weight_noise(copy.deepcopy(parent), sigma, seed=3, relative=True)
    if parts:
        apply_symmetry(child, random_symmetry(symmetries(child), np.random.default_rng(0), parts))
    return child


@pytest.mark.parametrize("sigma", [1e-3, 1e-1, 3e-1])
def test_a_noise_copys_parent_is_nearest_by_both_parts(registry, sigma):
    parent, index = registry
    new = fingerprint(copy_of(parent, sigma))
    ranked = {c.key: c for c in lineage.rank(new, index)}
    assert ranked["parent"].weight_rank == 1 and ranked["parent"].probe_rank == 1
    # weight noise of relative size σ moves each centred Gram by about σ·√(1 + σ²/2); independents sit near √2
    assert ranked["parent"].weight_distance == pytest.approx(1.35 * sigma, rel=0.25)
    assert min(c.weight_distance for k, c in ranked.items() if k != "parent") > 1.2
    assert lineage.shortlist(new, index, 1)[0][0].key == "parent"


@pytest.mark.parametrize("parts", [(UNITS,), (HEADS,), (UNITS, HEADS)])
def test_relabelled_units_and_heads_keep_the_weight_sketch(registry, parts):
    parent, index = registry
    plain, relabelled = fingerprint(copy_of(parent, 1e-1)), fingerprint(copy_of(parent, 1e-1, parts))
    assert lineage.weight_distance(relabelled, index["parent"]) < 1.2 * lineage.weight_distance(plain, index["parent"])
    assert lineage.rank(relabelled, index)[0].key == "parent"


def test_a_relabelled_residual_axis_is_caught_by_the_probes(registry):
    """Relabelling the residual axis too moves both Grams of most matrices, but not the function."""
    parent, index = registry
    new = fingerprint(copy_of(parent, 1e-2, (RESIDUAL, UNITS, HEADS)))
    ranked = {c.key: c for c in lineage.rank(new, index)}
    assert ranked["parent"].probe_rank == 1 and ranked["parent"].probe_distance < 0.05
    assert "parent" in [c.key for c in lineage.shortlist(new, index, 2)[0]]


def test_only_the_same_vocabulary_is_compared(registry):
    parent, index = registry
    other_vocabulary = fingerprint(parent, vocabulary="ids:other")
    assert index["parent"].probe_key != other_vocabulary.probe_key
    new = fingerprint(copy_of(parent, 1e-3))
    ranked = lineage.rank(new, {**index, "same weights, other vocabulary": other_vocabulary, "unscreened": None})
    assert "same weights, other vocabulary" not in [c.key for c in ranked]
    # a registered model without a fingerprint cannot be ruled out: it is kept, beyond the shortlist's size
    keep, rest = lineage.shortlist(new, {**index, "unscreened": None}, 2)
    assert [c.key for c in keep][:2] == ["unscreened", "parent"] and len(keep) == 3 and len(rest) == 5
    assert len(lineage.shortlist(new, index, 0)[0]) == len(index)
    with pytest.raises(ValueError, match="screening.shortlist"):
        lineage.shortlist(new, index, -1)


def test_another_architecture_compares_by_probes_only(registry):
    _, index = registry
    other = lineage.fingerprint(make_toy_model(TASK, n_embd=32, n_head=4, n_layer=1).eval(), TASK.space, VOCAB, 32)
    assert np.isnan(lineage.weight_distance(other, index["parent"]))
    assert all(c.probe_rank is not None and c.weight_rank is None for c in lineage.rank(other, index))


def test_fingerprints_round_trip_and_probes_are_fixed_per_vocabulary(registry):
    _, index = registry
    f = index["parent"]
    g = lineage.Fingerprint.from_bytes(f.to_bytes())
    assert g.probe_key == f.probe_key and g.vocabulary == VOCAB and set(g.sketches) == set(f.sketches)
    assert lineage.weight_distance(f, g) == 0 and lineage.probe_distance(f, g) < 1e-6  # NLLs stored as float32
    a, b = (lineage.probe_inputs(TASK.space, VOCAB, 8) for _ in range(2))
    assert (a == b).all() and not (a == lineage.probe_inputs(TASK.space, "ids:other", 8)).all()
    with pytest.raises(ValueError, match="recompute it"):
        lineage.Fingerprint.from_bytes(b"not a fingerprint")
    with pytest.raises(ValueError, match="screening.probes"):
        lineage.probe_inputs(TASK.space, VOCAB, 0)


def test_stored_references_are_checked_by_hash(registry, tmp_path, monkeypatch):
    """The registry side: a tag's fingerprint is read from the local cache when its hash matches (no download), and a
    malformed tag is ignored (the version then counts as one without a fingerprint)."""
    from modeldiff.platform import lineage_index

    monkeypatch.setenv("MODELDIFF_CACHE", str(tmp_path))
    data = registry[1]["parent"].to_bytes()
    digest = hashlib.sha256(data).hexdigest()
    (tmp_path / "lineage").mkdir()
    (tmp_path / "lineage" / f"{digest}.npz").write_bytes(data)
    fp = lineage_index.load(f"sha256:{digest} runs:/0123abc/lineage/fingerprint.npz")
    assert fp is not None and fp.probe_key == registry[1]["parent"].probe_key
    assert lineage_index.load("runs:/0123abc/lineage/fingerprint.npz") is None
