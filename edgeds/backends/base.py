"""The interface every backend implements; the generate loop knows nothing else about them.

A backend owns the KV cache for `batch_size` slots. A slot holds one sequence; `prefill` fills
slots with prompts, `decode` advances every slot by one token. Backends that can refill one slot
while the others keep their caches (`supports_refill`) get continuous batching; the others run
waves: all slots start together. What they share of that bookkeeping (slot lengths, growing a
cache along its token axis, rows loaded into a slot) is in `slots.py`.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Backend(Protocol):
    name: str
    device: str
    supports_refill: bool
    vocab_size: int

    def start(self, batch_size: int, capacity: int) -> None:
        """Allocate (or reset) caches for `batch_size` slots of `capacity` tokens each."""

    def grow(self, capacity: int) -> None:
        """Enlarge every slot's cache to `capacity` tokens, keeping what each holds (the loop
        sizes the cache to the longest request it has taken; slots.grown does the copy)."""

    def prefill(
        self, slots: list[int], prompts: list[np.ndarray], every_position: bool = False
    ) -> np.ndarray:
        """Run each prompt into its slot's empty cache; returns last-token logits (len(slots), V),
        or with every_position the logits of every prompt position (len(slots), longest, V)."""

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """Append tokens[i] (int64, one per slot) to each slot; returns logits (batch_size, V)."""

    def release(self, slot: int) -> None:
        """Forget a slot's sequence; the slot may be prefilled again."""
