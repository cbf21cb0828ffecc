"""The quality simulation's rounding schemes (benchmarks/quality/routing_flips.py --variants):
a scale per group of a row is the per-row rounding of each group, and never rounds worse."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from benchmarks.quality.routing_flips import (
    MODEL,
    SCHEMES,
    fake_int8_rows,
    fake_two_planes,
    patch_expert_inputs,
)


def test_group_scales_round_each_group_as_its_own_row():
    x = torch.randn(5, 96, generator=torch.Generator().manual_seed(0))
    x[:, 3] *= 40  # one outlier per row: per-row scales lose the small values around it
    grouped = fake_int8_rows(x, 32)
    assert torch.equal(grouped[:, 32:64], fake_int8_rows(x[:, 32:64]))
    assert (grouped - x).abs().max() <= (fake_int8_rows(x) - x).abs().max()
    assert torch.equal(fake_int8_rows(x, 96), fake_int8_rows(x))
    # 64 does not divide 96: the largest divisor under it (48) is taken
    assert torch.equal(fake_int8_rows(x, 64)[:, :48], fake_int8_rows(x[:, :48]))


def test_every_scheme_names_only_keywords_the_simulation_takes():
    keys = {"weight_group", "act_group", "act_float", "act_planes", "embedding_float16"}
    assert all(set(kw) <= keys for kw in SCHEMES.values())


def test_two_planes_round_to_within_a_254th_of_an_int8_step():
    x = torch.randn(4, 128, generator=torch.Generator().manual_seed(1))
    step = x.abs().amax(-1, keepdim=True) / 127
    assert ((fake_two_planes(x) - x).abs() <= step / 254 / 2 * 1.001).all()
    assert torch.equal(fake_two_planes(torch.zeros(2, 8)), torch.zeros(2, 8))


def test_the_experts_inputs_go_through_the_rounding():
    """The simulation rounds an expert's inputs in F.linear: the model must run its experts
    as a loop of F.linear (transformers 5's grouped_mm default calls none)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32).eval()
    model.config._experts_implementation = "eager"
    seen = []
    experts = [m for m in model.modules() if type(m).__name__.endswith("Experts")]
    undo = [patch_expert_inputs(e, lambda x: seen.append(x.shape) or x) for e in experts]
    with torch.no_grad():
        model(torch.arange(2, 34)[None])
    for u in undo:
        u.remove()
    assert len(seen) >= 2 * len(experts)  # gate/up and down of at least one expert a layer
