"""ONNX Runtime's int8 weight kernels on one matmul shape (K=1536, N=8960: the 1.5B MLP).

    python benchmarks/ort_int8_kernels.py           # one matmul, weights in cache
    python benchmarks/ort_int8_kernels.py --chain   # 48 of them (1.3 GB of weights): memory-bound like a model

MatMulNBits (8-bit, block 128) at accuracy levels 0 and 4, and DynamicQuantizeMatMul
(per-column int8 weights, activations quantized per tensor), at M = 1, 8, 32, 128 rows, 2 threads.
The weights fit in cache here, so M=1 figures are not memory-bound as in a whole model.
"""

from __future__ import annotations

import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

K, N, THREADS = 1536, 8960, 2
rng = np.random.default_rng(0)


def session(node, inits) -> ort.InferenceSession:
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, N])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)],
                          ir_version=10)
    o = ort.SessionOptions()
    o.intra_op_num_threads = THREADS
    return ort.InferenceSession(m.SerializeToString(), o, providers=["CPUExecutionProvider"])


def matmulnbits(level: int, block: int = 128) -> ort.InferenceSession:
    b = rng.integers(0, 255, (N, K // block, block)).astype(np.uint8)
    s = np.full(N * K // block, 0.01, np.float32)
    node = helper.make_node("MatMulNBits", ["x", "B", "S"], ["y"], domain="com.microsoft", K=K, N=N, bits=8,
                            block_size=block, accuracy_level=level)
    return session(node, [onnx.numpy_helper.from_array(b, "B"), onnx.numpy_helper.from_array(s, "S")])


def dynamic_quantize_matmul() -> ort.InferenceSession:
    b = rng.integers(-127, 128, (K, N)).astype(np.int8)
    node = helper.make_node("DynamicQuantizeMatMul", ["x", "B", "S"], ["y"], domain="com.microsoft")
    return session(node, [onnx.numpy_helper.from_array(b, "B"),
                          onnx.numpy_helper.from_array(np.full(N, 0.01, np.float32), "S")])


def timed(s: ort.InferenceSession, m: int, runs: int) -> float:
    x = rng.standard_normal((m, K)).astype(np.float32)
    for _ in range(2):
        s.run(None, {"x": x})
    t0 = time.perf_counter()
    for _ in range(runs):
        s.run(None, {"x": x})
    return (time.perf_counter() - t0) / runs


def chain(kind: str, layers: int = 24) -> ort.InferenceSession:
    """`layers` x (K->N, N->K) matmuls with their own weights, as the exporter writes them:
    "nbits" = MatMulNBits 8-bit block 128 accuracy 4 (int8-wo), "rows" = per-row uint8
    activations x per-channel int8 weights through MatMulInteger (int8)."""
    nodes, inits, x = [], [], "x"
    shared = [onnx.numpy_helper.from_array(np.array([-1], np.int64), "axis"),
              onnx.numpy_helper.from_array(np.array(1 / 127, np.float32), "inv127"),
              onnx.numpy_helper.from_array(np.array(1e-30, np.float32), "tiny"),
              onnx.numpy_helper.from_array(np.array(1.0, np.float32), "one"),
              onnx.numpy_helper.from_array(np.array(128, np.uint8), "zp")]
    for i in range(layers):
        for j, (k, n) in enumerate(((K, N), (N, K))):
            p, y = f"l{i}.{j}", f"l{i}.{j}/y"
            scale = 1 / (73 * np.sqrt(k))  # keeps activations near unit size through 48 layers (no inf/NaN)
            if kind == "nbits":
                inits += [onnx.numpy_helper.from_array(rng.integers(0, 255, (n, k // 128, 128), dtype=np.uint8), p + "B"),
                          onnx.numpy_helper.from_array(np.full(n * k // 128, scale, np.float32), p + "S")]
                nodes.append(helper.make_node("MatMulNBits", [x, p + "B", p + "S"], [y], domain="com.microsoft", K=k, N=n,
                                              bits=8, block_size=128, accuracy_level=4))
            else:
                inits += [onnx.numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), p + "B"),
                          onnx.numpy_helper.from_array(np.full(n, scale, np.float32), p + "S")]
                nodes += [helper.make_node("Abs", [x], [p + "a"]),
                          helper.make_node("ReduceMax", [p + "a", "axis"], [p + "m"], keepdims=1),
                          helper.make_node("Max", [p + "m", "tiny"], [p + "m2"]),
                          helper.make_node("Mul", [p + "m2", "inv127"], [p + "s"]),
                          helper.make_node("Div", [x, p + "s"], [p + "d"]),
                          helper.make_node("QuantizeLinear", [p + "d", "one", "zp"], [p + "q"]),
                          helper.make_node("MatMulInteger", [p + "q", p + "B", "zp"], [p + "i"]),
                          helper.make_node("Cast", [p + "i"], [p + "f"], to=TensorProto.FLOAT),
                          helper.make_node("Mul", [p + "f", p + "s"], [p + "r"]),
                          helper.make_node("Mul", [p + "r", p + "S"], [y])]
            x = y
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, K])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, [None, K])], initializer=inits + shared)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)],
                          ir_version=10)
    with tempfile.TemporaryDirectory() as tmp:  # over 2 GB of protobuf: the weights go to a side file
        onnx.save(m, f"{tmp}/m.onnx", save_as_external_data=True, location="m.data")
        o = ort.SessionOptions()
        o.intra_op_num_threads = THREADS
        return ort.InferenceSession(f"{tmp}/m.onnx", o, providers=["CPUExecutionProvider"])


def main_chain() -> None:
    print("| graph | M | ms per pass | weights read GB/s | GFLOP/s |\n|---|---|---|---|---|")
    gb = 48 * K * N / 1e9
    for kind in ("nbits", "rows"):
        s = chain(kind)
        for m in (1, 4, 8, 16, 32, 128):
            dt = timed(s, m, 5)
            print(f"| {kind} | {m} | {dt * 1e3:.1f} | {gb / dt:.1f} | {2 * m * gb / dt:.0f} |", flush=True)
        del s


def main() -> None:
    print("| kernel | M | ms | GFLOP/s |\n|---|---|---|---|")
    for name, s, runs in (("MatMulNBits 8-bit, accuracy 0", matmulnbits(0), 3),
                          ("MatMulNBits 8-bit, accuracy 4", matmulnbits(4), 20),
                          ("DynamicQuantizeMatMul", dynamic_quantize_matmul(), 20)):
        for m in (1, 8, 32, 128):
            dt = timed(s, m, runs)
            print(f"| {name} | {m} | {dt * 1e3:.2f} | {2 * m * K * N / dt / 1e9:.0f} |")


if __name__ == "__main__":
    main_chain() if "--chain" in sys.argv else main()
