"""NativeMlaBackend(map_weights=True, the default): the int8 weights, which the export stores in
the GEMM's layout (export/tensors.py N16K4), read where they lie in the artifact's memory map
(edgeds/native/mla_moe.c blocked_weights): the same logits to the bit as copies, and loading
neither copies them into process memory nor reads them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from tiny_models import make_checkpoint

from edgeds import native
from edgeds.artifact import load_artifact
from edgeds.backends.native_mla import NativeMlaBackend
from edgeds.hardware import detect

pytestmark = pytest.mark.skipif(
    native.unavailable(detect().flags) is not None, reason=str(native.unavailable(detect().flags))
)


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A V3 of 64 experts of 1,024 x 512 in 2 MoE layers: 192 MiB of int8 experts, the rest
    about 10 MiB, so that a copy shows in the process's memory."""
    from edgeds_export import export_checkpoint

    root = tmp_path_factory.mktemp("mapped")
    ck = make_checkpoint(root / "ck", "deepseek_v3", hidden_size=512, moe_intermediate_size=1024,
                         n_routed_experts=64, num_experts_per_tok=4, n_group=4, topk_group=2,
                         num_hidden_layers=3, first_k_dense_replace=1, vocab_size=512)
    out = root / "int8"
    export_checkpoint(ck, out, formats=("onnx",), weights="int8", context=64)
    return load_artifact(out)


def run(art, mapped: bool, rng) -> np.ndarray:
    backend = NativeMlaBackend(art, 2, map_weights=mapped)
    assert backend.maps_weights == mapped
    backend.start(32, 40)
    prompts = [rng.integers(2, 500, int(rng.integers(1, 20))).astype(np.int64) for _ in range(32)]
    got = [backend.prefill(list(range(32)), prompts).copy()]
    got += [backend.decode(rng.integers(2, 500, 32)).copy() for _ in range(4)]
    backend.start(1, 40)
    got.append(backend.prefill([0], [prompts[5]]).copy())
    return np.concatenate([g.ravel() for g in got])


def test_mapped_weights_give_the_copies_logits_to_the_bit(wide):
    """Batch 32 prefill and decode (experts of many rows: the AMX tiles where the CPU has
    them) and batch 1: integer sums are exact, so the kernel's weight source changes nothing."""
    mapped = run(wide, True, np.random.default_rng(3))
    np.testing.assert_array_equal(mapped, run(wide, False, np.random.default_rng(3)))


PROBE = """
import json, sys
from edgeds.artifact import load_artifact
from edgeds.backends.native_mla import NativeMlaBackend
def rss():
    status = dict(l.split(':', 1) for l in open('/proc/self/status'))
    return {k: int(status[k].split()[0]) for k in ('RssAnon', 'RssFile')}
art = load_artifact(sys.argv[1], verify=False)
before = rss()
backend = NativeMlaBackend(art, 2, map_weights=sys.argv[2] == '1')
after = rss()
print(json.dumps({k: after[k] - before[k] for k in after}))
"""


def rss_growth_mib(art, mapped: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, str(art.root), str(int(mapped))],
                         capture_output=True, text=True, check=True, cwd=REPO)
    grown = json.loads(out.stdout.strip().splitlines()[-1])
    return {k: kib / 1024 for k, kib in grown.items()}


def test_loading_neither_copies_nor_reads_the_experts(wide):
    """The process's anonymous memory (what is not file pages) grows by the experts' size when
    they are copied, and by less than a tenth of it when they are mapped; mapped, the load maps
    a quarter of their pages at most (the scales and column sums beside each matrix are read,
    and the kernel maps up to 64 KiB of cached pages around each page touched)."""
    experts = 2 * 64 * 3 * 1024 * 512 / 2**20  # MiB of int8 experts
    copied, mapped = rss_growth_mib(wide, False), rss_growth_mib(wide, True)
    assert copied["RssAnon"] > 0.9 * experts
    assert mapped["RssAnon"] < 0.1 * experts
    assert mapped["RssFile"] < 0.25 * experts
