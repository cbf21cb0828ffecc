"""The full DeepSeek-V3 (671B) as a config-only artifact (benchmarks/design/moe_671b.py: the
exporter's spec of the published config, file sizes computed, no weights): what doctor and the
memory planner say on a machine too small for it, and on one that holds it."""

from __future__ import annotations

import dataclasses
import json

import pytest

from benchmarks.design import moe_671b
from edgeds import doctor, hardware
from edgeds import engine as engine_module
from edgeds.errors import ConfigError

pytestmark = pytest.mark.skipif(not moe_671b.CONFIG.is_file(), reason="no ../shared/reference")


@pytest.fixture(scope="module")
def v3(tmp_path_factory):
    c = json.loads(moe_671b.CONFIG.read_text())
    est = moe_671b.estimate(c)
    root = tmp_path_factory.mktemp("v3-671b")
    return est, {w: moe_671b.fake_artifact(c, root / w, w, 32768, est) for w in ("int8", "int4")}


def machine(monkeypatch, gib: float):
    fake = dataclasses.replace(hardware.detect(), memory_bytes=int(gib * 2**30))
    for module in (doctor, engine_module):
        monkeypatch.setattr(module, "detect", lambda: fake)


def test_the_estimate_counts_the_published_shape(v3):
    est, _ = v3
    assert 670e9 < est["params"] < 672e9
    assert est["kv_per_token"] == 61 * (512 + 64) * 4
    assert 620 < est["int8"]["total"] / 2**30 < 630
    assert 380 < est["int4"]["total"] / 2**30 < 400
    assert est["int8"]["active_per_token"] < est["int8"]["total"] / 15  # 8 of 256 experts


@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_doctor_says_it_does_not_fit_and_that_load_refuses_it(v3, weights, monkeypatch):
    _, arts = v3
    machine(monkeypatch, 128)
    report = doctor.diagnose(str(arts[weights]))
    assert not report["memory"]["fits"] and report["memory"]["largest_batch_at_context"] == 0
    text = doctor.format_report(report)
    assert "DOES NOT FIT" in text
    assert "edgeds load refuses it: the weights alone are" in text
    assert ("--weights int4" in text) == (weights == "int8")


def test_load_refuses_it_in_one_line_before_reading_a_file(v3, monkeypatch):
    """The artifact has a manifest and nothing else: the refusal comes before any file is
    hashed or mapped."""
    _, arts = v3
    machine(monkeypatch, 128)
    with pytest.raises(ConfigError, match=r"the weights alone are 625\.\d GiB, more than the "
                       r"115\.2 GiB .* at least \d+\.\d GiB") as info:
        engine_module.load(arts["int8"], verify=False)
    assert "\n" not in str(info.value)


def test_on_a_machine_that_holds_it_doctor_plans_batch_and_context(v3, monkeypatch):
    _, arts = v3
    machine(monkeypatch, 768)
    m = doctor.diagnose(str(arts["int8"]))["memory"]
    assert m["fits"] and m["refused"] is None
    assert m["largest_batch_at_context"] > 64
