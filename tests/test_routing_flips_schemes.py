"""The quality simulation's rounding schemes (benchmarks/quality/routing_flips.py --variants):
a scale per group of a row is the per-row rounding of each group, and never rounds worse."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from benchmarks.quality.routing_flips import SCHEMES, fake_int8_rows


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
    keys = {"weight_group", "act_group", "act_float"}
    assert all(set(kw) <= keys for kw in SCHEMES.values())
