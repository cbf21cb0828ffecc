"""`edgeds doctor`: what this machine is, what edgeds would run here, and whether a model fits."""

from __future__ import annotations

from . import checksum_stamps, prefix_cache
from .artifact import load_artifact
from .backends import registry
from .backends.registry import installed_backends
from .context import choose_context
from .errors import UserError
from .hardware import detect
from .memory_budget import kv_budget, largest_batch, weight_bytes, weights_do_not_fit
from .profiles import choose_profile, load_profiles
from .selection import choose_backend


def diagnose(artifact: str | None = None, profile: str | None = None, backend: str | None = None,
             context: int | None = None) -> dict:
    from .backends.onnxruntime.plan import ort_providers

    hw = detect()
    report: dict = {"hardware": hw.describe(), "backends": installed_backends(),
                    "onnxruntime_providers": ort_providers()}
    prof, reasons = choose_profile(hw, load_profiles(), profile)
    report["profile"] = {"name": prof.name, "description": prof.description,
                         "batch_size": prof.runtime.batch_size, "context": prof.runtime.context}
    art = load_artifact(artifact, verify=False) if artifact else None
    choice = None
    try:
        choice = choose_backend(prof, hw, art, backend)
        report["choice"] = {
            "backend": choice.backend,
            "providers": choice.providers,
            "threads": choice.threads,
        }
        reasons += choice.reasons
    except UserError as exc:
        report["choice"] = {"error": str(exc)}
    report["reasons"] = reasons
    if choice is not None:
        entry = registry.get(choice.backend)
        why = prefix_cache.unsupported(entry.backend_class(art), art, choice.providers)
        report["prefix_cache"] = why or "yes: whole blocks of shared prompt prefixes are reused"
        if art is not None and (note := quality_note(art.manifest.quantization, choice.backend)):
            report["quality"] = note
    stamps = checksum_stamps.stamp_folder()
    report["checksum_stamps"] = str(stamps) if stamps else None
    if art is not None:
        tok = art.manifest.tokenizer
        report["tokenizer"] = (
            f"{tok.compact}: read as arrays" if tok.compact else
            f"{tok.file}: parsed by tokenizers at every load (an export by this edgeds adds "
            "the compact form, read without that parse)")
        fmt = choice.artifact_format if choice else "onnx"
        fmt = fmt if fmt in art.formats else art.formats[0]
        weights = weight_bytes(
            art.manifest, fmt, small_batch=bool(choice and choice.small_batch_max)
        )
        layout = art.manifest.kv_layout(fmt)
        per_token = layout.bytes_per_token
        window = choose_context(context, prof.name, prof.runtime.context,
                                art.model.context_length)
        batch, context = prof.runtime.batch_size, window.tokens
        report["context"] = {"tokens": window.tokens, "source": window.source,
                             "artifact_limit": art.model.context_length}
        need = weights + per_token * batch * context
        free_for_kv = kv_budget(hw.memory_bytes, weights)
        report["memory"] = {
            "weights_mib": round(weights / 2**20, 1),
            "kv_cache_mib_at_profile": round(per_token * batch * context / 2**20, 1),
            "kv_cache_dtype": layout.dtype,
            "total_mib_at_profile": round(need / 2**20, 1),
            "machine_mib": round(hw.memory_bytes / 2**20, 1),
            "fits": per_token * batch * context < free_for_kv,
            "max_tokens_in_cache": max(int(free_for_kv // per_token), 0),
            "largest_batch_at_context": largest_batch(hw.memory_bytes, weights, per_token, context),
            "largest_context_at_batch": min(max(int(free_for_kv // (per_token * batch)), 0),
                                            art.model.context_length),
            "refused": weights_do_not_fit(hw.memory_bytes, weights, per_token, context,
                                          art.manifest.quantization.weights),
        }
    return report


# Where int8's quality target (+0.1% perplexity, >= 98.5% top-1 against fp32, issue 22) is met,
# and at what speed: benchmarks/results/quality-targets.md. What each backend's rounding is, and
# the export setting that meets the target where the artifact's does not.
QUALITY_RESULTS = "benchmarks/results/quality-targets.md"


def quality_note(quantization, backend: str) -> str | None:
    """A line on how `backend` rounds this artifact's matmul inputs, and the export options of
    int8's quality setting where the artifact was exported without them; None where nothing is
    to be said (float weights, int4, OpenVINO's own choice)."""
    weights, activations = quantization.weights, quantization.activations
    float16_table = quantization.embedding == "float16"
    if weights == "int8" and backend == "native":
        if activations == "int16 per row":
            return ("matmul inputs as two int8 planes (--activations int16)"
                    + ("" if float16_table else "; --embedding float16 adds the table's margin")
                    + f" ({QUALITY_RESULTS})")
        return ("matmul inputs rounded to int8 per row: for int8's quality target re-export with "
                f"--activations int16 --embedding float16 (prefill slower; {QUALITY_RESULTS})")
    if weights in ("int8", "int8-wo") and backend == "onnxruntime" and activations != "float":
        return ("ONNX Runtime rounds matmul inputs to int8: for int8's quality target export "
                f"--weights int8-wo --activations float --embedding float16 ({QUALITY_RESULTS})")
    return None


def format_report(r: dict) -> str:
    hw = r["hardware"]
    lines = [
        f"hardware: {hw['cpu']} ({hw['arch']}), {hw['physical_cores']} cores, "
        f"{hw['memory_gib']} GiB",
        f"  ISA: {', '.join(hw['isa']) or 'none of note'}"
        + (f"; Jetson: {hw['jetson']}" if hw["jetson"] else ""),
        "backends: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in r["backends"].items()),
        f"  onnxruntime providers: {', '.join(r['onnxruntime_providers']) or '-'}",
        f"profile: {r['profile']['name']} ({r['profile']['description']})",
        "choice: " + ", ".join(f"{k}={v}" for k, v in r["choice"].items()),
        "why:",
        *[f"  {x}" for x in r["reasons"]],
        *([f"prefix cache: {r['prefix_cache']}"] if "prefix_cache" in r else []),
        *([f"quality: {r['quality']}"] if "quality" in r else []),
        *([f"tokenizer: {r['tokenizer']}"] if "tokenizer" in r else []),
        (
            "checksums: a file is hashed at load until it matches, then stamped in "
            f"{r['checksum_stamps']} (EDGEDS_VERIFY=always hashes at every load)"
            if r["checksum_stamps"]
            else "checksums: every file hashed at every load"
        ),
    ]
    if "context" in r:
        c = r["context"]
        lines.append(f"context: {c['tokens']} tokens ({c['source']})")
    if "memory" in r:
        m = r["memory"]
        lines += [
            f"memory: weights {m['weights_mib']} MiB + {m['kv_cache_dtype']} KV cache "
            f"{m['kv_cache_mib_at_profile']} MiB (profile batch x context) = "
            f"{m['total_mib_at_profile']} MiB of {m['machine_mib']} MiB: "
            + ("fits" if m["fits"] else "DOES NOT FIT"),
            f"  largest batch at that context: {m['largest_batch_at_context']}; "
            f"largest context at that batch: {m['largest_context_at_batch']}",
        ]
        if m["refused"]:
            lines.append(f"  edgeds load refuses it: {m['refused']}")
    return "\n".join(lines)
