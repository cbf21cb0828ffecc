"""ONNX Runtime's int8 weight kernels on one matmul shape (K=1536, N=8960: the 1.5B MLP).

    python -m benchmarks.kernels.ort_int8_kernels           # one matmul, weights in cache
    python -m benchmarks.kernels.ort_int8_kernels --chain   # 48 of them (1.3 GB of weights):
                                                            # memory-bound like a model

MatMulNBits (8-bit, block 128) at accuracy levels 0 and 4, and DynamicQuantizeMatMul
(per-column int8 weights, activations quantized per tensor), at M = 1, 8, 32, 128 rows, 2 threads.
The weights fit in cache here, so M=1 figures are not memory-bound as in a whole model.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

K, N, THREADS = 1536, 8960, 2
rng = np.random.default_rng(0)


def session(node, inits) -> ort.InferenceSession:
    g = helper.make_graph([node], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, N])],
                          initializer=inits)
    m = helper.make_model(g,
                          opset_imports=[helper.make_opsetid("", 21),
                                         helper.make_opsetid("com.microsoft", 1)],
                          ir_version=10)
    o = ort.SessionOptions()
    o.intra_op_num_threads = THREADS
    return ort.InferenceSession(m.SerializeToString(), o, providers=["CPUExecutionProvider"])


def matmulnbits(level: int, block: int = 128) -> ort.InferenceSession:
    b = rng.integers(0, 255, (N, K // block, block)).astype(np.uint8)
    s = np.full(N * K // block, 0.01, np.float32)
    node = helper.make_node("MatMulNBits", ["x", "B", "S"], ["y"], domain="com.microsoft", K=K, N=N,
                            bits=8, block_size=block, accuracy_level=level)
    return session(node,
                   [onnx.numpy_helper.from_array(b, "B"), onnx.numpy_helper.from_array(s, "S")])


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
    """`layers` x (K->N, N->K) matmuls with their own weights, written by the exporter's own
    quantizer and linear-layer writer: "nbits" = what `--weights int8-wo` exports (MatMulNBits),
    "rows" = what `--weights int8` exports (per-row uint8 activations x per-channel int8 weights
    through MatMulInteger)."""
    from edgeds_export.graph.onnx_ops import MS, OPSET, Graph, linear
    from edgeds_export.quantize import SCHEMES
    from edgeds_export.tensors import TensorWriter
    from edgeds_export.weight_file import WeightFile

    tmp = tempfile.mkdtemp()
    weights = WeightFile(Path(tmp) / "w.data")
    writer = TensorWriter(None, SCHEMES["int8-wo" if kind == "nbits" else "int8"], weights)
    g, x = Graph("w.data"), "x"
    for i in range(layers):
        for j, (k, n) in enumerate(((K, N), (N, K))):
            # scaled so activations stay near unit size through 48 layers (no inf/NaN)
            w = rng.standard_normal((n, k), dtype=np.float32) / np.float32(np.sqrt(k))
            x = linear(g, x, writer.linear_from(w), f"l{i}.{j}")
    weights.close()
    graph = helper.make_graph(g.nodes, "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, K])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [None, K])],
                              initializer=g.initializers)
    model = helper.make_model(graph,
                              opset_imports=[helper.make_opsetid("", OPSET),
                                             helper.make_opsetid(MS, 1)],
                              ir_version=10)
    onnx.save(model, f"{tmp}/m.onnx")
    o = ort.SessionOptions()
    o.intra_op_num_threads = THREADS
    session = ort.InferenceSession(f"{tmp}/m.onnx", o, providers=["CPUExecutionProvider"])
    shutil.rmtree(tmp)  # the session holds its own copy of the weights now
    return session


def main_chain() -> None:
    print("| graph | M | ms per pass | weights read GB/s | GFLOP/s |\n|---|---|---|---|---|")
    gb = 48 * K * N / 1e9
    for kind in ("nbits", "rows"):
        s = chain(kind)
        for m in (1, 4, 8, 16, 32, 128):
            dt = timed(s, m, 5)
            print(f"| {kind} | {m} | {dt * 1e3:.1f} | {gb / dt:.1f} | {2 * m * gb / dt:.0f} |",
                  flush=True)
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
