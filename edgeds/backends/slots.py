"""The slot and cache bookkeeping that backends share: which slots hold how many tokens, growing
a cache along its token axis while keeping what it holds, and the bounds of rows loaded into a
slot (the prefix cache's). Each backend keeps its own memory (numpy buffers, OrtValues, native
blocks, OpenVINO's state); what every one of them did the same way is here once."""

from __future__ import annotations

import numpy as np


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


def grown(old: np.ndarray, capacity: int, token_axis: int) -> np.ndarray:
    """A cache array whose `token_axis` holds `capacity` positions, zeros (padding rows are
    never attended, but must not hold NaNs) beyond `old`'s contents in its first positions."""
    shape = list(old.shape)
    shape[token_axis] = capacity
    new = np.zeros(shape, old.dtype)
    keep = [slice(None)] * old.ndim
    keep[token_axis] = slice(0, min(old.shape[token_axis], capacity))
    new[tuple(keep)] = old[tuple(keep)]
    return new


def prompt_starts(prompts: list[np.ndarray], starts: list[int] | None, capacity: int,
                  every_position: bool) -> list[int]:
    """The positions of each prompt already in its slot (loaded rows; None: none), after the
    checks every refilling prefill makes: each prompt fits the cache, and at least its last token
    is computed (every_position: all of them)."""
    starts = [0] * len(prompts) if starts is None else starts
    if any(len(p) > capacity for p in prompts):
        raise ValueError("prompt longer than the cache capacity")
    if every_position and any(starts) or any(not 0 <= s < len(p) for p, s in zip(prompts, starts)):
        raise ValueError("a prompt start outside the prompt (its last token is computed)")
    return starts


def loaded_rows_stop(start: int, rows: np.ndarray, token_axis: int, capacity: int) -> int:
    """Where rows loaded at position `start` of a slot end; refused past the cache capacity."""
    stop = start + rows.shape[token_axis]
    if start < 0 or stop > capacity:
        raise ValueError("cached rows past the cache capacity")
    return stop
