"""Would TensorRT's ONNX parser take this artifact's graphs? A static check of every node.

Checked against the op tables of onnx-tensorrt's `docs/operators.md` for TensorRT 10.3 (JetPack
6.x) and the newest 10.x (JetPack 7.x), kept in `tensorrt_ops.json` (a copy of the project's
reference file; its README in ../shared/reference/tensorrt/ says where each table comes from).
Per node: the op's domain and whether the release supports it, the restrictions its table
notes that a graph can show (constant axes, allowed attributes, zero points, static scales),
and the data types of its inputs as ONNX shape inference gives them (INT8 only into
DequantizeLinear). The model's opset must be one the release reads.

This reads the documented coverage; it builds no engine, so a node can still fail to build
(see docs/jetson.md). `onnx` is needed to read the graph (`pip install onnx`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import ArtifactError
from .manifest import Manifest, inside
from .manifest import read as read_manifest

OPS_FILE = Path(__file__).with_name("tensorrt_ops.json")
VERSIONS = ("10.3", "10.x-newest")
# ONNX TensorProto data types by the names the tables use.
TYPE_NAMES = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    6: "INT32",
    7: "INT64",
    9: "BOOL",
    10: "FP16",
    16: "BF16",
    17: "FP8",
    18: "FP8",
    22: "INT4",
    23: "FP4",
}
QUANTIZERS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class Problem:
    version: str
    graph: str
    node: str
    op: str
    reason: str

    def __str__(self) -> str:
        return f"TensorRT {self.version}: {self.graph}: {self.node} ({self.op}): {self.reason}"


def load_tables(path: str | Path | None = None) -> dict:
    """The op tables file (default: the copy shipped with edgeds)."""
    path = Path(path) if path else OPS_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read the TensorRT op tables {path}: {exc}") from exc


def _onnx():
    try:
        import onnx
    except ImportError as exc:
        raise ArtifactError(
            "the TensorRT check reads ONNX graphs with the onnx package: pip install onnx"
        ) from exc
    return onnx


class _GraphFacts:
    """What the checks need to know of one graph: constants, their values, tensor types."""

    def __init__(self, model):
        onnx = _onnx()
        graph = model.graph
        self.initializers = {t.name: t for t in graph.initializer}
        self.constants = {o for n in graph.node if n.op_type == "Constant" for o in n.output}
        # A graph that shape inference cannot follow is typed less, not rejected.
        try:
            inferred = onnx.shape_inference.infer_shapes(model).graph
        except Exception:  # noqa: BLE001
            inferred = graph
        self.types = {t.name: t.data_type for t in graph.initializer}
        for v in list(inferred.value_info) + list(inferred.input) + list(inferred.output):
            if v.type.tensor_type.elem_type:
                self.types[v.name] = v.type.tensor_type.elem_type
        self.static = {
            v.name
            for v in graph.input
            if all(d.HasField("dim_value") for d in v.type.tensor_type.shape.dim)
        }
        # Values that fold to a constant: outputs of nodes all of whose inputs do.
        self.const_like = set(self.initializers) | self.constants
        for n in graph.node:
            if n.input and all(i in self.const_like for i in n.input if i):
                self.const_like.update(n.output)

    def is_const(self, name: str) -> bool:
        return name in self.initializers or name in self.constants

    def values(self, name: str):
        """An initializer's values when stored inline (None when external or not one)."""
        t = self.initializers.get(name)
        if t is None or t.data_location == 1:
            return None
        return _onnx().numpy_helper.to_array(t)


def _attr(node, name: str):
    for a in node.attribute:
        if a.name == name:
            return _onnx().helper.get_attribute_value(a)
    return None


def _node_problems(node, entry: dict | None, facts: _GraphFacts) -> list[str]:
    if node.domain not in ("", "ai.onnx"):
        return [f"domain {node.domain} is not TensorRT's "
                f"(the parser would look for a plugin named {node.op_type})"]
    if not entry or not entry.get("supported"):
        return ["not in this release's ONNX op table"]
    reasons = []
    checks = entry.get("checks") or {}
    inputs = list(node.input)

    def given(i: int) -> str:
        return inputs[i] if i < len(inputs) else ""

    for kind in ("const_inputs", "const_like_inputs"):
        for index, what in (checks.get(kind) or {}).items():
            name = given(int(index))
            ok = facts.is_const(name) if kind == "const_inputs" else name in facts.const_like
            if name and not ok:
                reasons.append(f"input {index} ({what}) must be a constant")
    for attr, allowed in (checks.get("attrs") or {}).items():
        value = _attr(node, attr)
        if isinstance(value, bytes):
            value = value.decode()
        if value is not None and value not in allowed:
            reasons.append(f"attribute {attr}={value!r}, the parser takes {allowed}")
    for attr in checks.get("forbidden_attrs") or []:
        if _attr(node, attr) is not None:
            reasons.append(f"attribute {attr} is not taken at all")
    for index, what in (checks.get("absent_inputs") or {}).items():
        if given(int(index)):
            reasons.append(f"input {index} ({what}) must be absent")
    for index, what in (checks.get("absent_outputs") or {}).items():
        if int(index) < len(node.output) and node.output[int(index)]:
            reasons.append(f"output {index} ({what}) must be absent")
    for index, limit in (checks.get("max_const") or {}).items():
        values = facts.values(given(int(index)))
        if values is not None and values.size and int(values.max()) > limit:
            reasons.append(f"input {index} is {int(values.max())}, above {limit}")
    if "zero_point_input" in checks and (zp := given(int(checks["zero_point_input"]))):
        values = facts.values(zp)
        if facts.types.get(zp) == 2:
            reasons.append("a UINT8 zero point")
        elif values is None or values.any():
            reasons.append("the zero point must be a constant of zeros")
    for index, what in (checks.get("static_shape_inputs") or {}).items():
        name = given(int(index))
        if name and not (facts.is_const(name) or name in facts.static):
            reasons.append(f"input {index} ({what}) must have a static shape")
    types = set(entry.get("types") or [])
    checked = inputs[:1] if node.op_type in QUANTIZERS else inputs
    for name in checked:
        t = TYPE_NAMES.get(facts.types.get(name))
        if name and t and types and t not in types:
            reasons.append(f"input {name} is {t}; the parser takes {sorted(types)} here")
        elif name and t in ("INT8", "INT4") and node.op_type not in QUANTIZERS:
            reasons.append(f"input {name} is {t}: quantized types go only into DequantizeLinear")
    return reasons


def check_model(
    model, tables: dict, graph_name: str = "model.onnx", versions: tuple[str, ...] = VERSIONS
) -> list[Problem]:
    """Every problem TensorRT's parser of each release would have with `model` (an onnx
    ModelProto, loaded without its external data)."""
    facts = _GraphFacts(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    problems = []
    for version in versions:
        table = tables["versions"][version]
        low, high = tables.get("opset_range", {}).get(version, (None, None))
        if opset is not None and low is not None and not low <= opset <= high:
            problems.append(
                Problem(
                    version,
                    graph_name,
                    "(model)",
                    "opset",
                    f"opset {opset}; this release reads {low}-{high}",
                )
            )
        for node in model.graph.node:
            for reason in _node_problems(node, table.get(node.op_type), facts):
                problems.append(Problem(version, graph_name, node.name, node.op_type, reason))
    return problems


def onnx_graph_files(manifest: Manifest) -> list[str]:
    """The ONNX graph files an artifact's manifest lists (main graph, small-batch graph, parts)."""
    graph = manifest.graphs.get("onnx")
    if graph is None:
        return []
    files = []
    for g in (graph, graph.small_batch):
        if g is not None:
            files += [g.file, *(part.file for part in g.parts)]
    return files


def check_artifact(folder: str | Path, ops_file: str | Path | None = None) -> dict:
    """A report of every ONNX graph of the artifact against both releases: per version, the
    nodes checked and the problems found."""
    onnx = _onnx()
    folder = Path(folder)
    manifest = read_manifest(folder)  # checked and sealed: file names stay inside the folder
    files = onnx_graph_files(manifest)
    if not files:
        raise ArtifactError(
            f"{folder} has no ONNX graph to check (export it with --format onnx --target tensorrt)"
        )
    tables = load_tables(ops_file)
    problems, nodes = [], 0
    for name in files:
        try:
            model = onnx.load(str(inside(folder, name)), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - any unreadable graph is one clear line
            raise ArtifactError(f"cannot read {folder / name}: {exc}") from exc
        nodes += len(model.graph.node)
        problems += check_model(model, tables, name)
    target = "onnxruntime" if manifest.graph("onnx").tensorrt is None else "tensorrt"
    return {
        "artifact": str(folder),
        "target": target,
        "graphs": files,
        "nodes": nodes,
        "versions": {
            v: {
                "tensorrt": tables.get("newest_10x", v) if v == "10.x-newest" else v,
                "problems": [str(p) for p in problems if p.version == v],
            }
            for v in VERSIONS
        },
        "ok": not problems,
    }


def format_report(report: dict, limit: int = 20) -> str:
    lines = [
        f"TensorRT ONNX parser check of {report['artifact']} ({report['nodes']} nodes in "
        f"{', '.join(report['graphs'])}; exported for {report['target']}):"
    ]
    for version, result in report["versions"].items():
        found = result["problems"]
        lines.append(
            f"  TensorRT {result['tensorrt']}: "
            + ("every node parses" if not found else f"{len(found)} problem(s)")
        )
        lines += [f"    {p}" for p in found[:limit]]
        if len(found) > limit:
            lines.append(f"    ... and {len(found) - limit} more (--json lists all)")
    lines.append("  (the parser's documented coverage, checked statically: no engine was built)")
    if not report["ok"] and report["target"] != "tensorrt":
        lines.append("  re-export with --target tensorrt for graphs TensorRT parses")
    return "\n".join(lines)
