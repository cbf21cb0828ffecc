"""Samplers on hand-made logits: no model needed."""

from __future__ import annotations

import numpy as np
import pytest

from edgeds.sampling import SamplingParams, filter_probabilities, penalize_repetition, sample_token

LOGITS = np.log(np.array([0.5, 0.2, 0.15, 0.1, 0.05]))


def draws(params: SamplingParams, n=2000, seed=0):
    rng = np.random.default_rng(seed)
    return np.bincount([sample_token(LOGITS, params, rng) for _ in range(n)], minlength=5)


def test_greedy_is_argmax():
    assert sample_token(LOGITS, SamplingParams(), np.random.default_rng()) == 0


def test_top_k_keeps_only_k():
    counts = draws(SamplingParams(temperature=1.0, top_k=2))
    assert counts[2:].sum() == 0 and counts[0] > counts[1] > 0


def test_top_p_keeps_the_nucleus():
    p = filter_probabilities(np.exp(LOGITS), 0, 0.8, 0.0)
    np.testing.assert_allclose(p, [0.5 / 0.85, 0.2 / 0.85, 0.15 / 0.85, 0, 0])


def test_min_p_floor():
    p = filter_probabilities(np.exp(LOGITS), 0, 1.0, 0.3)  # floor: 0.3 * 0.5 = 0.15
    assert (p > 0).tolist() == [True, True, True, False, False]


def test_temperature_sharpens_and_flattens():
    cold = draws(SamplingParams(temperature=0.2))
    hot = draws(SamplingParams(temperature=5.0))
    assert cold[0] > 1900 and hot[4] > 200


def test_same_seed_same_tokens():
    p = SamplingParams(temperature=1.0, top_p=0.9)
    a = [sample_token(LOGITS, p, np.random.default_rng(7)) for _ in range(50)]
    b = [sample_token(LOGITS, p, np.random.default_rng(7)) for _ in range(50)]
    assert a == b


def test_repetition_penalty():
    out = penalize_repetition(np.array([2.0, -1.0, 3.0]), np.array([0, 1, 1]), 2.0)
    np.testing.assert_allclose(out, [1.0, -2.0, 3.0])


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(min_p=1), dict(top_k=-1),
                                 dict(max_new_tokens=0), dict(repetition_penalty=0)])
def test_invalid_params(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad).validate()


@pytest.mark.parametrize("top_k,top_p,min_p",
                         [(0, 0.9, 0.0), (3, 1.0, 0.0), (0, 1.0, 0.05), (4, 0.8, 0.02),
                          (0, 0.999, 0.0)])
def test_sampling_draws_the_filtered_distribution(top_k, top_p, min_p):
    """sample_token draws from the kept tokens only (no sort of the whole vocabulary): its
    frequencies over 40,000 draws match filter_probabilities' vector on a hand-made distribution."""
    from edgeds.sampling import filter_probabilities, sample_token

    probs = np.array([0.3, 0.2, 0.15, 0.1, 0.08, 0.06, 0.04, 0.03, 0.02, 0.01, 0.005, 0.005])
    probs = np.concatenate([probs, np.full(500, 1e-6)])  # a long tail, as a real vocabulary has
    expected = filter_probabilities(probs / probs.sum(), top_k, top_p, min_p)
    params = SamplingParams(temperature=1.0, top_k=top_k, top_p=top_p, min_p=min_p)
    rng = np.random.default_rng(0)
    draws = 40_000
    counts = np.bincount([sample_token(np.log(probs), params, rng) for _ in range(draws)],
                         minlength=probs.size)
    assert set(np.flatnonzero(counts)) <= set(np.flatnonzero(expected))
    kept = expected > 0.005
    assert np.abs(counts[kept] / draws - expected[kept]).max() < 4 * np.sqrt(0.25 / draws)


def test_the_nucleus_is_the_full_sorts_cut_on_a_flat_and_a_peaked_vocabulary():
    from edgeds.sampling import nucleus

    rng = np.random.default_rng(1)
    for p in (rng.random(129_000), np.exp(rng.normal(0, 4, 129_000))):
        for top_p in (0.1, 0.5, 0.95):
            order = np.argsort(-p, kind="stable")
            cut = int(np.searchsorted(np.cumsum(p[order]), top_p * p.sum())) + 1
            assert set(nucleus(p, top_p)) == set(order[:cut])
