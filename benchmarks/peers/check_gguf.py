"""Check benchmarks/peers/gguf_writer.py: llama.cpp on the GGUF must compute what transformers does.

    /tmp/peers/bin/python -m benchmarks.peers.check_gguf

Builds tiny random Qwen2 (untied lm_head, q/k/v biases) and Llama (tied embeddings, q/k rows
permuted by the converter) checkpoints with the DeepSeek-V3 tokenizer, converts each to F32 and
Q8_0 GGUF, runs one token sequence through llama-cpp-python (all logits) and through
transformers fp32, and compares the logits. Not a CI test: it needs the peers environment
(torch, transformers, llama-cpp-python, gguf). Takes a few seconds on two cores.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks import SHARED_REFERENCE

TOKENIZER = SHARED_REFERENCE / "deepseek-v3-tokenizer"

# F32 weights with an F32 KV cache should agree to float rounding; Q8_0 (llama.cpp also quantizes
# activations to 8 bits in its matmuls) only roughly.
LIMITS = {"f32": 1e-3, "q8_0": 5e-2}


def tiny_checkpoint(arch: str, out: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2,
              "intermediate_size": 128, "vocab_size": 129280, "rms_norm_eps": 1e-6,
              "max_position_embeddings": 4096, "bos_token_id": 0, "eos_token_id": 1}
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common, rope_theta=50000.0,
                                             tie_word_embeddings=False))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common, rope_theta=10000.0,
                                             tie_word_embeddings=True))
    gen = torch.Generator().manual_seed(0)
    # weights large enough that attention is far from uniform and biases matter
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 1.0 if "embed" in name else 0.2 if p.dim() == 1 else 0.15
            p.copy_(torch.randn(p.shape, generator=gen) * scale + (1.0 if "norm" in name else 0.0))
    model.save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(TOKENIZER / f, out / f)


def reference_logits(src: Path, ids: list[int]) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def llama_cpp_logits(path: Path, ids: list[int]) -> np.ndarray:
    from llama_cpp import Llama

    # type_k/type_v 0 = GGML_TYPE_F32: llama.cpp's default F16 KV cache would blur the F32 check.
    llm = Llama(model_path=str(path), n_ctx=128, n_threads=2, logits_all=True, type_k=0, type_v=0,
                verbose=False)
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)])


def main() -> int:
    from benchmarks.peers.gguf_writer import convert

    ids = [0] + np.random.default_rng(0).integers(3, 128000, 47).tolist()
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("qwen2", "llama"):
            src = Path(tmp) / arch
            tiny_checkpoint(arch, src)
            ref = reference_logits(src, ids)
            for qtype, limit in LIMITS.items():
                out = Path(tmp) / f"{arch}-{qtype}.gguf"
                convert(src, out, qtype)
                got = llama_cpp_logits(out, ids)
                rel = np.abs(got - ref).max() / np.abs(ref).max()
                rms = np.sqrt(((got - ref) ** 2).mean() / (ref ** 2).mean())
                argmax = (got.argmax(-1) == ref.argmax(-1)).mean()
                good = rel < limit
                ok &= good
                print(f"{arch:6s} {qtype:5s}: max |llama.cpp - transformers| / max |transformers| "
                      f"= {rel:.2e} "
                      f"(limit {limit:.0e}), rms ratio {rms:.2e}; argmax agrees at {argmax:.0%} of "
                      f"{len(ids)} positions  "
                      f"{'ok' if good else 'FAIL'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
