"""Token choice from logits: pure numpy functions, testable on hand-made vectors.

Each sequence carries its own generator, seeded from its request, so a sequence's tokens do not
depend on which other sequences share its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import UsageError


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_k: int = 0  # 0 means off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0 and self.repetition_penalty == 1.0

    def validate(self) -> None:
        """Refuse any setting outside its range, NaN and infinities included, naming the field.

        The bounds keep every sampler finite: a temperature below MIN_TEMPERATURE or a
        repetition penalty outside its range overflows float64 logits into inf and NaN."""
        for name, (kind, low, high, what) in LIMITS.items():
            value = getattr(self, name)
            if kind is int:
                ok = isinstance(value, int) and not isinstance(value, bool)
            else:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok or not (low <= value <= high) or (name in OPEN_AT_ZERO and value == 0):
                raise SamplingError(name, f"{name} must be {what}, not {value!r}")
        if 0 < self.temperature < MIN_TEMPERATURE:
            raise SamplingError("temperature", f"temperature must be {LIMITS['temperature'][3]}, "
                                               f"not {self.temperature!r}")
        if not isinstance(self.stop, (tuple, list)) or not all(isinstance(s, str) and s
                                                                for s in self.stop):
            raise SamplingError("stop", "stop must be a list of non-empty strings")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise SamplingError("stop", f"at most {MAX_STOP_STRINGS} stop strings")


class SamplingError(UsageError):
    """A sampling setting out of its range; `field` names it (for a batch job's error record)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


MIN_TEMPERATURE = 1e-3
MAX_STOP_STRINGS = 64
OPEN_AT_ZERO = ("top_p", "repetition_penalty")  # their ranges exclude 0
# field -> (type, lowest, highest, the range in words). Comparisons are written so that NaN fails.
LIMITS = {
    "max_new_tokens": (int, 1, 1 << 24, "an integer from 1 to 16777216"),
    "temperature": (float, 0.0, 100.0, "0 (greedy) or from 0.001 to 100"),
    "top_k": (int, 0, (1 << 31) - 1, "an integer >= 0 (0: off)"),
    "top_p": (float, 0.0, 1.0, "in (0, 1]"),
    "min_p": (float, 0.0, 1.0 - 1e-9, "in [0, 1)"),
    "repetition_penalty": (float, 0.01, 100.0, "from 0.01 to 100 (1: off)"),
    "seed": (int, 0, (1 << 64) - 1, "an integer from 0 to 2**64-1"),
}


def penalize_repetition(logits: np.ndarray, history: np.ndarray, penalty: float) -> np.ndarray:
    """CTRL-style penalty: seen tokens' positive logits are divided, negative ones multiplied."""
    out = logits.copy()
    seen = np.unique(history)
    vals = out[seen]
    out[seen] = np.where(vals > 0, vals / penalty, vals * penalty)
    return out


def filter_probabilities(probs: np.ndarray, top_k: int, top_p: float, min_p: float) -> np.ndarray:
    """Zero out tokens outside top-k, the top-p nucleus and the min-p floor; renormalize."""
    p = probs
    if top_k and top_k < p.size:
        kth = np.partition(p, -top_k)[-top_k]
        p = np.where(p >= kth, p, 0.0)
    if min_p > 0:
        p = np.where(p >= min_p * p.max(), p, 0.0)
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cumulative = np.cumsum(p[order])
        cut = int(np.searchsorted(cumulative, top_p * cumulative[-1])) + 1
        keep = np.zeros_like(p)
        keep[order[:cut]] = p[order[:cut]]
        p = keep
    return p / p.sum()


def nucleus(p: np.ndarray, top_p: float) -> np.ndarray:
    """Ids of the smallest set of largest entries of `p` holding top_p of its sum, largest first:
    filter_probabilities' top-p cut, without sorting the whole vocabulary. The largest few are
    partitioned out and sorted; only where they hold too little are more taken (a flat
    distribution ends in the full sort)."""
    target, m = top_p * p.sum(), 64
    while True:
        if m >= p.size:
            ids = np.argsort(-p, kind="stable")
        else:
            ids = np.argpartition(-p, m)[:m]
            ids = ids[np.argsort(-p[ids], kind="stable")]
        cumulative = np.cumsum(p[ids])
        if cumulative[-1] >= target or m >= p.size:
            return ids[:int(np.searchsorted(cumulative, target)) + 1]
        m *= 8


def sample_token(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator,
                 history: np.ndarray | None = None) -> int:
    """The distribution of filter_probabilities, drawn from the kept tokens alone (one uniform
    draw against their running sum): no sort or cumulative sum over the whole vocabulary."""
    if params.repetition_penalty != 1.0 and history is not None and history.size:
        logits = penalize_repetition(logits, history, params.repetition_penalty)
    if params.temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / params.temperature
    p = np.exp(z - z.max())
    if params.top_k and params.top_k < p.size:
        p[p < np.partition(p, -params.top_k)[-params.top_k]] = 0.0
    if params.min_p > 0:
        p[p < params.min_p * p.max()] = 0.0
    ids = nucleus(p, params.top_p) if params.top_p < 1.0 else np.flatnonzero(p)
    cumulative = np.cumsum(p[ids])
    at = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    return int(ids[min(at, ids.size - 1)])
