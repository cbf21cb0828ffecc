"""DeepSeek-V2/V3: Multi-head Latent Attention (a latent KV cache) and routed experts."""
