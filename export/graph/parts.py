"""Splits a decoder graph at layer boundaries into parts that ONNX Runtime loads in parallel.

Why: creating a session is almost all ONNX Runtime prepacking the integer weights, one
initializer after another on one thread (1.4 of the 1.5 s the 1.5B takes on a 2-core EPYC).
The runtime creates one session per part, each on its own thread, so load time divides by
min(parts, cores). A part's initializers point into the whole graph's weight file: the parts
add a few hundred KB to an artifact, not a second copy of the weights.

The writers mark where the residual stream enters each layer (`mark_boundaries`); a part ends
there and the next one takes those tensors as inputs. Small nodes that several parts need
(rotary tables, position arithmetic) are copied into each; no layer's nodes are.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
from onnx import TensorProto, helper

BOUNDARIES = "edgeds.layer_boundaries"


def mark_boundaries(model: onnx.ModelProto, boundaries: dict[int, list[str]]) -> onnx.ModelProto:
    """Records {layer: tensors that carry the residual stream into it} in the model's metadata."""
    entry = model.metadata_props.add()
    entry.key, entry.value = BOUNDARIES, json.dumps({str(k): v for k, v in boundaries.items()})
    return model


def cut_layers(num_layers: int, parts: int) -> list[int]:
    """The layers where parts 1.. begin: as even as whole layers allow."""
    parts = max(1, min(parts, num_layers))
    return [round(num_layers * j / parts) for j in range(1, parts)]


def _used_names(node: onnx.NodeProto) -> list[str]:
    """A node's inputs, with what its subgraphs (If branches) read from the outer graph."""
    names = [n for n in node.input if n]
    for attr in node.attribute:
        for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
            inner = {o for n in sub.node for o in n.output} | {i.name for i in sub.initializer}
            names += [
                n for inner_node in sub.node for n in _used_names(inner_node) if n not in inner
            ]
    return names


def _boundaries(model: onnx.ModelProto) -> dict[int, list[str]]:
    marked = next((p.value for p in model.metadata_props if p.key == BOUNDARIES), "{}")
    return {int(k): v for k, v in json.loads(marked).items()}


def split(
    model: onnx.ModelProto, parts: int, hidden_size: int
) -> list[tuple[int, onnx.ModelProto]]:
    """Consecutive parts of `model` (loaded without its external data) as (first layer, part);
    a model without marked boundaries, or one part, gives [(0, model)]."""
    marks = _boundaries(model)
    firsts = cut_layers(len(marks) + 1, parts) if marks else []
    if not firsts:
        return [(0, model)]
    cuts = [marks[layer] for layer in firsts]
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    sources = {i.name for i in g.input} | {t.name for t in g.initializer}
    # Level of a tensor: how many cuts lie upstream of it; a graph output belongs to the part of
    # its level.
    level: dict[str, int] = {}
    cut_level = {name: c + 1 for c, cut in enumerate(cuts) for name in cut}
    for n in g.node:
        at = max((level.get(name, 0) for name in _used_names(n)), default=0)
        for o in n.output:
            level[o] = cut_level.get(o, at)
    inits = {t.name: t for t in g.initializer}
    graph_outputs = {v.name: v for v in g.output}
    stream = ["batch", "sequence", hidden_size]  # the residual stream's shape at a cut
    out = []
    for j, first in enumerate([0, *firsts]):
        stops = set(cuts[j - 1]) if j else set()
        targets = [o.name for o in g.output if level.get(o.name, 0) == j] + (
            list(cuts[j]) if j < len(cuts) else []
        )
        needed, stack = set(), list(targets)
        while stack:  # backward closure from the part's outputs, stopping at its inputs
            name = stack.pop()
            if name in needed or name in stops or name in sources:
                continue
            node = producer[name]
            needed.update(node.output)
            stack.extend(_used_names(node))
        nodes = [n for n in g.node if n.output[0] in needed]
        used = {name for n in nodes for name in _used_names(n)}
        inputs = [i for i in g.input if i.name in used]
        # Without the stream's shape ONNX Runtime skipped optimizations: 512-token prefill 15%
        # slower.
        inputs += (
            [helper.make_tensor_value_info(name, TensorProto.FLOAT, stream) for name in cuts[j - 1]]
            if j
            else []
        )
        outputs = [
            graph_outputs.get(name)
            or helper.make_tensor_value_info(name, TensorProto.FLOAT, stream)
            for name in targets
        ]
        graph = helper.make_graph(nodes, f"{g.name}_part{j}", inputs, outputs,
                                  initializer=[inits[name] for name in sorted(used & inits.keys())])
        out.append(
            (
                first,
                helper.make_model(
                    graph,
                    opset_imports=model.opset_import,
                    producer_name=model.producer_name,
                    ir_version=model.ir_version,
                ),
            )
        )
    return out


def write_parts(folder: Path, graph_file: str, parts: int, hidden_size: int) -> list[dict]:
    """Writes `graph_file`'s parts beside it (their initializers point into its weight file);
    returns their manifest entries, none for one part."""
    pieces = split(
        onnx.load(str(folder / graph_file), load_external_data=False), parts, hidden_size
    )
    if len(pieces) == 1:
        return []
    stem, entries = graph_file.removesuffix(".onnx"), []
    for j, (first, piece) in enumerate(pieces):
        name = f"{stem}.part{j}.onnx"
        onnx.save_model(piece, str(folder / name))
        entries.append({"file": name, "first_layer": first})
    return entries
