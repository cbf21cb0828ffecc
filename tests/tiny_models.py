"""Tiny random checkpoints built on the spot from configs, saved as a downloaded one would be."""

from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}<｜User｜>{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}<｜Assistant｜>{{ m['content'] }}<｜end▁of▁sentence｜>"
    "{% else %}{{ m['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<｜Assistant｜><think>\n{% endif %}"
)
SPECIALS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>",
            "<think>", "</think>"]

BASE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "bos_token_id": 0,
    "eos_token_id": 1,
}
MLA = {
    "vocab_size": 320, "hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 32,
    "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 4, "kv_lora_rank": 32,
    "qk_nope_head_dim": 16, "qk_rope_head_dim": 16, "v_head_dim": 16, "n_routed_experts": 8,
    "num_experts_per_tok": 2, "n_shared_experts": 1, "first_k_dense_replace": 1,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6, "bos_token_id": 0, "eos_token_id": 1, "tie_word_embeddings": False,
}
CONFIGS = {
    "qwen2": {**BASE, "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
              "rope_theta": 10000.0, "tie_word_embeddings": False},
    "qwen2-tied": {**BASE, "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
                   "rope_theta": 10000.0, "tie_word_embeddings": True},
    "llama": {**BASE, "model_type": "llama", "architectures": ["LlamaForCausalLM"],
              "rope_theta": 500000.0, "tie_word_embeddings": False,
              "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}},
    "llama-linear": {**BASE, "model_type": "llama", "architectures": ["LlamaForCausalLM"],
                     "rope_theta": 100000.0, "tie_word_embeddings": False,
                     "rope_scaling": {"type": "linear", "factor": 4.0}},
    # V2-Lite style: no q_lora, softmax greedy routing without renormalization, YaRN with mscale.
    "deepseek_v2": {**MLA, "model_type": "deepseek_v2", "architectures": ["DeepseekV2ForCausalLM"],
                    "q_lora_rank": None, "topk_method": "greedy", "n_group": 1, "topk_group": 1,
                    "routed_scaling_factor": 1.0,
                    "rope_scaling": {"type": "yarn", "factor": 4.0,
                                     "original_max_position_embeddings": 64,
                                     "beta_fast": 32, "beta_slow": 1, "mscale": 0.707,
                                     "mscale_all_dim": 0.707}},
    # V3/R1 style: q_lora, sigmoid routing with the correction bias, 4 groups of which 2 are kept.
    "deepseek_v3": {**MLA, "model_type": "deepseek_v3", "architectures": ["DeepseekV3ForCausalLM"],
                    "q_lora_rank": 32, "n_group": 4, "topk_group": 2, "norm_topk_prob": True,
                    "routed_scaling_factor": 2.5,
                    "rope_scaling": {"type": "yarn", "factor": 4.0,
                                     "original_max_position_embeddings": 64,
                                     "beta_fast": 32, "beta_slow": 1, "mscale": 1.0,
                                     "mscale_all_dim": 1.0}},
}


def make_tokenizer(folder: Path, vocab_size: int) -> None:
    """A byte-level BPE trained on a few lines, carrying DeepSeek's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = ["def add(a, b):\n    return a + b\n", "import os\nprint('hello world')\n"] * 20
    tok.train_from_iterator(text, trainer)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": SPECIALS[0], "eos_token": SPECIALS[1], "add_bos_token": True,
        "chat_template": CHAT_TEMPLATE,
    }))


def make_checkpoint(folder: Path, kind: str = "qwen2", seed: int = 0, **overrides) -> Path:
    """Save a random model of `kind` (a key of CONFIGS) in Hugging Face layout; returns folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    make_tokenizer(folder, 320)
    cfg = {**CONFIGS[kind], **overrides}
    cfg.setdefault("vocab_size", 320)
    torch.manual_seed(seed)
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # widen the random init so logits are not all near zero
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.08)
            elif name.endswith("bias"):
                p.normal_(0, 0.05)
        for module in model.modules():  # a non-zero routing correction bias, as a trained V3 has
            if hasattr(module, "e_score_correction_bias"):
                module.e_score_correction_bias.normal_(0, 0.05)
    model.save_pretrained(folder, safe_serialization=True)
    generation = {"bos_token_id": 0, "eos_token_id": 1}
    (folder / "generation_config.json").write_text(json.dumps(generation))
    return folder


def load_reference(folder: Path):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model.eval()
