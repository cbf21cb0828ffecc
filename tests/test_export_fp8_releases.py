"""The FP8 releases after V3 (V3.1, R1-0528): the same architecture and quantization_config (V3.1
adds power-of-two `ue8m0` scales), newer chat templates; each exports from its FP8 form, chats
and decodes what transformers decodes on the dequantized weights. 128x128 blocks on tiny widths:
every block is a partial one. Their real tokenizers are not in shared/reference, so the templates
here are short stand-ins written for these tests with each release's generation prompt."""

from __future__ import annotations

import json

import pytest
import torch
from edgeds_export import export_checkpoint
from edgeds_export.verify import reference_model
from fp8_checkpoints import write_fp8
from safetensors.torch import load_file
from tiny_models import make_checkpoint

import edgeds
from edgeds.artifact import load_artifact
from edgeds.generate import Finished
from edgeds.sampling import SamplingParams

V3_1_TEMPLATE = (
    "{% if not thinking is defined %}{% set thinking = false %}{% endif %}{{ bos_token }}"
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}{% endif %}{% endfor %}"
    "{% for m in messages %}{% if m['role'] == 'user' %}<｜User｜>{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}<｜Assistant｜></think>{{ m['content'] }}"
    "<｜end▁of▁sentence｜>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<｜Assistant｜>{{ '<think>' if thinking else '</think>' }}{% "
    "endif %}"
)
R1_0528_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}"
    "{% endif %}{% endfor %}{% for m in messages %}{% if m['role'] == 'user' %}<｜User｜>"
    "{{ m['content'] }}{% elif m['role'] == 'assistant' %}<｜Assistant｜>{{ m['content'] }}"
    "<｜end▁of▁sentence｜>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<｜Assistant｜>{% endif %}"
)
# release -> (ue8m0 scales, chat template, what a one-turn chat prompt renders to)
RELEASES = {
    "v3.1": (
        True,
        V3_1_TEMPLATE,
        "<｜begin▁of▁sentence｜>be brief<｜User｜>hi<｜Assistant｜></think>",
    ),
    "r1-0528": (
        False,
        R1_0528_TEMPLATE,
        "<｜begin▁of▁sentence｜>be brief<｜User｜>hi<｜Assistant｜>",
    ),
}
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]


@pytest.mark.parametrize("release", RELEASES)
def test_release_exports_from_fp8_chats_and_decodes_like_transformers(release, tmp_path):
    pow2, template, rendered = RELEASES[release]
    seed = list(RELEASES).index(release) + 11
    float_src = make_checkpoint(
        tmp_path / "float", "deepseek_v3", seed=seed, num_nextn_predict_layers=1
    )
    src = write_fp8(float_src, tmp_path / "fp8", block=(128, 128), pow2=pow2)
    tok_cfg = json.loads((src / "tokenizer_config.json").read_text())
    (src / "tokenizer_config.json").write_text(json.dumps({**tok_cfg, "chat_template": template}))
    if pow2:  # the scales really are powers of two, as V3.1's are
        scales = [
            v for k, v in load_file(src / "model.safetensors").items() if k.endswith("_scale_inv")
        ]
        assert all((torch.frexp(s).mantissa == 0.5).all() for s in scales)

    out = tmp_path / "artifact"
    export_checkpoint(src, out, formats=("onnx",), weights="int8", context=96)
    manifest = load_artifact(out).manifest
    assert manifest.source.fp8.scale_fmt == ("ue8m0" if pow2 else None)
    assert manifest.model.mtp_layers_left_out == 1

    engine = edgeds.load(out, backend="onnxruntime")
    assert engine.tokenizer.render_chat(MESSAGES) == rendered
    prompt = engine.tokenizer.encode_chat(MESSAGES)
    events = engine.run(engine.requests([MESSAGES], SamplingParams(max_new_tokens=16)))
    [done] = [e for e in events if isinstance(e, Finished)]
    with torch.no_grad():
        ref = reference_model(src).generate(
            torch.from_numpy(prompt[None]),
            max_new_tokens=16,
            do_sample=False,
            eos_token_id=1,
            pad_token_id=1,
        )
    expected = ref[0, len(prompt) :].tolist()
    assert done.token_ids == expected[: expected.index(1)] if 1 in expected else expected
