"""What ONNX Runtime would run an artifact with here: the profile's providers, less those this
onnxruntime lacks or the artifact cannot run on (and why), the advice of a better export for this
machine, and whether the small-batch graph loads. The registry's entry asks it (`plan`); nothing
here loads a session."""

from __future__ import annotations

from ...artifact import Artifact
from ...errors import ConfigError
from ...hardware import Hardware
from ...manifest import Graph
from ...profiles import Profile
from ...selection import Choice
from .sessions import PARALLEL_LOAD_MIN_ORT, loads_in_parts


def ort_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


GPU_EXPORT = "--weights int8-wo (or int4) --kv-cache float16"


def _onnx_graph(artifact: Artifact | None) -> Graph | None:
    """The manifest's entry for the artifact's ONNX graph, if it has one."""
    return artifact.graph("onnx") if artifact is not None and "onnx" in artifact.formats else None


def cpu_only(artifact: Artifact | None) -> str | None:
    """Why an artifact's ONNX graph runs on ONNX Runtime's CPU provider only, if it does, and
    which export would run on the GPU.

    The int8 export quantizes activations per row at run time (QuantizeLinear with a scale per
    row) and the int8 KV cache needs GroupQueryAttention's quantized cache: the CUDA provider
    fails the first ("Unsupported quantization type", ONNX Runtime 1.31 on an H200) and
    TensorRT takes neither. int8-wo, int4 and float exports run their matmuls on the GPU."""
    if (graph := _onnx_graph(artifact)) is None:
        return None
    for_gpu = f"export {GPU_EXPORT} for the GPU"
    if artifact.manifest.quantization.dynamic_int8:
        return ("its int8 matmuls quantize activations per row, which only the CPU provider runs "
                f"({for_gpu})")
    if graph.kv_cache.dtype == "int8":
        return f"its int8 KV cache runs on the CPU provider only ({for_gpu})"
    return None


def _dense_float32_cache(artifact: Artifact | None) -> bool:
    """An ONNX graph with per-head GroupQueryAttention over a float32 cache (MLA graphs keep
    their latent cache in float32: see export/api.py)."""
    if (graph := _onnx_graph(artifact)) is None:
        return False
    return graph.kv_cache.kind == "shared_buffer" and graph.kv_cache.dtype == "float32"


def float16_cache_hint(hw: Hardware, artifact: Artifact | None) -> str | None:
    """CPUs with float16 arithmetic run a float16 cache's attention faster: on a 16-core AMX
    Xeon the 64-prompt job's decode took 13.6-16.1 s against 21.4-23.3 s with float32
    (benchmarks/results/xeon-amx-16t.md); on CPUs without it, it costs time."""
    if "avx512_fp16" in hw.flags and _dense_float32_cache(artifact):
        return ("this CPU has AVX512-FP16: an export with --kv-cache float16 decodes faster here, "
                "in half the cache memory")
    return None


def attention_on_host(artifact: Artifact | None) -> str | None:
    """Why a GPU provider would leave the attention of an artifact's ONNX graph to the CPU.

    GroupQueryAttention's GPU kernels take float16 only: in a float32-cache graph it runs on
    the CPU provider with copies to and from the device in every layer
    (benchmarks/results/cuda-h200.md)."""
    if _dense_float32_cache(artifact):
        return ("attention stays on the CPU beside the GPU (its GPU kernels take float16): "
                f"export {GPU_EXPORT} for the GPU")
    return None


def plan(profile: Profile, hw: Hardware, artifact: Artifact | None, device: str | None,
         n_threads: int, reasons: list[str]) -> Choice:
    """ONNX Runtime's providers for this artifact here (the profile's, less those this
    onnxruntime lacks or the artifact cannot run on), and whether its small-batch graph loads."""
    advice: list[str] = []
    available = ort_providers()
    wanted = [device] if device else list(profile.onnxruntime.providers)
    if (why := cpu_only(artifact)) and wanted != ["CPUExecutionProvider"]:
        if device:
            raise ConfigError(f"this artifact cannot run on {device}: {why}")
        wanted = ["CPUExecutionProvider"]
        advice.append(f"GPU providers skipped: {why}")
    usable = [p for p in wanted if p in available]
    missing = [p for p in wanted if p not in available]
    if missing and (not profile.runtime.allow_fallback or not usable):
        raise ConfigError(
            f"profile {profile.name} needs {', '.join(missing)}, which this onnxruntime lacks "
            f"(it has {', '.join(available)}); install the matching onnxruntime build "
            "or pass --profile/--device"
        )
    if missing:
        reasons.append(f"providers {', '.join(missing)} not available: falling back")
    if usable[0] != "CPUExecutionProvider" and (why := attention_on_host(artifact)):
        advice.append(why)
    elif usable[0] == "CPUExecutionProvider" and (hint := float16_cache_hint(hw, artifact)):
        advice.append(hint)
    reasons += advice
    reasons.append(f"backend onnxruntime: providers {', '.join(usable)}, {n_threads} threads")
    if (graph := _onnx_graph(artifact)) and (parts := graph.parts):
        reasons.append(
            f"graph: {len(parts)} parts, created in parallel"
            if loads_in_parts(graph, usable[0])
            else f"graph: whole (its {len(parts)} parts load in parallel on the CPU provider with "
            f"onnxruntime >= {'.'.join(map(str, PARALLEL_LOAD_MIN_ORT))})"
        )
    small_batch_max = 0
    if graph and graph.small_batch:
        ort_settings = profile.onnxruntime
        limit, key = (
            (ort_settings.small_batch_max_moe, "small_batch_max_moe")
            if artifact.model.has_experts
            else (ort_settings.small_batch_max, "small_batch_max")
        )
        if usable[0] != "CPUExecutionProvider":
            reasons.append("small-batch graph: not used on GPU providers")
        elif not limit:
            reasons.append(f"small-batch graph: not used by profile {profile.name} ({key} = 0)")
        else:
            small_batch_max = limit
            reasons.append(
                f"small-batch graph: decode steps of <= {small_batch_max} sequences run it "
                "(loaded when the first such batch starts)"
            )
    return Choice("onnxruntime", usable, n_threads, reasons, advice, small_batch_max)
