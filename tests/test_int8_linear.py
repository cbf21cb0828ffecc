"""The exported INT8 linear layer alone (the subgraph every INT8 matmul of a graph is made of)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from edgeds.backends.onnxruntime.sessions import session_options
from edgeds_export.graph.onnx_ops import MS, OPSET, Graph, linear
from edgeds_export.quantize import SCHEMES
from edgeds_export.tensors import TensorWriter
from edgeds_export.weight_file import WeightFile

K, N = 64, 48


def int8_linear_session(tmp_path, w: np.ndarray) -> ort.InferenceSession:
    weights = WeightFile(tmp_path / "w.data")
    lin = TensorWriter(None, SCHEMES["int8"], weights).linear_from(w)
    weights.close()
    g = Graph("w.data")
    y = linear(g, "x", lin, "lin")
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, K])]
    outputs = [helper.make_tensor_value_info(y, TensorProto.FLOAT, [None, None, N])]
    graph = helper.make_graph(g.nodes, "g", inputs, outputs, initializer=g.initializers)
    model = helper.make_model(graph,
                              opset_imports=[helper.make_opsetid("", OPSET),
                                             helper.make_opsetid(MS, 1)],
                              ir_version=10)
    onnx.save(model, str(tmp_path / "m.onnx"))
    # The backend's session options: on CPUs without VNNI they keep ORT's int8 GEMM exact.
    return ort.InferenceSession(str(tmp_path / "m.onnx"), session_options(None, None, None, False),
                                providers=["CPUExecutionProvider"])


def test_int8_linear_is_per_row_and_a_zero_row_gives_zeros(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((N, K)).astype(np.float32)
    s = int8_linear_session(tmp_path, w)
    x = rng.standard_normal((2, 5, K)).astype(np.float32)
    x[0, 1] *= 1000  # an outlier token: per-row scales keep it from flattening the others
    x[1, 2] = 0  # e.g. an all-zero activation row: scale 0 must not turn into NaN
    y = s.run(None, {"x": x})[0]
    ref = x @ w.T
    assert np.all(np.isfinite(y))
    np.testing.assert_array_equal(y[1, 2], 0)
    for b, t in np.ndindex(2, 5):
        if (b, t) != (1, 2):  # symmetric int8 x int8: about 1% of the row's output scale
            assert np.abs(y[b, t] - ref[b, t]).max() < 0.02 * np.abs(ref[b, t]).max()
    # Each row's result depends on that row alone, whatever shares the call.
    np.testing.assert_array_equal(s.run(None, {"x": x[1:, 3:4]})[0][0, 0], y[1, 3])
