"""The baselines that mla_moe.py measures edgeds' MLA graph against, as subclasses of the
exporter's `MlaGraph` (they are not export options: no user wants them):

- `PerHeadCache`: the latent expanded into every head's K and V, and those cached (what a
  per-head cache holds: 2 x heads x (nope + rope) values per token per layer, not the latent's
  kv_lora_rank + rope);
- `AllExperts`: every routed expert computed on every token, weighted by the router (zero
  where not chosen), instead of only on the tokens routed to it.

    with exported_with(PerHeadCache):
        export_checkpoint(src, out, formats=("onnx",))
"""

from __future__ import annotations

import contextlib

import edgeds_export.mla as mla
from edgeds_export.graph.onnx_ops import MS, gated_mlp, linear
from edgeds_export.mla.onnx_writer import F, MlaGraph
from edgeds_export.mla.tensors import MlaLayer
from edgeds_export.tensors import GatedMlp
from onnx import helper


class PerHeadCache(MlaGraph):
    ops = {"attention": "per-head K and V expanded from the latent and cached (a benchmark "
                        "baseline)"}

    def attention(self, h: str, layer: MlaLayer, i: int, cos_q: str, sin_q: str, cos_k: str,
                  sin_k: str) -> str:
        g, s = self.g, self.s
        p = f"/model/layers.{i}/attn"
        heads, dn, dr, dv, lat = (s.num_heads, s.qk_nope_head_dim, s.qk_rope_head_dim, s.v_head_dim,
                                  s.kv_lora_rank)
        q_nope, q_rope = self.query(h, layer, i, cos_q, sin_q)
        query = g.node("Reshape", [g.node("Concat", [q_nope, q_rope], f"{p}/query/Concat", axis=-1),
                                   self.shape([0, 0, heads * (dn + dr)])], f"{p}/query/Reshape")
        c, k_rope = self.latent(h, layer, i)
        k_rope = self.rope(k_rope, cos_k, sin_k, f"{p}/k_rope")
        batch_seq = g.node("Shape", [h], f"{p}/Shape", end=2)
        flat = g.node("Reshape", [c, self.shape([1, -1, lat])], f"{p}/c/Reshape")
        w_uk = g.node("Transpose", [self.weight(layer.w_uk, f"{p}/w_uk")], f"{p}/w_uk/T",
                      perm=[0, 2, 1])

        def heads_last(x: str, width: int, name: str) -> str:
            shape = g.node("Concat", [self.shape([heads]), batch_seq, self.shape([width])],
                           f"{name}/shape", axis=0)
            x = g.node("Reshape", [x, shape], f"{name}/Reshape")
            return g.node("Transpose", [x], f"{name}/T", perm=[1, 2, 0, 3])  # (B, S, H, width)

        k_nope = heads_last(g.node("MatMul", [flat, w_uk], f"{p}/k_nope/MatMul"), dn, f"{p}/k_nope")
        w_uv = self.weight(layer.w_uv, f"{p}/w_uv")
        v = heads_last(g.node("MatMul", [flat, w_uv], f"{p}/v/MatMul"), dv, f"{p}/v")
        v = g.node("Pad", [v, g.const(f"{p}/v/pads", [0, 0, 0, 0, 0, 0, 0, dn + dr - dv])],
                   f"{p}/v/Pad")
        k_rope = g.node("Unsqueeze", [k_rope, g.const(f"{p}/k_rope/ax", [2])], f"{p}/k_rope/unsq")
        k_rope = g.node("Expand", [k_rope, self.shape([1, 1, heads, 1])], f"{p}/k_rope/expand")
        key = g.node("Concat", [k_nope, k_rope], f"{p}/key/Concat", axis=-1)
        flat_heads = self.shape([0, 0, heads * (dn + dr)])
        attn, _, _ = g.node(
            "GroupQueryAttention",
            [query, g.node("Reshape", [key, flat_heads], f"{p}/key/Reshape"),
             g.node("Reshape", [v, flat_heads], f"{p}/value/Reshape"), f"past_key.{i}",
             f"past_value.{i}", "seqlens_k", "total_sequence_length"],
            f"{p}/GroupQueryAttention", outputs=3, domain=MS,
            num_heads=heads, kv_num_heads=heads, scale=float(s.softmax_scale), do_rotary=0,
        )
        g.nodes[-1].output[1:] = [f"present_key.{i}", f"present_value.{i}"]
        out = g.node("Reshape", [attn, self.shape([0, 0, heads, dn + dr])], f"{p}/out/Reshape")
        out = g.node("Slice", [out, g.const(f"{p}/out/start", [0]), g.const(f"{p}/out/end", [dv]),
                               g.const(f"{p}/out/axis", [3])], f"{p}/out/Slice")
        out = g.node("Reshape", [out, self.shape([0, 0, heads * dv])], f"{p}/out/Reshape2")
        return linear(g, out, layer.o, f"{p}/o_proj")

    def _dims(self) -> tuple[int, int]:
        return self.s.num_heads, self.s.qk_nope_head_dim + self.s.qk_rope_head_dim

    def cache_io(self) -> tuple[list, list]:
        heads, dim = self._dims()
        shape = ["batch", heads, "cache_capacity", dim]
        inputs, outputs = [], []
        for kind in ("key", "value"):
            inputs += [helper.make_tensor_value_info(f"past_{kind}.{i}", F, shape)
                       for i in range(self.s.num_layers)]
            outputs += [helper.make_tensor_value_info(f"present_{kind}.{i}", F, shape)
                        for i in range(self.s.num_layers)]
        return inputs, outputs

    def io_names(self) -> dict:
        names = super().io_names()
        return {"inputs": names["inputs"][:5], "outputs": ["logits"]}

    def kv_cache_entry(self) -> dict:
        heads, dim = self._dims()
        return {"kind": "per_head", "heads": heads, "head_dim": dim,
                "bytes_per_token": 2 * self.s.num_layers * heads * dim * 4}


class AllExperts(MlaGraph):
    ops = {"moe": "every routed expert on every token, weighted by the router (a benchmark "
                  "baseline)"}

    def routed_expert(self, x2d: str, out: str, selected: str, weights: str, expert: GatedMlp,
                      q: str) -> str:
        g = self.g
        ye = gated_mlp(g, x2d, expert, q)
        weighted = g.node("Mul", [ye, g.node("Transpose", [weights], f"{q}/wT", perm=[1, 0])],
                          f"{q}/weighted")
        return g.node("Add", [out, weighted], f"{q}/add")


@contextlib.contextmanager
def exported_with(graph: type[MlaGraph]):
    """Inside the block, export_checkpoint() writes MLA ONNX graphs with `graph`."""
    original = mla.write_onnx

    def write_onnx(*args, **kwargs) -> dict:
        entry = original(*args, **kwargs, graph=graph)
        entry["ops"] = {**entry["ops"], **graph.ops}
        return entry

    mla.write_onnx = write_onnx
    try:
        yield
    finally:
        mla.write_onnx = original
