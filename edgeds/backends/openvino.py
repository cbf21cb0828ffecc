"""OpenVINO backend: the KV cache is model state, kept by the plugin in its own buffers.

The state covers the whole batch, so slots cannot be refilled one at a time: this backend runs
waves (every slot starts together; `supports_refill` is False). Prompts are left-padded and the
attention mask carries each sequence's own length.

Greedy results must not depend on the batch (a wave of 64 pads prompts and runs every matmul
with 64x the rows of a batch-1 call), so the CPU plugin's activation rounding is turned off:
its dynamic quantization of activations for compressed weights (on by default, group 32) and
bf16 inference (the default on AMX CPUs) both round rows differently in kernels picked by the
row count; each alone flipped greedy tokens between batch 1 and 64 on the reference models
(tests/test_batch_invariance.py). The profile's precision stays a setting (f32 everywhere).
"""

from __future__ import annotations

import numpy as np
import openvino as ov

from ..artifact import Artifact
from ..errors import ArtifactError
from .slots import grown


def _rope_rows(model: ov.Model) -> int | None:
    """Rows of the rotary tables: the constants that position_ids index (export/*/
    openvino_writer.py gathers cos and sin rows by it); None where no such table is found."""
    rows = [op.get_input_partial_shape(0)[0].get_length() for op in model.get_ordered_ops()
            if op.get_type_name() == "Gather"
            and op.input_value(1).get_node().get_friendly_name() == "position_ids"
            and op.input_value(0).get_node().get_type_name() == "Constant"]
    return min(rows, default=None)


class OpenVinoBackend:
    name = "openvino"
    supports_refill = False
    supports_prefix_cache = False
    no_prefix_cache = ("openvino keeps its cache as state inside the compiled model "
                       "(ReadValue/Assign) and runs waves of slots: there are no rows of one "
                       "slot to load")

    def __init__(self, artifact: Artifact, device: str = "CPU", threads: int | None = None,
                 config: dict | None = None):
        m = artifact.model
        self.layers, self.vocab_size = m.num_layers, m.vocab_size
        core = ov.Core()
        cfg = {"PERFORMANCE_HINT": "LATENCY", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0,
               **(config or {})}
        if threads:
            cfg["INFERENCE_NUM_THREADS"] = int(threads)
        graph = artifact.graph("openvino")
        model = core.read_model(str(artifact.path(graph.file)))
        if (rows := _rope_rows(model)) is not None:
            m.check_rope_rows(rows, f"{artifact.root}: {graph.file}")
        logits = model.output("logits").get_partial_shape()[-1]
        if logits.is_static and logits.get_length() != m.vocab_size:
            raise ArtifactError(f"{artifact.root}: its OpenVINO graph's logits are "
                                f"{logits.get_length()} wide, the manifest's vocab_size says "
                                f"{m.vocab_size}")
        self.compiled = core.compile_model(model, device, {k: str(v) for k, v in cfg.items()})
        self.request = self.compiled.create_infer_request()
        self.device = device

    def start(self, batch_size: int, capacity: int) -> None:
        self.batch_size, self.capacity = batch_size, capacity
        self.request.reset_state()
        self.mask = np.zeros((batch_size, capacity), np.int64)
        self.positions = np.zeros((batch_size, 1), np.int64)
        self.total = 0
        self._beam = np.arange(batch_size, dtype=np.int32)
        self._last = np.zeros((batch_size, 1), np.int64)

    def grow(self, capacity: int) -> None:
        """Room for `capacity` tokens per slot, keeping the wave: the plugin's state grows by
        itself with every call (its cache is as long as the attention mask), so only the mask
        is ours to enlarge."""
        if capacity > self.capacity:
            self.mask, self.capacity = grown(self.mask, capacity, token_axis=1), capacity

    def _infer(self, ids: np.ndarray, positions: np.ndarray,
               logits_positions: np.ndarray) -> np.ndarray:
        self.request.infer({
            "input_ids": ids,
            "attention_mask": np.ascontiguousarray(self.mask[:, : self.total]),
            "position_ids": positions,
            "beam_idx": self._beam,
            "logits_positions": logits_positions,
        }, share_inputs=True)
        return self.request.get_tensor("logits").data

    def prefill(self, slots: list[int], prompts: list[np.ndarray],
                every_position: bool = False) -> np.ndarray:
        if slots != list(range(self.batch_size)) or self.total:
            raise RuntimeError("the OpenVINO backend prefills all slots of a wave at once")
        longest = max(len(p) for p in prompts)
        if longest > self.capacity:
            raise ValueError("prompt longer than the cache capacity")
        ids = np.zeros((self.batch_size, longest), np.int64)
        for j, p in enumerate(prompts):
            ids[j, longest - len(p):] = p
            self.mask[j, longest - len(p): longest] = 1
        self.total = longest
        positions = np.maximum(np.cumsum(self.mask[:, :longest], axis=1) - 1, 0)
        self.positions[:, 0] = positions[:, -1]
        if every_position:  # positions of the padded batch; only unpadded rows are meaningful
            every = np.tile(np.arange(longest), (self.batch_size, 1))
            return self._infer(ids, positions, every).copy()
        self._last[:, 0] = longest - 1
        return self._infer(ids, positions, self._last)[:, -1].copy()

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        if self.total >= self.capacity:
            raise ValueError("cache capacity exceeded")
        self.mask[:, self.total] = 1
        self.total += 1
        self.positions += 1
        self._last[:, 0] = 0
        ids = tokens.reshape(-1, 1).astype(np.int64, copy=False)
        return self._infer(ids, self.positions, self._last)[:, -1]

    def release(self, slot: int) -> None:
        pass  # the slot idles until the wave ends
