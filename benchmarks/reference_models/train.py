"""Train the two reference models from scratch on the Python standard library's own source.

    python benchmarks/reference_models/train.py --out DIR [--dense-steps N] [--moe-steps N]

- Corpus: every .py file of this Python's standard library, split by file (a stable hash of
  the relative path) into train (95%) and held-out (5%); the file lists and Python version are
  recorded in corpus.json, and a held-out sample is saved for the quality check.
- Tokenizer: byte-level BPE (4,096 tokens) with DeepSeek's special tokens and chat template.
- `r1-distill-tiny-python`: a dense qwen2 model (the R1-Distill stand-in).
- `deepseek-v3-tiny-python`: deepseek_v3 with MLA (q_lora), 8 routed experts + 1 shared,
  group-limited sigmoid routing whose correction bias is updated aux-loss-free as DeepSeek-V3
  does, and one dense first layer.
Both are saved as bf16 safetensors in the Hugging Face layout, like a downloaded checkpoint.
Fixed seeds. Runs in minutes on one GPU; on a CPU, pass fewer steps.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
SPECIALS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", "<｜User｜>",
            "<｜Assistant｜>"]
THINK = ["<think>", "</think>"]  # ordinary added tokens, as in DeepSeek-R1: decoded, not skipped
VOCAB = 4096
SEQ = 512
HELDOUT_SAMPLE_CHARS = 48_000

COMMON = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=1, pad_token_id=2,
              max_position_embeddings=2048,
              rms_norm_eps=1e-6, hidden_act="silu", tie_word_embeddings=False)
DENSE = dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_size=256,
             intermediate_size=768,
             num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0,
             use_sliding_window=False, **COMMON)
MOE = dict(model_type="deepseek_v3", architectures=["DeepseekV3ForCausalLM"], hidden_size=256,
           intermediate_size=768, moe_intermediate_size=128, num_hidden_layers=4,
           first_k_dense_replace=1,
           num_attention_heads=4, num_key_value_heads=4, q_lora_rank=96, kv_lora_rank=64,
           qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=8,
           n_shared_experts=1, num_experts_per_tok=2, n_group=4, topk_group=2, norm_topk_prob=True,
           routed_scaling_factor=2.5, rope_theta=10000.0,
           rope_scaling={"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 1024,
                         "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
           **COMMON)


def split_corpus(root: Path) -> tuple[list[Path], list[Path], Path]:
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    train, heldout = [], []
    for p in files:
        bucket = int(hashlib.sha256(str(p.relative_to(root)).encode()).hexdigest(), 16) % 20
        (heldout if bucket == 0 else train).append(p)
    return train, heldout, root


def read(paths: list[Path]) -> list[str]:
    return [p.read_text(encoding="utf-8", errors="replace") for p in paths]


def train_tokenizer(texts: list[str], out: Path) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - len(THINK), special_tokens=SPECIALS,
                                  min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK])
    tok.save(str(out / "tokenizer.json"))
    template = (HERE / "deepseek_chat_template.jinja").read_text(encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "bos_token": SPECIALS[0],
        "eos_token": SPECIALS[1],
        "pad_token": SPECIALS[2], "tokenizer_class": "LlamaTokenizerFast", "model_max_length": 2048,
        "chat_template": template,
    }, indent=2, ensure_ascii=False))


def encode(tok_dir: Path, texts: list[str]) -> np.ndarray:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    ids = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        ids.extend([0, *enc.ids, 1])  # BOS file EOS: documents as the model will see them
    return np.asarray(ids, dtype=np.int32)


def attach_bias_updates(model, rate: float = 1e-3):
    """DeepSeek-V3's aux-loss-free balancing: after each step, raise the routing bias of
    under-loaded experts and lower it for over-loaded ones. Returns the update function."""
    loads = {}

    def hook(module, _inputs, output):
        idx = next(t for t in output if isinstance(t, torch.Tensor)
                   and t.dtype in (torch.int64, torch.int32))
        experts = module.e_score_correction_bias.numel()
        loads[module] = loads.get(module, 0) + torch.bincount(idx.flatten(), minlength=experts)

    routers = [m for m in model.modules() if hasattr(m, "e_score_correction_bias")]
    for r in routers:
        r.register_forward_hook(hook)

    def update():
        with torch.no_grad():
            for r, load in loads.items():
                load = load.float()
                r.e_score_correction_bias += rate * torch.sign(load.mean() - load)
        loads.clear()

    return update, routers


def train_model(name: str, cfg: dict, train_ids: np.ndarray, held_ids: np.ndarray, tok_dir: Path,
                out: Path, steps: int, batch: int, lr: float, device: str, seed: int = 0,
                max_seconds: float = float("inf")) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = dict(cfg)
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(device)
    update_bias, routers = attach_bias_updates(model) if "n_routed_experts" in cfg else (None, [])
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(steps // 30, 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1, (s + 1) / warmup)
        * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))))
    data = torch.from_numpy(train_ids.astype(np.int64))
    curve, t0 = [], time.time()
    model.train()
    for step in range(steps):
        starts = rng.integers(0, len(data) - SEQ - 1, batch)
        x = torch.stack([data[s: s + SEQ] for s in starts]).to(device)
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16,
                            enabled=device != "cpu"):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if update_bias:
            update_bias()
        out_of_time = time.time() - t0 > max_seconds
        if step % 50 == 0 or step == steps - 1 or out_of_time:
            curve.append({"step": step, "loss": round(float(loss), 4),
                          "seconds": round(time.time() - t0, 1)})
            if step % 250 == 0 or step == steps - 1 or out_of_time:
                curve[-1]["heldout_loss"] = round(heldout_loss(model, held_ids, device, windows=16),
                                                  4)
            print(name, curve[-1], flush=True)
        if out_of_time:  # a time budget, so a slow machine still ends with a usable model
            steps = step + 1
            break
    held = heldout_loss(model, held_ids, device)
    model = model.to(torch.bfloat16).cpu()
    model.save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": 1,
                                                            "do_sample": False}, indent=2))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tok_dir / f, out / f)
    report = {"name": name, "parameters": params, "steps": steps, "batch": batch, "seq": SEQ,
              "lr": lr,
              "train_seconds": round(time.time() - t0, 1), "heldout_loss_fp32_train_device": held,
              "loss_curve": curve}
    if routers:
        report["routing_bias_range"] = [float(torch.stack([r.e_score_correction_bias
                                                           for r in routers]).min()),
                                        float(torch.stack([r.e_score_correction_bias
                                                           for r in routers]).max())]
    (out / "training.json").write_text(json.dumps(report, indent=2))
    return report


@torch.no_grad()
def heldout_loss(model, ids: np.ndarray, device: str, windows: int = 64) -> float:
    model.eval()
    data = torch.from_numpy(ids.astype(np.int64))
    losses = []
    for i in range(min(windows, (len(data) - 1) // SEQ)):
        x = data[i * SEQ:(i + 1) * SEQ][None].to(device)
        losses.append(float(model(input_ids=x, labels=x).loss))
    model.train()
    return float(np.mean(losses))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dense-steps", type=int, default=3000)
    ap.add_argument("--moe-steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-seconds", type=float, default=float("inf"), help="per model")
    ap.add_argument("--stdlib", type=Path, default=Path(sysconfig.get_paths()["stdlib"]),
                    help="standard library folder to train on (default: this Python's)")
    ap.add_argument("--python-version", default=sys.version,
                    help="the Python whose stdlib --stdlib is, for the record")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    train_files, held_files, root = split_corpus(args.stdlib)
    train_texts, held_texts = read(train_files), read(held_files)
    tok_dir = args.out / "tokenizer"
    tok_dir.mkdir(exist_ok=True)
    train_tokenizer(train_texts, tok_dir)
    train_ids, held_ids = encode(tok_dir, train_texts), encode(tok_dir, held_texts)
    corpus = {"python": args.python_version, "stdlib": str(root), "train_files": len(train_files),
              "heldout_files": [str(p.relative_to(root)) for p in held_files],
              "train_tokens": int(len(train_ids)), "heldout_tokens": int(len(held_ids))}
    sample = "".join(held_texts)[:HELDOUT_SAMPLE_CHARS]
    print(json.dumps({k: v for k, v in corpus.items() if k != "heldout_files"}), flush=True)
    reports = {}
    for name, cfg, steps, lr in (("r1-distill-tiny-python", DENSE, args.dense_steps, 3e-3),
                                 ("deepseek-v3-tiny-python", MOE, args.moe_steps, 3e-3)):
        out = args.out / name
        out.mkdir(exist_ok=True)
        reports[name] = train_model(name, cfg, train_ids, held_ids, tok_dir, out, steps, args.batch,
                                    lr, device, max_seconds=args.max_seconds)
        (out / "corpus.json").write_text(json.dumps(corpus, indent=2))
        (out / "heldout_sample.txt").write_text(sample, encoding="utf-8")
    print(json.dumps({n: {k: v for k, v in r.items() if k != "loss_curve"}
                      for n, r in reports.items()}, indent=2))


if __name__ == "__main__":
    main()
