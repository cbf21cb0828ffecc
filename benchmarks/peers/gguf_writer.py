"""Convert a local Hugging Face Qwen2 or Llama safetensors checkpoint to GGUF, for llama.cpp.

    python -m benchmarks.peers.gguf_writer SRC_DIR OUT.gguf [--type q8_0|f32]

The llama.cpp peer of benchmarks/peers/compare.py must run the same (random-weight) checkpoint as
the other peers, and llama.cpp's own converter is not at hand, so this is a small one written on the
`gguf` package's GGUFWriter. It covers what the benchmark shapes need and nothing more: dense
Qwen2ForCausalLM / LlamaForCausalLM decoders without rope scaling, with a byte-level BPE
tokenizer.json. benchmarks/peers/check_gguf.py checks its output against transformers.

Runs in the peers environment (gguf, numpy, safetensors, ml_dtypes); tensors are converted and
written one at a time, so memory stays near the largest single tensor.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import gguf
# noqa: F401  registers numpy's bfloat16, which safetensors' numpy API needs for bf16 checkpoints
import ml_dtypes
import numpy as np
from safetensors import safe_open

ARCHS = {"Qwen2ForCausalLM": "qwen2", "LlamaForCausalLM": "llama"}

# HF names -> GGUF names. Per-layer names are relative to model.layers.{i}. / blk.{i}.
GLOBAL = {"model.embed_tokens.weight": "token_embd.weight",
          "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight", "self_attn.o_proj.bias": "attn_output.bias",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf: str) -> str | None:
    if hf in GLOBAL:
        return GLOBAL[hf]
    parts = hf.split(".", 3)  # model, layers, i, rest
    if parts[:2] == ["model", "layers"] and len(parts) == 4:
        if parts[3].endswith("rotary_emb.inv_freq"):
            return None  # recomputed by llama.cpp from rope_freq_base
        if parts[3] in LAYER:
            return f"blk.{parts[2]}.{LAYER[parts[3]]}"
    raise ValueError(f"no GGUF name for tensor {hf!r}: not a dense Qwen2/Llama checkpoint?")


def rope_interleave(w: np.ndarray, heads: int) -> np.ndarray:
    """Llama only: HF stores q/k rows per head as [first halves | second halves] (rotate-half rope);
    llama.cpp's llama arch ropes adjacent pairs, so pair row j with row j + head_dim/2.
    Qwen2 needs nothing: llama.cpp ropes it NEOX-style, which is HF's layout."""
    rows = w.shape[0]
    return w.reshape(heads, 2, rows // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tokenizer_kv(w: gguf.GGUFWriter, src: Path, vocab_size: int, config: dict,
                 pre: str | None) -> str:
    """tokenizer.json (byte-level BPE) -> llama.cpp's "gpt2" tokenizer keys. Returns the
    pre-tokenizer name."""
    tok = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    model = tok["model"]
    if model["type"] != "BPE":
        raise ValueError(
            f"tokenizer.json model {model['type']!r}: only byte-level BPE is supported")
    text = {i: t for t, i in model["vocab"].items()}
    types = {i: gguf.TokenType.NORMAL for i in text}
    for a in tok.get("added_tokens", []):
        text[a["id"]] = a["content"]
        types[a["id"]] = gguf.TokenType.CONTROL if a.get("special") else gguf.TokenType.USER_DEFINED
    if max(text) >= vocab_size:
        raise ValueError(f"tokenizer has id {max(text)} but the model's vocab_size is {vocab_size}")
    # llama.cpp wants one entry per embedding row; checkpoints pad the embedding past the tokenizer
    # (here 151936 rows for a 128815-token tokenizer), so fill the gap with unused placeholders.
    tokens = [text.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    token_types = [int(types.get(i, gguf.TokenType.UNUSED)) for i in range(vocab_size)]
    # both tokenizer.json forms
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]

    if pre is None:
        # llama.cpp picks its pre-tokenizer regex by name, not from tokenizer.json: recognise the
        # families these checkpoints ship (DeepSeek-V3's, Qwen2's, Llama 3's) by a piece of their
        # regex.
        regex = json.dumps(tok.get("pre_tokenizer"))  # regex backslashes appear doubled here
        pre = ("deepseek-v3" if r"\\p{N}{1,3}" in regex and r"\u4e00-\u9fa5" in regex
               else "qwen2" if r"\\p{L}+|\\p{N}|" in regex
               else "llama-bpe" if r"\\p{L}+|\\p{N}{1,3}|" in regex else "default")
        if pre == "default":
            print("warning: unrecognised pre-tokenizer; wrote 'default' (pass --pre to choose)",
                  file=sys.stderr)

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    w.add_token_merges(merges)

    # Special ids: the tokenizer's own tokens first (tokenizer_config names them by text), the
    # model config's ids only as a fallback -- the config can name ids of another tokenizer.
    tc_path = src / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text(encoding="utf-8")) if tc_path.exists() else {}
    ids = {t: i for i, t in text.items()}
    for kind, add in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id),
                      ("pad", w.add_pad_token_id)):
        entry = tc.get(f"{kind}_token")
        content = entry.get("content") if isinstance(entry, dict) else entry
        tid = ids.get(content) if content else None
        if tid is None:
            tid = config.get(f"{kind}_token_id")
            tid = tid[0] if isinstance(tid, list) else tid
        if tid is not None:
            add(int(tid))
    if "add_bos_token" in tc:
        w.add_add_bos_token(bool(tc["add_bos_token"]))
    if "add_eos_token" in tc:
        w.add_add_eos_token(bool(tc["add_eos_token"]))
    if isinstance(tc.get("chat_template"), str):
        w.add_chat_template(tc["chat_template"])
    return pre


def convert(src: Path, out: Path, qtype_name: str = "q8_0", pre: str | None = None) -> None:
    config = json.loads((src / "config.json").read_text())
    arch = ARCHS.get((config.get("architectures") or [""])[0])
    if arch is None:
        raise ValueError(f"architecture {config.get('architectures')}: supported are {list(ARCHS)}")
    # Plain rope only. transformers 5 writes rope_parameters (with rope_theta inside); older,
    # rope_scaling.
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ValueError(f"rope scaling {rope} is not supported")
    rope_theta = float(config.get("rope_theta") or rope.get("rope_theta") or 10000.0)
    qtype = {"q8_0": gguf.GGMLQuantizationType.Q8_0,
             "f32": gguf.GGMLQuantizationType.F32}[qtype_name]
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    kv_heads = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim") or hidden // heads

    w = gguf.GGUFWriter(out, arch)
    w.add_name(src.name)
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(hidden)
    w.add_block_count(config["num_hidden_layers"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(rope_theta)
    w.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    w.add_vocab_size(config["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if qtype_name == "q8_0"
                    else gguf.LlamaFileType.ALL_F32)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    pre = tokenizer_kv(w, src, config["vocab_size"], config, pre)

    # Plan every tensor (name, shape, type) first: GGUF puts all tensor infos before the data, and
    # knowing them up front lets each tensor be loaded, converted and written on its own.
    files = sorted(src.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {src}")
    plan = []
    for f in files:
        with safe_open(f, framework="np") as st:
            for hf in st.keys():  # noqa: SIM118  safe_open is not iterable
                name = gguf_name(hf)
                if name is None:
                    continue
                shape = tuple(st.get_slice(hf).get_shape())
                # Matrices are quantized; norms and biases (1-D) stay F32, as llama.cpp's Q8_0
                # files do.
                matrix = len(shape) == 2 and shape[-1] % 32 == 0
                t = qtype if matrix else gguf.GGMLQuantizationType.F32
                plan.append((f, hf, name, shape, t))
    if config.get("tie_word_embeddings") and any(p[2] == "output.weight" for p in plan):
        # llama.cpp reuses token_embd when output is absent
        plan = [p for p in plan if p[2] != "output.weight"]
    for _, _, name, shape, t in plan:
        if t != gguf.GGMLQuantizationType.F32:
            nbytes = int(np.prod(gguf.quant_shape_to_byte_shape(shape, t)))
        else:
            nbytes = int(np.prod(shape)) * 4
        w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=t)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    st_open = {}
    for f, hf, name, shape, t in plan:  # write_tensor_data takes tensors in the planned order
        st = st_open.setdefault(f, safe_open(f, framework="np"))
        x = st.get_tensor(hf).astype(np.float32)
        if arch == "llama" and name.endswith(("attn_q.weight", "attn_q.bias")):
            x = rope_interleave(x, heads)
        elif arch == "llama" and name.endswith(("attn_k.weight", "attn_k.bias")):
            x = rope_interleave(x, kv_heads)
        w.write_tensor_data(gguf.quants.quantize(x, t))
    w.close()
    print(f"{arch}, {len(plan)} tensors, {qtype_name}, pre-tokenizer {pre!r}, "
          f"{out.stat().st_size / 1e9:.2f} GB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path,
                    help="Hugging Face checkpoint folder (config.json, *.safetensors, "
                         "tokenizer.json)")
    ap.add_argument("out", type=Path, help="the .gguf file to write")
    ap.add_argument("--type", default="q8_0", choices=["q8_0", "f32"],
                    help="type of the weight matrices")
    ap.add_argument("--pre", default=None,
                    help="llama.cpp pre-tokenizer name (default: recognised from tokenizer.json)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    # a killed run must not leave a file that looks done
    tmp = args.out.with_name(args.out.name + ".part")
    convert(args.src, tmp, args.type, args.pre)
    tmp.replace(args.out)
    print(f"converted in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
