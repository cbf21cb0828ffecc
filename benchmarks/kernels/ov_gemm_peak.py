"""OpenVINO's matmul on INT8-compressed weights alone, beside ONNX Runtime's integer GEMM
(`ort_int8_gemm_peak.py`): the 1.5B MLP shape (K=1536, N=8960) at 1-2048 rows, in TOPS.

    THREADS=16 python -m benchmarks.kernels.ov_gemm_peak

The weights are what the OpenVINO IR of `--weights int8` holds (i8 per output channel, scale
after Convert), so the CPU plugin fuses them into one FullyConnected with decompression. Each
setting is one way the plugin can run it: f32 or bf16 (AMX-BF16 tiles where the CPU has them),
and with activations quantized to int8 at run time (DYNAMIC_QUANTIZATION_GROUP_SIZE, its int8
kernels: VNNI or AMX-INT8). It tells whether a prefill on OpenVINO could outrun the ONNX
Runtime backend's integer GEMM on a machine.
"""
import os
import time

import numpy as np
import openvino as ov
from openvino import opset13 as ops

K, N = 1536, 8960
rng = np.random.default_rng(0)
threads = int(os.environ.get("THREADS", "16"))

a = ops.parameter([-1, K], ov.Type.f32, name="a")
w = ops.constant(rng.integers(-127, 128, (N, K), dtype=np.int8))
scale = ops.constant(np.full((N, 1), 0.01, np.float32))
weights = ops.multiply(ops.convert(w, ov.Type.f32), scale)
model = ov.Model([ops.matmul(a, weights, False, True)], [a], "gemm")

SETTINGS = {
    "f32": {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"},
    "f32 + int8 activations": {"INFERENCE_PRECISION_HINT": "f32",
                               "DYNAMIC_QUANTIZATION_GROUP_SIZE": str(K)},
    "bf16": {"INFERENCE_PRECISION_HINT": "bf16", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"},
    "bf16 + int8 activations": {"INFERENCE_PRECISION_HINT": "bf16",
                                "DYNAMIC_QUANTIZATION_GROUP_SIZE": str(K)},
}
core = ov.Core()
print(f"openvino {ov.__version__}, {threads} threads, "
      f"{core.get_property('CPU', 'FULL_DEVICE_NAME')}")
for name, cfg in SETTINGS.items():
    try:
        compiled = core.compile_model(model, "CPU", {**cfg, "INFERENCE_NUM_THREADS": str(threads),
                                                     "PERFORMANCE_HINT": "LATENCY"})
    except RuntimeError as exc:  # a precision this CPU lacks
        print(f"{name}: not available ({str(exc).splitlines()[0]})")
        continue
    request = compiled.create_infer_request()
    for m in (1, 64, 512, 2048):
        x = rng.standard_normal((m, K)).astype(np.float32)
        for _ in range(3):
            request.infer({"a": x})
        n = 20 if m < 2048 else 5
        t = time.perf_counter()
        for _ in range(n):
            request.infer({"a": x})
        dt = (time.perf_counter() - t) / n
        print(f"{name:24s} M={m:4d}: {dt * 1e3:7.2f} ms, {2 * m * K * N / dt / 1e12:.2f} TOPS")
