"""Do ONNX Runtime's elementwise and quantize nodes use the threads? Each node alone on 1 and on
T threads, at the shapes the 1.5B's int8 graph gives them (512-row prefill, 64-row and 1-row
decode; 1536 and 8960 wide), then four ways of quantizing a row, on T threads.

    python -m benchmarks.kernels.row_quantize_threads [--threads 16]

V0 is the committed one (export/graph/onnx_ops.py, row_quantize): Abs, ReduceMax, Mul and a
QuantizeLinear with one block per row. V1 finds the row peak with ReduceMax and ReduceMin
instead of Abs; V2 multiplies x by 127 / peak and quantizes per tensor; V3 is V1's peak with
V2's quantization. Each variant's largest difference from V0's quantized values is printed.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

SHAPES = ((512, 8960), (512, 1536), (64, 8960), (64, 1536), (1, 8960))
NODES = ("Abs", "ReduceMax", "QuantizeLinear (row blocks)", "QuantizeLinear (tensor)",
         "Mul (row scale)", "Sigmoid")


def _model(nodes, inputs, outputs, inits=()) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]).SerializeToString()


def _io(name, dtype, shape=None):
    return helper.make_tensor_value_info(name, dtype, shape)


def _const(name, dtype, dims, values):
    return helper.make_tensor(name, dtype, dims, values)


def single_node(op: str, rows: int, k: int) -> tuple[bytes, bool]:
    """One node over x [rows, k]; whether it also takes the row scales s [rows, 1]."""
    x, s, y = _io("x", TensorProto.FLOAT, [rows, k]), _io("s", TensorProto.FLOAT, [rows, 1]), "y"
    node = helper.make_node
    if op == "Abs":
        return _model([node("Abs", ["x"], [y])], [x], [_io(y, TensorProto.FLOAT)]), False
    if op == "ReduceMax":
        return _model([node("ReduceMax", ["x", "axes"], [y], keepdims=1)], [x],
                      [_io(y, TensorProto.FLOAT)],
                      [_const("axes", TensorProto.INT64, [1], [-1])]), False
    if op == "QuantizeLinear (row blocks)":
        return _model([node("QuantizeLinear", ["x", "s", "zp"], [y], axis=-1, block_size=k)],
                      [x, s], [_io(y, TensorProto.UINT8)],
                      [_const("zp", TensorProto.UINT8, [rows, 1], [128] * rows)]), True
    if op == "QuantizeLinear (tensor)":
        return _model([node("QuantizeLinear", ["x", "one", "zp"], [y])], [x],
                      [_io(y, TensorProto.UINT8)], [_const("one", TensorProto.FLOAT, [], [1.0]),
                       _const("zp", TensorProto.UINT8, [], [128])]), False
    if op == "Mul (row scale)":
        return _model([node("Mul", ["x", "s"], [y])], [x, s], [_io(y, TensorProto.FLOAT)]), True
    return _model([node("Sigmoid", ["x"], [y])], [x], [_io(y, TensorProto.FLOAT)]), False


def row_quantize(variant: str, rows: int, k: int) -> bytes:
    node = helper.make_node
    inits = [_const("axes", TensorProto.INT64, [1], [-1]),
             _const("inv", TensorProto.FLOAT, [], [1 / 127]),
             _const("qmax", TensorProto.FLOAT, [], [127.0]),
             _const("tiny", TensorProto.FLOAT, [], [1e-30]),
             _const("one", TensorProto.FLOAT, [], [1.0]),
             _const("zp0", TensorProto.UINT8, [], [128]),
             _const("zp", TensorProto.UINT8, [rows, 1], [128] * rows)]
    if variant in ("V0", "V2"):
        peak = [node("Abs", ["x"], ["a"]), node("ReduceMax", ["a", "axes"], ["p"], keepdims=1)]
    else:
        peak = [node("ReduceMax", ["x", "axes"], ["hi"], keepdims=1),
                node("ReduceMin", ["x", "axes"], ["lo"], keepdims=1),
                node("Neg", ["lo"], ["neg_lo"]), node("Max", ["hi", "neg_lo"], ["p"])]
    if variant in ("V0", "V1"):
        quantize = [node("QuantizeLinear", ["x", "s", "zp"], ["y"], axis=-1, block_size=k)]
    else:
        quantize = [node("Max", ["p", "tiny"], ["p_safe"]), node("Div", ["qmax", "p_safe"], ["r"]),
                    node("Mul", ["x", "r"], ["x_scaled"]),
                    node("QuantizeLinear", ["x_scaled", "one", "zp0"], ["y"])]
    nodes = peak + [node("Mul", ["p", "inv"], ["s"])] + quantize
    used = {i for n in nodes for i in n.input}
    return _model(nodes, [_io("x", TensorProto.FLOAT, [rows, k])],
                  [_io("y", TensorProto.UINT8), _io("s", TensorProto.FLOAT)],
                  [t for t in inits if t.name in used])


def timed_ms(model: bytes, feed: dict, threads: int, reps: int) -> tuple[float, list]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.log_severity_level = threads, 3
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    for _ in range(5):
        out = session.run(None, feed)
    t0 = time.perf_counter()
    for _ in range(reps):
        session.run(None, feed)
    return (time.perf_counter() - t0) / reps * 1e3, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    threads = ap.parse_args().threads
    print(f"onnxruntime {ort.__version__}: ms on 1 thread, on {threads}, and the speed-up")
    rng = np.random.default_rng(0)
    for rows, k in SHAPES:
        x = rng.standard_normal((rows, k), np.float32)
        scales = np.abs(x).max(1, keepdims=True) / 127
        reps = 30 if rows > 64 else 300
        for op in NODES:
            model, takes_scales = single_node(op, rows, k)
            feed = {"x": x, "s": scales} if takes_scales else {"x": x}
            one, _ = timed_ms(model, feed, 1, reps)
            many, _ = timed_ms(model, feed, threads, reps)
            print(f"{rows}x{k} {op:28s} {one:7.3f} {many:7.3f} x{one / many:5.2f}", flush=True)
        reference = None
        for variant in ("V0", "V1", "V2", "V3"):
            ms, out = timed_ms(row_quantize(variant, rows, k), {"x": x}, threads, reps)
            reference = reference if reference is not None else out[0].astype(int)
            print(f"{rows}x{k} row quantization {variant}: {ms:7.3f} ms on {threads} threads, "
                  f"max |q - V0's q| {int(np.abs(out[0].astype(int) - reference).max())}",
                  flush=True)


if __name__ == "__main__":
    main()
