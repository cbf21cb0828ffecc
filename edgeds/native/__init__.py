"""The native decoder library (`decoder.c`, dense models; `mla_moe.c`, DeepSeek-V2/V3): built
from source with the system C compiler on first use and kept in the edgeds cache folder, keyed by
the source's hash; loaded with ctypes.

It needs an x86-64 CPU with AVX-512 VNNI (AMX is used where the kernel grants it) or AVX2 with
FMA and F16C (the same kernels, each 512-bit vector as two 256-bit halves: avx512_on_avx2.h;
the int8 products and the attention loops in 256-bit code of their own: int8_avx2.h,
decode_avx2.h, flash_prefill_avx2.h),
and a C compiler (gcc or clang with OpenMP) the first time. Where either is missing, or the
build fails, `unavailable()` says why and the runtime goes on to ONNX Runtime."""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

from ..checksum_stamps import cache_folder

HERE = Path(__file__).resolve().parent
SOURCES = (HERE / "decoder.c", HERE / "mla_moe.c", HERE / "int8_gemm.h", HERE / "flash_prefill.h",
           HERE / "lane_sums.h", HERE / "simd.h", HERE / "avx512_on_avx2.h", HERE / "decode_avx2.h",
           HERE / "int8_avx2.h", HERE / "flash_prefill_avx2.h", HERE / "latent_tiles.h",
           HERE / "tile_emulation.h")
C_FILES = [p for p in SOURCES if p.suffix == ".c"]
# Compiled with -ffast-math but linked without it: at link time gcc would add crtfastmath.o, whose
# constructor turns on flush-to-zero for the whole process (numpy's and ONNX Runtime's arithmetic
# too) the moment the library is loaded. Without -fassociative-math: with it gcc regrouped the
# GEMM epilogue's products differently for the first row of a 4-row block than for the others, so
# a row's logits depended on where its batch put it (intrinsics are plain float arithmetic to gcc).
# gcc >= 11, clang >= 12; without them the library is VNNI only (no AMX tiles) and its prompt
# attention takes float32 FMAs (no vdpbf16ps): both are chosen at run time where built in.
NEWER_ISA = ["-mamx-tile", "-mamx-int8", "-mamx-bf16", "-mavx512bf16"]
COMPILE = ["-O3", "-ffast-math", "-fno-associative-math", "-fopenmp", "-fPIC"]
LINK = ["-shared", "-fopenmp"]
# The library's builds, best first: the CPU flags each needs and its instruction-set options.
BUILDS = {
    "avx512": (("avx512f", "avx512bw", "avx512_vnni"),
               ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512vnni", "-mfma",
                "-mf16c", *NEWER_ISA]),
    "avx2": (("avx2", "fma", "f16c"), ["-mavx2", "-mfma", "-mf16c"]),
}
# Builds the suite asks for by name, never chosen for a CPU: the AVX-512 build with the AMX-BF16
# tile instructions done in plain C (tile_emulation.h), so that the tile kernels' layouts are
# checked on CPUs without AMX.
TEST_BUILDS = {
    "avx512-emulated-tiles": (BUILDS["avx512"][0],
                              [f for f in BUILDS["avx512"][1] if f not in NEWER_ISA]
                              + ["-DEDGEDS_EMULATE_TILES"]),
}
# EDGEDS_NATIVE_SANITIZE=address,undefined builds the library with those sanitizers, for the
# test suite (tests/test_native_sanitized.py); a Python host must preload the ASan runtime
# (LD_PRELOAD=$(gcc -print-file-name=libasan.so)), as python itself is not built with it.
SANITIZE = os.environ.get("EDGEDS_NATIVE_SANITIZE")
if SANITIZE:
    # -O1, as the sanitizers' documentation advises: at -O3 gcc took about 2.5 minutes a file to
    # instrument the AVX2 build's inlined vector halves (10 s at -O1).
    COMPILE = ["-O1", *COMPILE[1:], "-g", "-fno-omit-frame-pointer", f"-fsanitize={SANITIZE}",
               "-fno-sanitize-recover=all"]
    LINK += [f"-fsanitize={SANITIZE}"]


class NativeUnavailable(RuntimeError):
    pass


def compiler() -> str | None:
    return (os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
            or shutil.which("clang"))


def unavailable(cpu_flags: frozenset[str] | set[str]) -> str | None:
    """Why the native decoder cannot run here, or None. Builds the library if it is not built
    yet (about a second), so that a compiler or cache folder that fails says so here, where the
    runtime can still pick another backend, and not in the middle of loading."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return f"native decoder: x86-64 only (this is {platform.machine()})"
    if (build := build_for(cpu_flags)) is None:
        missing = [f for f in BUILDS["avx2"][0] if f not in cpu_flags]
        return f"native decoder: this CPU lacks {', '.join(missing)}"
    try:
        library(build)
    except NativeUnavailable as exc:
        return str(exc)
    return None


def build_for(cpu_flags: frozenset[str] | set[str]) -> str | None:
    """The best of BUILDS that a CPU with these flags runs, or None."""
    return next((name for name, (needs, _) in BUILDS.items()
                 if all(f in cpu_flags for f in needs)), None)


@cache
def this_cpus_build() -> str:
    from ..hardware import detect

    flags = detect().flags
    if (build := build_for(flags)) is None:  # a backend made directly, past unavailable()
        raise NativeUnavailable(unavailable(flags))
    return build


def _isa(build: str) -> list[str]:
    return (BUILDS.get(build) or TEST_BUILDS[build])[1]


def _library_path(build: str) -> Path:
    flags = COMPILE + _isa(build) + ["|"] + LINK
    key = b"".join(p.read_bytes() for p in SOURCES) + " ".join(flags).encode()
    digest = hashlib.sha256(key).hexdigest()[:16]
    root = cache_folder() or Path(tempfile.gettempdir()) / "edgeds"
    return root / "native" / f"decoder-{build}-{digest}.so"


def _build(target: Path, build: str) -> None:
    cc = compiler()
    if cc is None:
        raise NativeUnavailable(
            "native decoder: no C compiler to build it with (set CC, or install gcc)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Built beside the target and renamed: processes starting together never load half a file.
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise NativeUnavailable(f"native decoder: cannot write its build to {target.parent} "
                                f"({exc.strerror})") from exc
    objs = [f"{tmp[:-3]}.{source.stem}.o" for source in C_FILES]

    def run(step: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([*shlex.split(cc), *step], capture_output=True, text=True)

    isa = _isa(build)
    try:
        for source, obj in zip(C_FILES, objs):
            result = run([*COMPILE, *isa, "-c", "-o", obj, str(source)])
            if result.returncode != 0 and any(f in isa for f in NEWER_ISA):
                # an older compiler without AMX: the VNNI kernels alone
                older = [f for f in isa if f not in NEWER_ISA]
                result = run([*COMPILE, *older, "-c", "-o", obj, str(source)])
            if result.returncode != 0:
                break
        if result.returncode == 0:
            result = run([*LINK, "-o", tmp, *objs, "-lm"])
        if result.returncode != 0:
            raise NativeUnavailable(
                f"native decoder: {cc} failed to build it: {result.stderr.strip()[-400:]}")
        os.replace(tmp, target)
    except OSError as exc:  # a CC that cannot be run
        raise NativeUnavailable(f"native decoder: cannot run {cc} ({exc.strerror})") from exc
    finally:
        for leftover in (*objs, tmp):
            if os.path.exists(leftover):
                os.unlink(leftover)


# libgomp's idle threads spin about 300,000 rounds (milliseconds) before they sleep: on a busy
# CPU they take the cores that the threads with work need. 10,000 rounds still span the gaps
# between a decode step's parallel loops. Not OMP_WAIT_POLICY=PASSIVE: waking sleeping threads at
# every loop costs batch-1 decode about half its speed on 16 cores (benchmarks/results/
# long-context.md). Read by libgomp when the library first loads it; a user's OMP_WAIT_POLICY or
# GOMP_SPINCOUNT wins.
SPIN_ROUNDS = "10000"


@cache
def library(build: str | None = None) -> ctypes.CDLL:
    """The library for `build` (of BUILDS; default: the best this CPU runs), built if need be."""
    build = build or this_cpus_build()
    path = _library_path(build)
    if not path.is_file():
        _build(path, build)
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", SPIN_ROUNDS)
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise NativeUnavailable(f"native decoder: cannot load {path.name} ({exc})") from exc
    p, i, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    lib.ed_new.restype = p
    lib.ed_new.argtypes = [i, i, i, i, i, i, i, f, i, i]
    lib.ed_set_linear.argtypes = [p, i, i, p, p, p, i, i]
    lib.ed_set_norms.argtypes = [p, i, p, p]
    lib.ed_set_embedding.argtypes = [p, p, p, p]
    lib.ed_set_embedding_f16.argtypes = [p, p]
    lib.ed_set_activations.argtypes = [p, i]
    lib.ed_set_rope.argtypes = [p, p, p, i]
    for setter in (lib.ed_set_linear, lib.ed_set_norms, lib.ed_set_embedding, lib.ed_set_rope,
                   lib.ed_set_embedding_f16, lib.ed_set_activations):
        setter.restype = i
    lib.ed_uses_amx.argtypes = [p]
    lib.ed_free.argtypes = [p]
    lib.ed_forward.argtypes = [p, i, p, p, p, i, p, p, i, p, p, i, i, i, i, p]
    lib.ed_prompt_bf16.argtypes = [p, i]
    lib.ed_prompt_tile.argtypes = [p, p, p, i, i, i, i, i, i, p]
    lib.ed_decode_tile.argtypes = [p, p, p, i, i, i, i, i, i, p]
    lib.ed_int8_gemm.argtypes = [p, i, p, p, i, i, p]
    lib.em_new.restype = p
    lib.em_new.argtypes = [p, f, f, f, i, i]
    lib.em_uses_amx.argtypes = [p]
    lib.em_set_activations.argtypes = [p, i]
    lib.em_set_plane_sites.argtypes = [p, i]
    lib.em_set_embedding_f16.argtypes = [p, p]
    lib.em_set_cache_half.argtypes = [p, i]
    lib.em_keep_decompressed.argtypes = [p, i, i, i, i]
    lib.em_keep_decompressed.restype = i
    lib.em_drop_decompressed.argtypes = [p]
    lib.em_kept_bytes.argtypes = [p, i, i]
    lib.em_kept_bytes.restype = ctypes.c_size_t
    lib.em_set_prompt_tiles.argtypes = [p, i]
    lib.em_set_prompt_tiles.restype = i
    lib.em_set_decode_kernel.argtypes = [p, i]
    lib.em_set_decode_kernel.restype = i
    lib.em_profile.argtypes = [p, p, i]
    lib.em_set_linear.argtypes = [p, i, i, p, p, i, i]
    lib.em_set_expert.argtypes = [p, i, i, i, p, p, i, i]
    lib.em_set_expert_blocked.argtypes = [p, i, i, i, p, p, p, i, i, i]
    lib.em_set_linear_blocked.argtypes = [p, i, i, p, p, p, i, i, i]
    lib.em_set_router.argtypes = [p, i, p, p]
    lib.em_set_absorb.argtypes = [p, i, p, p, p, p]
    lib.em_set_norms.argtypes = [p, i, p, p, p, p]
    lib.em_set_embedding.argtypes = [p, p, p, p]
    lib.em_set_rope.argtypes = [p, p, p, i]
    lib.em_free.argtypes = [p]
    lib.em_forward.argtypes = [p, i, p, p, p, i, p, p, i, i, i, p]
    lib.em_forward_layers.argtypes = [p, i, p, p, p, i, p, p, i, i, i, p, i, i, p]
    return lib
