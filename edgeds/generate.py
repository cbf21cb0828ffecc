"""The batched generate loop: slots, prefill, cached decode, continuous batching.

`run` takes requests lazily and yields events as they happen: a token for a sequence, or a
finished result. A finished sequence frees its slot at once and, on backends that support it,
the next waiting prompt is prefilled into that slot while the others keep decoding. The loop
never touches KV tensors; backends own them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from . import prefix_cache
from .backends.base import Backend
from .sampling import SamplingParams, sample_token


@dataclass
class Request:
    key: object  # caller's id, returned untouched
    prompt_ids: np.ndarray
    params: SamplingParams


@dataclass
class Finished:
    key: object
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS or a stop string), "length" (max_new_tokens or context)
    prompt_tokens: int
    ttft_s: float
    latency_s: float
    stop_text: str | None = None  # the stop string that ended it, if any


@dataclass
class TokenEvent:
    key: object
    token_id: int


@dataclass
class _Sequence:
    request: Request
    started: float
    rng: np.random.Generator
    tokens: list[int] = field(default_factory=list)
    first_token_at: float = 0.0


@dataclass
class StepStats:
    """What a run measured, for `bench` and the batch job's summary."""

    prefill_s: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)
    decode_tokens: int = 0


CACHE_STEP = 64  # cache capacity grows in steps of this many tokens


def cache_capacity(requests: list[Request], context: int) -> int:
    """Tokens of cache the longest of these requests can use, rounded up to a step."""
    longest = max(len(r.prompt_ids) + r.params.max_new_tokens for r in requests)
    return min(context, -(-longest // CACHE_STEP) * CACHE_STEP)


def run(
    backend: Backend,
    requests: Iterable[Request],
    batch_size: int,
    context: int,
    eos_ids: set[int],
    decode_text: Callable[[list[int]], str] | None = None,
    stats: StepStats | None = None,
    should_stop: Callable[[], bool] | None = None,
    prefix: prefix_cache.PrefixCache | None = None,
) -> Iterator[TokenEvent | Finished]:
    """prefix: reuse the cache rows of prompt prefixes through it (backends that support it)."""
    if prefix is not None and not prefix_cache.supported(backend):
        prefix = None
    pending = iter(requests)
    exhausted = False
    slots: list[_Sequence | None] = [None] * batch_size
    # The cache is sized to the longest request taken so far, not to the context: a job of
    # short prompts never holds (and never touches) memory for the longest possible one.
    allocated = 0
    tokens = np.zeros(batch_size, np.int64)
    stats = stats or StepStats()

    def finish(i: int, reason: str, stop_text: str | None = None) -> Finished:
        seq = slots[i]
        slots[i] = None
        backend.release(i)
        now = time.perf_counter()
        return Finished(seq.request.key, seq.tokens, reason, len(seq.request.prompt_ids),
                        seq.first_token_at - seq.started, now - seq.started, stop_text)

    def accept(i: int, token: int) -> Iterator[TokenEvent | Finished]:
        seq = slots[i]
        p = seq.request.params
        seq.tokens.append(token)
        tokens[i] = token
        yield TokenEvent(seq.request.key, token)
        if token in eos_ids and not p.ignore_eos:
            seq.tokens.pop()
            yield finish(i, "stop")
        elif p.stop and decode_text and (hit := _stop_hit(decode_text(seq.tokens), p.stop)):
            yield finish(i, "stop", hit)
        elif len(seq.tokens) >= p.max_new_tokens:
            yield finish(i, "length")
        elif len(seq.request.prompt_ids) + len(seq.tokens) >= context:
            yield finish(i, "length")

    while True:
        free = [i for i, s in enumerate(slots) if s is None]
        if free and not exhausted and (backend.supports_refill or len(free) == len(slots)):
            if should_stop and should_stop():
                exhausted = True
            new, ended = ([], True) if exhausted else _take(pending, len(free))
            exhausted = exhausted or ended
            if new:
                # Similar lengths side by side: the backend prefills neighbouring slots in one
                # padded call, which only pays off when their prompts are about as long.
                new.sort(key=lambda r: len(r.prompt_ids))
                needed = cache_capacity(new, context)
                if not backend.supports_refill or not allocated:
                    # Exactly as many slots as prompts for a wave, and for a whole job smaller
                    # than a batch (no idle rows in every step).
                    if not backend.supports_refill or exhausted:
                        slots, free = [None] * len(new), list(range(len(new)))
                        tokens = np.zeros(len(new), np.int64)
                    backend.start(len(slots), needed)
                    allocated = needed
                elif needed > allocated:
                    backend.grow(needed)
                    allocated = needed
                t0 = time.perf_counter()
                prompts = [r.prompt_ids for r in new]
                if prefix is None:
                    logits = backend.prefill(free[: len(new)], prompts)
                else:
                    logits = prefix_cache.prefill(backend, prefix, free[: len(new)], prompts)
                now = time.perf_counter()
                stats.prefill_s.append(now - t0)
                for i, req, row in zip(free, new, logits):
                    slots[i] = _Sequence(req, t0, np.random.default_rng(req.params.seed))
                    slots[i].first_token_at = now
                    yield from accept(i, _choose(row, slots[i]))
                continue
        active = [i for i, s in enumerate(slots) if s is not None]
        if not active:
            if exhausted:
                return
            continue
        t0 = time.perf_counter()
        logits = backend.decode(tokens)
        stats.decode_s.append(time.perf_counter() - t0)
        stats.decode_tokens += len(active)
        if all(slots[i].request.params.greedy for i in active):
            chosen = logits.argmax(axis=-1)
            for i in active:
                yield from accept(i, int(chosen[i]))
        else:
            for i in active:
                yield from accept(i, _choose(logits[i], slots[i]))


def _choose(logits: np.ndarray, seq: _Sequence) -> int:
    p = seq.request.params
    if p.greedy:
        return int(np.argmax(logits))
    history = None
    if p.repetition_penalty != 1.0:
        history = np.concatenate([seq.request.prompt_ids, np.asarray(seq.tokens, np.int64)])
    return sample_token(logits, p, seq.rng, history)


def _take(it: Iterator[Request | None], n: int) -> tuple[list[Request], bool]:
    """Up to n requests, and whether the iterator has ended. None from it means "none ready
    yet" (a job reading a pipe): the loop decodes what it has and asks again next step."""
    out = []
    for req in it:
        if req is None:
            return out, False
        out.append(req)
        if len(out) == n:
            return out, False
    return out, True


def _stop_hit(text: str, stops: tuple[str, ...]) -> str | None:
    return next((s for s in stops if s in text), None)
