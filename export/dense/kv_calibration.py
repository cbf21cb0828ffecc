"""Scales for an 8-bit KV cache: the largest |K| and |V| of each channel on calibration text.

GroupQueryAttention stores the cache as int8 with one static scale per (kv head, channel) and
dequantizes as it reads. The scales come from running the model's own float32-cache graph over
a prompt: keys have a few channels far larger than the rest (hence a scale per channel, not one
per tensor), and a margin leaves room for values larger than the calibration text produced;
beyond it they saturate at +-127.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MARGIN = 1.25
CALIBRATION_TOKENS = 512
# Prose, code, arithmetic and a reasoning trace: the kinds of text DeepSeek models are run on.
CALIBRATION_TEXT = """\
<think>
The user asks for the sum of the first 100 positive integers. Pair 1 with 100, 2 with 99, and so
on: 50 pairs of 101, so the sum is 5050. Check with the formula n(n+1)/2 = 100 * 101 / 2 = 5050.
</think>
The answer is **5050**.

def merge_sorted(a: list[int], b: list[int]) -> list[int]:
    # Two pointers; each step takes the smaller head, so the result stays sorted.
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        if a[i] <= b[j]:
            out.append(a[i]); i += 1
        else:
            out.append(b[j]); j += 1
    return out + a[i:] + b[j:]

The Rhine rises in the Swiss Alps, forms part of the border between Switzerland and Germany,
and flows through the Netherlands into the North Sea. Its basin drains parts of nine countries;
barges carry coal, grain and containers between Basel and Rotterdam, Europe's largest port.
SELECT customer_id, SUM(amount) AS total FROM orders WHERE created_at >= '2024-01-01'
GROUP BY customer_id HAVING SUM(amount) > 1000 ORDER BY total DESC LIMIT 10;
Solve for x: 3x + 7 = 22, so 3x = 15 and x = 5. The derivative of x^3 - 2x is 3x^2 - 2.
"""


def calibration_ids(
    tokenizer_file: Path, vocab_size: int, n: int = CALIBRATION_TOKENS
) -> np.ndarray:
    """The text, then tokens drawn from the whole vocabulary (fixed seed) up to n: the text gives
    the activations of real use, the draws reach embeddings the text never touches."""
    from tokenizers import Tokenizer

    text = [
        i
        for i in Tokenizer.from_file(str(tokenizer_file)).encode(CALIBRATION_TEXT).ids
        if i < vocab_size
    ]
    text = text[: n // 2]
    drawn = np.random.default_rng(0).integers(0, vocab_size, n - len(text))
    return np.concatenate([np.asarray(text, np.int64), drawn])


def kv_scales(model_file: Path, num_layers: int, num_kv_heads: int, head_dim: int,
              ids: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per layer, (key scales, value scales), each [kv_heads, head_dim] float32."""
    import onnxruntime as ort

    from edgeds.backends.onnxruntime.sessions import session_options

    # The runtime's options: the same scales from a host whose int8 GEMM would saturate.
    session = ort.InferenceSession(str(model_file), session_options(None, None, None, False),
                                   providers=["CPUExecutionProvider"])
    n = len(ids)
    empty = np.zeros((1, num_kv_heads, n, head_dim), np.float32)
    feeds = {
        "input_ids": ids[None],
        "seqlens_k": np.array([n - 1], np.int32),
        "total_sequence_length": np.array(n, np.int32),
        "logits_positions": np.array([[n - 1]], np.int64),
    }
    for i in range(num_layers):
        feeds[f"past_key.{i}"] = feeds[f"past_value.{i}"] = empty
    names = [f"present_{kind}.{i}" for i in range(num_layers) for kind in ("key", "value")]
    present = dict(zip(names, session.run(names, feeds)))

    def scale(t: np.ndarray) -> np.ndarray:
        peak = np.abs(t[0]).max(axis=1)  # [kv_heads, head_dim]
        return (np.maximum(peak, 1e-6) * MARGIN / 127).astype(np.float32)

    return [
        (scale(present[f"present_key.{i}"]), scale(present[f"present_value.{i}"]))
        for i in range(num_layers)
    ]
