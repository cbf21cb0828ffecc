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
