"""The Python API: `engine = edgeds.load(artifact)`, then `engine.generate(prompts)`.

    engine = edgeds.load("r1-1.5b-int8")
    [r] = engine.generate(["def fib(n):"], max_new_tokens=64)
    print(r.text, r.finish_reason, r.timings)
    for piece in engine.stream([{"role": "user", "content": "Hi"}]):
        print(piece, end="")
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import generate as gen
from . import prefix_cache
from .artifact import Artifact, load_artifact
from .backends import registry
from .backends.base import Backend
from .context import ContextChoice, choose_context, truncate_prompt
from .default_model import default_artifact
from .errors import ConfigError, UsageError
from .hardware import Hardware, detect
from .heap import give_back_freed_heap
from .memory_budget import kv_budget, largest_batch, weight_bytes, weights_do_not_fit
from .profiles import Profile, choose_profile, load_profiles
from .sampling import SamplingParams
from .selection import Choice, choose_backend
from .tokenizer import TextTokenizer, split_reasoning

Prompt = str | list[dict]
MAX_BLOCK_BATCH = 256  # slots a block-cache backend may run (its memory is admitted per token)


@dataclass
class Completion:
    text: str
    reasoning: str | None
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    timings: dict
    error: str | None = None  # finish_reason "error": this prompt could not run (the others did)


class Engine:
    def __init__(self, artifact: Artifact, profile: Profile, choice: Choice, hardware: Hardware,
                 profile_reasons: list[str], tokenizer: TextTokenizer, backend: Backend,
                 context: ContextChoice | None = None):
        self.artifact, self.profile, self.choice, self.hardware = (
            artifact,
            profile,
            choice,
            hardware,
        )
        self.reasons = profile_reasons + choice.reasons
        self.tokenizer, self.backend = tokenizer, backend
        self.eos_ids = set(artifact.manifest.generation.eos_token_ids)
        self.context_choice = context or default_context(profile, artifact)
        self.context = self.context_choice.tokens
        self.reasons.append(self.context_choice.describe())
        # No batch, the profile's or a caller's, may hold more slots of full-context cache than fit.
        fmt = choice.artifact_format
        # The small-batch graph counts where it may load (at the first batch small enough for it).
        self.weight_bytes = weight_bytes(
            artifact.manifest, fmt, small_batch=bool(choice.small_batch_max)
        )
        per_token = artifact.manifest.kv_layout(fmt).bytes_per_token
        # A cache that grows in blocks (native dense) is planned per token: sequences are admitted
        # while their most (prompt + max_new_tokens) fits. Others hold batch x capacity at once,
        # so the batch is capped where full-context slots fit.
        self.kv_tokens = None
        if getattr(backend, "grows_in_blocks", False):
            budget = kv_budget(hardware.memory_bytes, self.weight_bytes)
            self.kv_tokens = max(int(budget // per_token), 2)
            if self.kv_tokens < self.context:
                self.context_choice = ContextChoice(self.kv_tokens, f"lowered from {self.context}: "
                                                    f"{self.memory_note()}")
                self.context = self.kv_tokens
                self.reasons[-1] = self.context_choice.describe()
            self.max_batch = max(profile.runtime.batch_size, MAX_BLOCK_BATCH)
            self._kv_tokens_planned = self.kv_tokens
            self._blocks_note = len(self.reasons)  # rewritten where the prefix cache takes some
            self.reasons.append(f"KV cache grows in blocks: {self.memory_note()}")
        else:
            self.max_batch = max(largest_batch(hardware.memory_bytes, self.weight_bytes, per_token,
                                               self.context), 1)
        self.batch_size = self.batch_for(profile.runtime.batch_size)
        if self.batch_size < profile.runtime.batch_size:
            self.reasons.append(
                f"batch {profile.runtime.batch_size} -> {self.batch_size}: {self.cap_reason()}"
            )
        self.prefix: prefix_cache.PrefixCache | None = None

    def enable_prefix_cache(self, folder: str | Path | None = None, max_bytes: int | None = None,
                            block_tokens: int | None = None) -> str | None:
        """Reuse prompt prefixes' cache rows, and with `folder` keep them there for later runs
        and other processes (at most `max_bytes`; prefix_store.py). Returns why not where this
        backend cannot. The memory budget: half of what the batch's full-context caches leave
        beside the weights, at most prefix_cache.MEMORY_CAP. block_tokens: by default the size at
        which the backend shares its own cache blocks between sequences, where it does."""
        if why := prefix_cache.unsupported(self.backend):
            return why
        block_tokens = block_tokens or getattr(self.backend, "shared_block_tokens", None) or (
            prefix_cache.BLOCK_TOKENS)
        per_token = self.artifact.manifest.kv_layout(self.choice.artifact_format).bytes_per_token
        left = kv_budget(self.hardware.memory_bytes, self.weight_bytes) - (
            per_token * self.batch_size * self.context)
        budget = int(min(max(left / 2, 0), prefix_cache.MEMORY_CAP))
        if self.kv_tokens is not None and budget:
            # A block cache admits by tokens: the prefix cache's bytes are not for its blocks
            # (left > 0, so a full batch of full-context sequences still fits).
            self.kv_tokens = self._kv_tokens_planned - budget // per_token
            self.reasons[self._blocks_note] = (f"KV cache grows in blocks: {self.memory_note()}, "
                                               f"{budget / 2**20:.0f} MiB for the prefix cache")
        root = prefix_cache.namespace(self.artifact.digest, self.backend.cache_layout, block_tokens)
        store = None
        if folder is not None:
            from .prefix_store import DEFAULT_MAX_BYTES, PrefixStore

            dtype, shape = self.backend.kv_block_shape(block_tokens)
            store = PrefixStore(folder, root.hex(), dtype, shape,
                                DEFAULT_MAX_BYTES if max_bytes is None else max_bytes)
        self.prefix = prefix_cache.PrefixCache(root, block_tokens, budget, store)
        return None

    def batch_for(self, requested: int | None) -> int:
        return min(requested or self.batch_size, self.max_batch)

    def memory_note(self) -> str:
        return (f"sequences are admitted while their prompt + max_new_tokens fit in "
                f"{self.kv_tokens} tokens of cache ({self.hardware.memory_bytes / 2**30:.1f} GiB "
                "with the weights)")

    def cap_reason(self) -> str:
        return (f"a full {self.context}-token KV cache per slot must fit in "
                f"{self.hardware.memory_bytes / 2**30:.1f} GiB with the weights")

    def encode(self, prompt: Prompt) -> np.ndarray:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        return self.tokenizer.encode_chat(prompt)

    def requests(self, prompts: Iterable[Prompt], params: SamplingParams,
                 truncate: bool = False) -> Iterator[gen.Request]:
        """One request per prompt; an over-long one is cut (`truncate`) or left for the loop to
        reject alone."""
        params.validate()
        for i, p in enumerate(prompts):
            ids = self.encode(p)
            if truncate:
                ids = self.truncate(ids, params.max_new_tokens)
            yield gen.Request(i, ids, params)

    def truncate(self, ids: np.ndarray, max_new_tokens: int) -> np.ndarray:
        """The prompt's opening (BOS, the template's first part) and its end, to fit the
        context."""
        return truncate_prompt(ids, self.context, max_new_tokens)

    def run(
        self,
        requests: Iterable[gen.Request],
        batch_size: int | None = None,
        stats: gen.StepStats | None = None,
        should_stop=None,
    ) -> Iterator[gen.TokenEvent | gen.Finished]:
        return gen.run(self.backend, requests, self.batch_for(batch_size), self.context,
                       self.eos_ids, self.tokenizer.decode, stats, should_stop, self.prefix,
                       self.kv_tokens)

    def complete(self, done: gen.Finished) -> Completion:
        text = self.tokenizer.decode(done.token_ids)
        if done.stop_text:
            text = text[: text.index(done.stop_text)]
        reasoning = None
        if self.tokenizer.reasoning:
            reasoning, text = split_reasoning(text)
        return Completion(text, reasoning, done.token_ids, done.finish_reason, done.prompt_tokens,
                          {"ttft_s": done.ttft_s, "latency_s": done.latency_s})

    def generate(self, prompts: list[Prompt], max_new_tokens: int = 256, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                 repetition_penalty: float = 1.0, stop: tuple[str, ...] = (), seed: int = 0,
                 batch_size: int | None = None, truncate: bool = False) -> list[Completion]:
        """Complete each prompt (raw text, or a list of chat messages); results in input order.
        A prompt longer than the context comes back with finish_reason "error" and its `error`
        (or, with `truncate`, is cut to its opening and end); the others run."""
        params = SamplingParams(max_new_tokens, temperature, top_k, top_p, min_p,
                                repetition_penalty, seed, tuple(stop))
        out: list[Completion | None] = [None] * len(prompts)
        for event in self.run(self.requests(prompts, params, truncate), batch_size):
            if isinstance(event, gen.Finished):
                out[event.key] = self.complete(event)
            elif isinstance(event, gen.Rejected):
                out[event.key] = Completion("", None, [], "error", event.prompt_tokens, {},
                                            event.error)
        return out

    def stream(self, prompt: Prompt, max_new_tokens: int = 256, **sampling) -> Iterator[str]:
        """Yield text pieces of one completion as tokens arrive."""
        params = SamplingParams(max_new_tokens=max_new_tokens, **sampling)
        ids: list[int] = []
        shown = ""
        for event in self.run(self.requests([prompt], params), batch_size=1):
            if isinstance(event, gen.Rejected):
                raise UsageError(event.error)
            if isinstance(event, gen.TokenEvent):
                if event.token_id in self.eos_ids:
                    continue
                ids.append(event.token_id)
                text = self.tokenizer.decode(ids)
                if not text.endswith("\ufffd"):  # hold back half a UTF-8 character
                    yield text[len(shown):]
                    shown = text

    def describe(self) -> dict:
        return {"profile": self.profile.name, "backend": self.choice.backend,
                "context": self.context, "context_source": self.context_choice.source,
                "providers": self.choice.providers, "threads": self.choice.threads,
                "reasons": self.reasons, "advice": self.choice.advice}


def load(artifact: str | Path | None = None, profile: str | None = None, backend: str | None = None,
         device: str | None = None, threads: int | None = None, verify: bool = True,
         prefix_cache: bool | str | Path = True, prefix_cache_size: int | None = None,
         context: int | None = None) -> Engine:
    """Open an artifact folder (None: the embedded default model) and pick profile, backend and
    provider for this machine. `threads`: 1 to this machine's CPU count; None or 0: the profile's.
    `prefix_cache`: reuse the cache rows of prompt prefixes within this engine (where the
    backend can: native, ONNX Runtime's host cache; prefix_cache.unsupported says why not);
    a folder: keep them there too, at most `prefix_cache_size` bytes, for later runs.
    `context`: tokens a sequence may hold (prompt and answer), up to what the artifact was
    exported for; None or 0: the profile's default (lowered to the artifact's where it is less).

    The files the chosen backend reads are checked against their sha256, and the tokenizer is
    read, while the backend loads (all three release the GIL): load time is the backend's
    alone. The engine is refused if any file differs."""
    check_threads(threads)
    art = load_artifact(default_artifact() if artifact is None else artifact, verify=False)
    hw = detect()
    prof, reasons = choose_profile(hw, load_profiles(), profile)
    window = choose_context(context, prof.name, prof.runtime.context, art.model.context_length)
    choice = choose_backend(prof, hw, art, backend, device, threads)
    fmt = choice.artifact_format
    if why := weights_do_not_fit(hw.memory_bytes,
                                 weight_bytes(art.manifest, fmt, bool(choice.small_batch_max)),
                                 art.manifest.kv_layout(fmt).bytes_per_token, window.tokens,
                                 art.manifest.quantization.weights):
        raise ConfigError(f"{art.root.name}: {why}")
    with ThreadPoolExecutor(2) as pool:
        # Only what will be read is hashed: an artifact's small-batch graph where it loads.
        files = art.files_for(choice.artifact_format, small_batch=bool(choice.small_batch_max))
        check = pool.submit(art.verify, files) if verify else None
        tokenizer = pool.submit(TextTokenizer, art)
        try:
            gpu = hw.jetson_model or hw.cpu_model  # names the TensorRT engine cache's device
            runner = registry.get(choice.backend).open(art, prof, choice, gpu)
        finally:
            if check is not None:
                check.result()  # raises ArtifactError on a mismatch, before anything runs
        engine = Engine(art, prof, choice, hw, reasons, tokenizer.result(), runner, window)
    give_back_freed_heap()  # what the tokenizer's and the manifest's parsing freed
    if prefix_cache is not False:
        folder = None if prefix_cache is True else prefix_cache
        why = engine.enable_prefix_cache(folder, prefix_cache_size)
        if why and folder is not None:
            raise ConfigError(f"--prefix-cache {folder}: {why}")
    return engine


def context_for(profile: Profile, artifact: Artifact) -> int:
    """The context an engine of this profile runs this artifact with where no --context is given
    (request digests cover it)."""
    return default_context(profile, artifact).tokens


def default_context(profile: Profile, artifact: Artifact) -> ContextChoice:
    return choose_context(None, profile.name, profile.runtime.context,
                          artifact.model.context_length)


def check_threads(threads: int | None) -> None:
    """Refuse a thread count no backend can run, before anything is read: negative counts and
    counts far beyond the machine crashed the native loops and made ONNX Runtime spin up thousands
    of threads. More threads than CPUs never speeds these compute-bound loops up."""
    cpus = os.cpu_count() or 1
    if threads is None or (type(threads) is int and 0 <= threads <= cpus):
        return
    raise ConfigError(
        f"threads {threads!r}: give 1 to {cpus} (this machine's CPUs), or 0 for the profile's"
    )
