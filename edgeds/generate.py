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
    finish_reason: str  # "stop" (EOS or a stop string), "length" (max_new_tokens), "context"
    prompt_tokens: int
    ttft_s: float
    latency_s: float
    stop_text: str | None = None  # the stop string that ended it, if any


@dataclass
class Rejected:
    """A request the loop could not run (a prompt that does not fit the context): the others
    go on."""

    key: object
    error: str
    prompt_tokens: int


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
    prefilled: int | None = None  # prompt tokens cached so far while prefilled in chunks
    reused: int = 0  # of those, tokens the prefix cache gave


@dataclass
class StepStats:
    """What a run measured, for `bench` and the batch job's summary."""

    prefill_s: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)
    decode_tokens: int = 0
    held_for_memory: int = 0  # times a request waited for KV cache memory (kv_tokens)


CACHE_STEP = 64  # cache capacity grows in steps of this many tokens
# A longer prompt is prefilled this many tokens per step, between the others' decode steps, on
# backends that can (`chunked_prefill`, `prefill_chunk`): one long prompt does not stall every
# running sequence.
PREFILL_CHUNK = 512


def cache_capacity(requests: list[Request], context: int) -> int:
    """Tokens of cache the longest of these requests can use, rounded up to a step."""
    longest = max(len(r.prompt_ids) + r.params.max_new_tokens for r in requests)
    return min(context, -(-longest // CACHE_STEP) * CACHE_STEP)


def rejection(request: Request, context: int, kv_tokens: int | None = None) -> str | None:
    """Why a request cannot run in this context (or memory), or None. One token of the context
    is the first generated token's: a prompt of `context` tokens leaves no room to answer."""
    n = len(request.prompt_ids)
    if n == 0:
        return "an empty prompt (no tokens)"
    if n >= context:
        return (f"prompt has {n} tokens; the context is {context} (at most {context - 1} "
                "prompt tokens; pass a larger context or truncate)")
    if kv_tokens is not None and n >= kv_tokens:
        return (f"prompt has {n} tokens; this machine's memory holds a KV cache of "
                f"{kv_tokens} tokens beside the weights")
    return None


def cache_need(request: Request, context: int) -> int:
    """Cache positions a request may come to hold: its prompt and all its new tokens."""
    return min(len(request.prompt_ids) + request.params.max_new_tokens, context)


def _admit(requests: list[Request], room: int, context: int,
           idle: bool) -> tuple[list[Request], list[Request]]:
    """The requests that fit in `room` cache positions, in order, and the rest (which wait).
    With nothing running (`idle`) the first is admitted whatever it needs: waiting would not
    free anything."""
    for k, r in enumerate(requests):
        need = cache_need(r, context)
        if need > room and not (idle and k == 0):
            return requests[:k], requests[k:]
        room -= need
    return requests, []


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
    kv_tokens: int | None = None,
) -> Iterator[TokenEvent | Finished | Rejected]:
    """`prefix`: reuse the cache rows of prompt prefixes through it (backends that support it).
    `kv_tokens`: cache positions the machine holds, for a backend whose cache grows in blocks
    as sequences grow: a request is admitted while every running sequence's prompt plus
    max_new_tokens (its most) fits in them, and otherwise waits for one to finish. None: every
    free slot is filled (the backend's memory was planned for a full batch)."""
    if prefix is not None and not prefix_cache.supported(backend):
        prefix = None
    pending = iter(requests)
    waiting: list[Request] = []  # taken, but held back until memory frees
    reserved = [0] * batch_size
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
        reserved[i] = 0
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
            yield finish(i, "context")

    while True:
        if prefix is not None:
            prefix.drain()  # blocks the last step kept go to disk after its tokens, not before
        free = [i for i, s in enumerate(slots) if s is None]
        refill = backend.supports_refill or len(free) == len(slots)
        if free and (not exhausted or waiting) and refill:
            if should_stop and should_stop():
                exhausted, waiting = True, []
            wanted = len(free) - len(waiting)
            new, ended = ([], exhausted) if exhausted or wanted <= 0 else _take(pending, wanted)
            exhausted = exhausted or ended
            verdicts = [(r, rejection(r, context, kv_tokens)) for r in new]
            new = waiting + [r for r, why in verdicts if why is None]
            for r, why in verdicts:
                if why is not None:  # that request alone: the rest of the batch runs
                    yield Rejected(r.key, why, len(r.prompt_ids))
            if kv_tokens is not None:
                new, waiting = _admit(new, kv_tokens - sum(reserved), context, not any(reserved))
                stats.held_for_memory += bool(waiting)
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
                        tokens, reserved = np.zeros(len(new), np.int64), [0] * len(new)
                    backend.start(len(slots), needed)
                    allocated = needed
                elif needed > allocated:
                    backend.grow(needed)
                    allocated = needed
                t0 = time.perf_counter()
                for i, req in zip(free, new):
                    reserved[i] = cache_need(req, context)
                    slots[i] = _Sequence(req, t0, np.random.default_rng(req.params.seed))
                chunked = getattr(backend, "chunked_prefill", False)
                whole = [(i, r) for i, r in zip(free, new)
                         if not chunked or len(r.prompt_ids) <= PREFILL_CHUNK]
                for i, r in zip(free, new):
                    if chunked and len(r.prompt_ids) > PREFILL_CHUNK:
                        slots[i].prefilled = 0  # in chunks, from the next step on
                if whole:
                    whole_slots, prompts = [i for i, _ in whole], [r.prompt_ids for _, r in whole]
                    if prefix is None:
                        logits = backend.prefill(whole_slots, prompts)
                    else:
                        logits = prefix_cache.prefill(backend, prefix, whole_slots, prompts)
                    now = time.perf_counter()
                    stats.prefill_s.append(now - t0)
                    for (i, _), row in zip(whole, logits):
                        slots[i].first_token_at = now
                        yield from accept(i, _choose(row, slots[i]))
                continue
        for i in [i for i, s in enumerate(slots) if s is not None and s.prefilled is not None]:
            seq = slots[i]
            ids, start = seq.request.prompt_ids, seq.prefilled
            t0 = time.perf_counter()
            if prefix is None:
                end = min(start + PREFILL_CHUNK, len(ids))
                row = backend.prefill_chunk(i, ids[start:end], start, last=end == len(ids))
            else:
                end, row, seq.reused = prefix_cache.prefill_chunk(backend, prefix, i, ids, start,
                                                                  PREFILL_CHUNK, seq.reused)
            now = time.perf_counter()
            stats.prefill_s.append(now - t0)
            seq.prefilled = end
            if end == len(ids):
                seq.prefilled, seq.first_token_at = None, now
                yield from accept(i, _choose(row, seq))
        active = [i for i, s in enumerate(slots) if s is not None and s.prefilled is None]
        if not active:
            if exhausted and not waiting and all(s is None for s in slots):
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
