"""Dense decoders (llama, qwen2): per-head K/V cache, GroupQueryAttention."""
