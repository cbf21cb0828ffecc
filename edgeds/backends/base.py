"""The interface every backend implements; the generate loop knows nothing else about them.

A backend owns the KV cache for `batch_size` slots. A slot holds one sequence; `prefill` fills
slots with prompts, `decode` advances every slot by one token. Backends that can refill one slot
while the others keep their caches (`supports_refill`) get continuous batching; the others run
waves: all slots start together.
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
        """Enlarge every slot's cache to `capacity` tokens, keeping what each holds (refill
        backends only: the loop sizes the cache to the longest request it has taken)."""

    def prefill(self, slots: list[int], prompts: list[np.ndarray], every_position: bool = False) -> np.ndarray:
        """Run each prompt into its slot's empty cache; returns last-token logits (len(slots), V),
        or with every_position the logits of every prompt position (len(slots), longest, V)."""

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """Append tokens[i] (int64, one per slot) to each slot; returns logits (batch_size, V)."""

    def release(self, slot: int) -> None:
        """Forget a slot's sequence; the slot may be prefilled again."""


class SlotLengths:
    """How many tokens each slot holds and which slots are idle (released, or never filled):
    the bookkeeping of a backend that refills slots. A decode step computes every slot's row
    (the batch has one shape) and the loop ignores the idle ones; they stay at position 0, so
    that such a row attends over one position, not over a length that grows every step."""

    def __init__(self, batch_size: int):
        self.lengths = np.zeros(batch_size, np.int32)
        self.idle = np.ones(batch_size, bool)

    def filled(self, slot: int, tokens: int) -> None:
        self.lengths[slot] = tokens
        self.idle[slot] = False

    def released(self, slot: int) -> None:
        self.lengths[slot] = 0
        self.idle[slot] = True

    def decode_positions(self, capacity: int, out: np.ndarray) -> np.ndarray:
        """Each slot's position for the next token (the cache's last one at most), into `out`."""
        np.minimum(self.lengths, capacity - 1, out=out)
        out[self.idle] = 0
        return out

    def advance(self) -> None:
        self.lengths += ~self.idle
