"""Sessions and providers: the options a session is created with, a graph's sessions (its parts
on parallel threads, or the whole), and the checks of what they declare against the manifest."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import onnxruntime as ort

from ...artifact import Artifact
from ...errors import ArtifactError
from ...manifest import Graph, KvLayout

# GroupQueryAttention's int8 cache on the CPU: verified on ONNX Runtime 1.30 and 1.32.
INT8_CACHE_MIN_ORT = (1, 30)
# Graph parts pay from here: ONNX Runtime 1.32 creates sessions on parallel threads, 1.30 held
# the GIL while creating one (benchmarks/results/xeon-amx-16t.md, session 7).
PARALLEL_LOAD_MIN_ORT = (1, 32)
# Providers whose attention reads the cache from device memory, and ORT's name for it.
DEVICE_MEMORY = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda"}


def provider_name(provider) -> str:
    return provider[0] if isinstance(provider, tuple) else provider


def ort_version() -> tuple[int, int]:
    return tuple(int(p) for p in ort.__version__.split(".")[:2])


def loads_in_parts(graph: Graph, provider) -> bool:
    """Whether the backend loads this graph's parts (export/graph_parts.py) instead of the whole
    graph: on the CPU provider, with an ONNX Runtime that creates them in parallel."""
    return (bool(graph.parts) and provider_name(provider) == "CPUExecutionProvider"
            and ort_version() >= PARALLEL_LOAD_MIN_ORT)


@cache
def saturates_int8() -> bool:
    """Whether ONNX Runtime's int8 GEMM (uint8 activations x int8 weights) saturates here: on x86
    CPUs without VNNI it sums pairs of products in 16 bits (vpmaddubsw), and on the tiny test
    models that put greedy agreement with transformers at 44% and the logits 10-30% off."""
    from ...hardware import detect

    flags = detect().flags
    return "avx2" in flags and not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}


def session_options(threads: int | None, config: dict | None, profile_prefix: str | None,
                    part: bool, integer_gemm: bool = True) -> ort.SessionOptions:
    """integer_gemm: the graph multiplies int8 weights in integers (every graph but a TensorRT
    target's, whose int8 weights are dequantized into float MatMuls)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if integer_gemm and saturates_int8():  # the weights become uint8 at load: exact products
        opts.add_session_config_entry("session.x64quantprecision", "1")
    # ORT's CPU arena keeps the largest prefill's activations for the rest of a job (~260 MB
    # after 512-row prefill calls of the 1.5B); without it they are freed after each call,
    # and decode steps ran no slower (benchmarks/results/before-after.md).
    opts.enable_cpu_mem_arena = False
    # Memory patterns are kept per input shape; in the int8-cache graph's If branches they
    # add up over the prompt shapes of a job (+1.7 GB over 64 mixed prompts, measured).
    opts.enable_mem_pattern = False
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    for key, value in (config or {}).items():
        opts.add_session_config_entry(key, str(value))
    if profile_prefix:  # ORT's per-node timings (benchmarks/op_profile.py)
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    if part:
        # A part's threads would otherwise spin on after its run, taking the cores from the
        # next part's (batch-1 decode at half speed on two cores, measured).
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    return opts


def _load_sessions(files: list[str], opts: list[ort.SessionOptions], providers: list,
                   threads: int | None, first: tuple[int, ...] = ()) -> list[ort.InferenceSession]:
    """One session per file; several are created on parallel threads, as many as the run may
    use (ONNX Runtime 1.32 releases the GIL while it creates one; 1.30 did not). The files at
    indices `first` start before the others (the longest to create: so that no thread is left
    alone with one of them at the end)."""
    def create(i: int) -> ort.InferenceSession:
        return ort.InferenceSession(files[i], opts[i], providers=providers)

    if len(files) == 1:
        return [create(0)]
    with ThreadPoolExecutor(min(len(files), threads or os.cpu_count() or 1)) as pool:
        order = sorted(range(len(files)), key=lambda i: i not in first)
        started = {i: pool.submit(create, i) for i in order}
        return [started[i].result() for i in range(len(files))]


def _check_chain(io: list[tuple[set, set]], root) -> list[str]:
    """The tensors sessions hand on; refuses parts that do not chain into one decoder (each input
    of a later part written by an earlier one, the logits by the last)."""
    produced = set().union(*(outs for _, outs in io))
    written: set[str] = set()
    for ins, outs in io:
        if (ins & produced) - written:  # reads what only a later part writes
            raise ArtifactError(f"{root}: its graph parts do not chain in the manifest's order")
        written |= outs
    if "logits" not in io[-1][1]:
        raise ArtifactError(f"{root}: its last graph part does not produce the logits")
    return sorted(produced & set().union(*(ins for ins, _ in io)))


def _check_widths(sessions, carried: list[str], layout: KvLayout, model, root) -> None:
    """The widths the graph itself declares against the manifest's, whose numbers size the
    buffers bound to it: a manifest edited to other widths is refused here, by name."""
    want = {"logits": (-1, model.vocab_size, "vocab_size")}
    want |= {name: (-1, model.hidden_size, "hidden_size") for name in carried}
    for s in sessions:
        for arg in [*s.get_inputs(), *s.get_outputs()]:
            checks = [want[arg.name]] if arg.name in want else []
            if arg.name.startswith(("past_", "present_")) and len(arg.shape) == 4:
                checks = [(1, layout.heads, "cache heads"), (3, layout.head_dim, "cache width")]
            for axis, size, what in checks:
                dim = arg.shape[axis]
                if isinstance(dim, int) and dim != size:
                    raise ArtifactError(
                        f"{root}: its ONNX graph's {arg.name} is {dim} wide on axis "
                        f"{axis % len(arg.shape)}, the manifest's {what} says {size}")


class Sessions:
    """The sessions of one graph (its parts, or the whole), run in turn, and the names each reads
    and writes."""

    def __init__(self, sessions: list[ort.InferenceSession], root):
        self.sessions = sessions
        self.io = [({i.name for i in s.get_inputs()}, {o.name for o in s.get_outputs()})
                   for s in sessions]
        # Residual-stream tensors one part hands to the next: [batch, sequence, hidden] float32.
        self.carried = _check_chain(self.io, root)


def _graph_files(graph, provider) -> list[str]:
    """A manifest.Graph's or SmallBatchGraph's files to load: its parts, or the whole."""
    return [part.file for part in graph.parts] if loads_in_parts(graph, provider) else [graph.file]


def load_graph(artifact: Artifact, graph, layout: KvLayout, providers: list, threads: int | None,
               config: dict | None, profile_prefix: str | None, in_turn: bool) -> Sessions:
    """One graph's sessions, its parts on parallel threads where it has them, checked against
    the manifest. `in_turn`: another graph's sessions run between this one's runs."""
    files = _graph_files(graph, providers[0])
    # One options object per session: profiles are named by prefix and creation time, and
    # sessions created at once would write over each other's. Sessions run in turn (parts,
    # or two graphs) stop their threads' spinning after each run.
    in_turn = in_turn or len(files) > 1
    integer_gemm = getattr(graph, "tensorrt", None) is None
    opts = [session_options(threads, config, profile_prefix and f"{profile_prefix}.{Path(f).stem}",
                            in_turn, integer_gemm) for f in files]
    # The last part holds the LM head, the graph's largest weight: it starts first.
    sessions = _load_sessions([str(artifact.path(f)) for f in files], opts, providers, threads,
                              (len(files) - 1,))
    loaded = Sessions(sessions, artifact.root)
    _check_widths(sessions, loaded.carried, layout, artifact.model, artifact.root)
    return loaded
