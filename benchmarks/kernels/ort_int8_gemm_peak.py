"""ONNX Runtime's integer GEMM alone: MatMulIntegerToFloat (u8 activations x s8 weights, the op
of `--weights int8`) on the 1.5B MLP shape (K=1536, N=8960) at 1-2048 rows, in TOPS.

    THREADS=16 python -m benchmarks.kernels.ort_int8_gemm_peak

Compare with the CPU's own peak (`benchmarks/kernels/int8_peak.c` for AVX-512 VNNI): it tells
whether a slow prefill is the kernel's ceiling or the graph around it.
"""
import ctypes
import os
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import helper, numpy_helper


def amx_granted() -> bool:
    """Whether the process holds Linux's AMX tile-data permission (XFEATURE 18), which MLAS asks
    for when it picks its AMX kernels (`without_amx.c` refuses it)."""
    mask = ctypes.c_uint64()
    # arch_prctl(ARCH_GET_XCOMP_PERM)
    if ctypes.CDLL(None).syscall(158, 0x1022, ctypes.byref(mask)) != 0:
        return False
    return bool(mask.value & (1 << 18))


K, N = 1536, 8960
rng = np.random.default_rng(0)
W = rng.integers(-127, 128, (K, N), dtype=np.int8)
sc = np.full(N, 0.01, np.float32)
node = helper.make_node("MatMulIntegerToFloat", ["a", "w", "as", "ws", "azp"], ["y"],
                        domain="com.microsoft")
g = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", T.UINT8, ["m", K])],
                      [helper.make_tensor_value_info("y", T.FLOAT, None)],
                      initializer=[numpy_helper.from_array(W, "w"),
                                   numpy_helper.from_array(np.array(1.0, np.float32), "as"),
                                   numpy_helper.from_array(sc, "ws"),
                                   numpy_helper.from_array(np.array(128, np.uint8), "azp")])
m = helper.make_model(g,
                      opset_imports=[helper.make_opsetid("", 21),
                                     helper.make_opsetid("com.microsoft", 1)], ir_version=10)
for thr in (int(os.environ.get("THREADS", "16")),):
    so = ort.SessionOptions(); so.intra_op_num_threads = thr
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    print(f"AMX tile data granted to this process: {amx_granted()}")
    for M in (1, 64, 512, 2048):
        a = rng.integers(0, 256, (M, K), dtype=np.uint8)
        for _ in range(3): s.run(None, {"a": a})
        n = 20 if M < 2048 else 5
        t = time.perf_counter()
        for _ in range(n): s.run(None, {"a": a})
        dt = (time.perf_counter() - t) / n
        print(f"{ort.__version__} threads {thr} M={M}: {dt*1e3:.2f} ms, {2*M*K*N/dt/1e12:.2f} TOPS")
