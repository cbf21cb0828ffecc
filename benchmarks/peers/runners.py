"""One runner per runtime: load a model, then time first tokens, decode and offline batches.

Each runner takes token ids (never text), so every runtime does exactly the same work, and
ignores EOS. Run one runner per process (`python -m benchmarks.peers.runners NAME ...`) so peak
RSS is its own.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


class Runner:
    name = ""

    def describe(self) -> dict:
        return {}

    def load(self, path: str, threads: int) -> None: ...

    def offline(self, prompts: list[np.ndarray], batch: int, new_tokens: int) -> int:
        """An offline job at a batch setting: static groups of `batch` prompts."""
        return sum(self.generate(prompts[i:i + batch], new_tokens)[1]
                   for i in range(0, len(prompts), batch))

    def generate(self, prompts: list[np.ndarray], new_tokens: int) -> tuple[float, int]:
        """Generate new_tokens for each prompt as one batch; returns (time to first token,
        tokens)."""
        raise NotImplementedError


class Edgeds(Runner):
    name = "edgeds"
    backend: str | None = None  # None: what the machine's profile picks

    def load(self, path, threads):
        import edgeds

        # The cache off: peers run every prompt whole, and rounds repeat the same prompts.
        self.engine = edgeds.load(path, threads=threads, backend=self.backend, prefix_cache=False)
        self.phases = {}

    def describe(self) -> dict:
        # Where each offline job spent its time: prefill calls against decode steps.
        return {"profile": self.engine.profile.name, "backend": self.engine.backend.name,
                "offline_phases": self.phases}

    @staticmethod
    def _requests(prompts, new_tokens):
        from edgeds import generate as gen
        from edgeds.sampling import SamplingParams

        params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
        return [gen.Request(i, p, params) for i, p in enumerate(prompts)]

    def generate(self, prompts, new_tokens, batch_size=None):
        from edgeds import generate as gen

        t0, first, n = time.perf_counter(), None, 0
        for e in self.engine.run(self._requests(prompts, new_tokens), batch_size or len(prompts)):
            if isinstance(e, gen.TokenEvent):
                first = first or time.perf_counter() - t0
                n += 1
        return first, n

    def offline(self, prompts, batch, new_tokens):
        # Continuous batching: a finished slot takes the next prompt at once.
        from edgeds import generate as gen

        stats = gen.StepStats()
        n = sum(len(e.token_ids)
                for e in self.engine.run(self._requests(prompts, new_tokens), batch, stats)
                if isinstance(e, gen.Finished))
        # `slots`: the batch that ran, should the engine's memory limit have lowered it.
        self.phases[batch] = {"slots": self.engine.batch_for(batch),
                              "prefill_s": round(sum(stats.prefill_s), 2),
                              "prefill_calls": len(stats.prefill_s),
                              "decode_s": round(sum(stats.decode_s), 2),
                              "decode_steps": len(stats.decode_s)}
        return n


class EdgedsOnnxRuntime(Edgeds):
    name, backend = "edgeds-onnxruntime", "onnxruntime"


class EdgedsOpenVino(Edgeds):
    name, backend = "edgeds-openvino", "openvino"


class Transformers(Runner):
    name = "transformers-fp32"

    def load(self, path, threads):
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def generate(self, prompts, new_tokens):
        torch = self.torch
        longest = max(len(p) for p in prompts)
        ids = np.zeros((len(prompts), longest), np.int64)
        mask = np.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding
            ids[i, longest - len(p):], mask[i, longest - len(p):] = p, 1
        t0 = time.perf_counter()
        first = []

        class Stamp:
            def put(self, _):
                if len(first) < 2:  # the prompt, then the first new token
                    first.append(time.perf_counter() - t0)

            def end(self):
                pass

        with torch.no_grad():
            out = self.model.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                                      do_sample=False,
                                      max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                      streamer=Stamp() if len(prompts) == 1 else None,
                                      pad_token_id=0)
        ttft = first[-1] if first else None
        return ttft, (out.shape[1] - longest) * len(prompts)


class OpenVinoGenAI(Runner):
    name = "openvino-genai"

    def load(self, path, threads):
        import openvino_genai as og

        self.og = og
        self.pipe = og.LLMPipeline(path, "CPU", INFERENCE_NUM_THREADS=threads)

    def generate(self, prompts, new_tokens):
        import openvino as ov

        og = self.og
        longest = max(len(p) for p in prompts)
        ids = np.zeros((len(prompts), longest), np.int64)
        mask = np.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, longest - len(p):], mask[i, longest - len(p):] = p, 1
        cfg = og.GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                  ignore_eos=True)
        t0, first = time.perf_counter(), []

        def streamer(_):
            if not first:
                first.append(time.perf_counter() - t0)
            return og.StreamingStatus.RUNNING

        out = self.pipe.generate(og.TokenizedInputs(ov.Tensor(ids), ov.Tensor(mask)), cfg,
                                 streamer=streamer if len(prompts) == 1 else None)
        return (first[0] if first else None), sum(len(t) for t in out.tokens)


class OrtGenAI(Runner):
    name = "onnxruntime-genai"

    def load(self, path, threads):
        import onnxruntime_genai as og

        self.og = og
        cfg = og.Config(path)
        cfg.clear_providers()
        self.model = og.Model(cfg)

    def generate(self, prompts, new_tokens):
        og = self.og
        out = 0
        t0, first = time.perf_counter(), None
        longest = max(len(p) for p in prompts)
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=longest + new_tokens, min_length=longest + new_tokens,
                                  batch_size=len(prompts))
        gen = og.Generator(self.model, params)
        pad = np.zeros((len(prompts), longest), np.int32)
        # ort-genai pads on the left itself given a pad id; pad explicitly
        for i, p in enumerate(prompts):
            pad[i, longest - len(p):] = p
        gen.append_tokens(pad)
        while not gen.is_done():
            gen.generate_next_token()
            first = first or time.perf_counter() - t0
            out += len(prompts)
        return first, out


class LlamaCpp(Runner):
    name = "llama.cpp-q8_0"

    def load(self, path, threads):
        from llama_cpp import Llama

        self.llm = Llama(model_path=path, n_threads=threads, n_ctx=2048, n_batch=512, verbose=False)
        self.eos = self.llm.token_eos()

    def generate(self, prompts, new_tokens):
        # llama-cpp-python decodes one sequence at a time: its best batch setting is 1.
        total, first = 0, None
        t0 = time.perf_counter()
        for p in prompts:
            self.llm.reset()
            n = 0
            for tok in self.llm.generate(p.tolist(), temp=0.0, logits_processor=[self._no_eos]):
                first = first or time.perf_counter() - t0
                n += 1
                if n == new_tokens:
                    break
            total += n
        return first, total

    def _no_eos(self, _ids, logits):
        logits[self.eos] = -np.inf
        return logits


RUNNERS = {r.name: r
           for r in (Edgeds, EdgedsOnnxRuntime, EdgedsOpenVino, Transformers, OpenVinoGenAI,
                     OrtGenAI, LlamaCpp)}


def measure(runner: Runner, path: str, threads: int, vocab: int, batches: list[int], jobs: int,
            quick: bool) -> dict:
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    runner.load(path, threads)
    load_s = time.perf_counter() - t0
    runner.generate([rng.integers(10, vocab, 16)], 4)  # warm-up
    ttft, _ = runner.generate([rng.integers(10, vocab, 128)], 1)
    new = 16 if quick else 64
    t0 = time.perf_counter()
    first, n = runner.generate([rng.integers(10, vocab, 128)], new)
    total = time.perf_counter() - t0
    decode = (n - 1) / (total - first) if first else None
    lengths = rng.integers(64, 513, jobs)
    out_tokens = 16 if quick else 128
    throughput, errors = {}, {}
    for b in batches:
        # Fresh tokens at every setting, the same lengths: OpenVINO GenAI ran the same job's
        # third pass in one process at 69.3 tok/s against 51.8 with fresh prompts (cached
        # prompt prefixes, presumably).
        prompts = [rng.integers(10, vocab, n) for n in lengths]
        t0 = time.perf_counter()
        try:
            n = runner.offline(prompts, b, out_tokens)
        # a runtime's own limit (onnxruntime-genai: batch <= 32); the others still count
        except Exception as exc:
            errors[b] = f"{type(exc).__name__}: {exc}"
            continue
        throughput[b] = n / (time.perf_counter() - t0)
    return {"runtime": runner.name, "load_s": load_s, "ttft_s": ttft, "decode_tok_s_batch1": decode,
            "offline_tok_s": throughput, "best_batch": max(throughput, key=throughput.get)
            if throughput else None,
            "offline_errors": errors, "peak_rss_mib": peak_rss_mib(), **runner.describe()}


def peak_rss_mib() -> float:
    """VmHWM, not ru_maxrss: a runner forked from compare.py after it wrote a checkpoint in
    process inherited compare.py's resident size as its ru_maxrss (5.2 GB on the AMX Xeon).
    (edgeds.batch.progress.peak_rss_bytes does the same; peers' runners run in environments
    without edgeds.)"""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


if __name__ == "__main__":
    name, path, threads, vocab, batches, jobs, quick, out = sys.argv[1:9]
    res = measure(RUNNERS[name](), path, int(threads), int(vocab),
                  [int(b) for b in batches.split(",") if b != "none"], int(jobs), quick == "1")
    with open(out, "w") as f:
        json.dump(res, f, indent=2)
    print(json.dumps(res))
