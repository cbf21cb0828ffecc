"""The manifest read as untrusted input (edgeds/manifest.py, edgeds/tensor_index.py): every field
out of range, inconsistent with another or with the graph, or naming a file outside the artifact
gives one line of ArtifactError naming the field, before anything is allocated or run."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgeds
from edgeds.artifact import MANIFEST, load_artifact
from edgeds.errors import ArtifactError, UserError
from edgeds.manifest import parse, seal

REPO = Path(__file__).resolve().parent.parent
EMBEDDED = REPO / "edgeds/embedded_model"


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit(folder: Path, change, sealed: bool = True) -> None:
    """Apply `change` to folder's manifest (a dict), re-sealed unless told otherwise."""
    m = json.loads((folder / MANIFEST).read_text())
    change(m)
    (folder / MANIFEST).write_text(json.dumps(seal(m) if sealed else m))


def refused(folder: Path, match: str, **load) -> str:
    with pytest.raises(ArtifactError, match=match) as info:
        edgeds.load(folder, **load)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_todays_manifests_are_read(artifacts):
    v1 = load_artifact(EMBEDDED)  # format version 1, as the embedded model was exported
    assert v1.manifest.format_version == 1 and v1.model.attention.num_kv_heads == 2
    assert v1.manifest.kv_layout("onnx").bytes_per_token == 2 * 6 * 2 * 64 * 4
    v2 = load_artifact(artifacts("deepseek_v3", "int8"))
    assert v2.manifest.format_version == 2 and v2.model.attention.kind == "mla"
    assert v2.manifest.kv_layout("onnx").bytes_per_token == 3 * (32 + 16) * 4  # the latent
    assert v2.model.experts.layers == (1, 2)


def test_a_hand_edit_is_told_apart_and_seal_accepts_it(artifacts, tmp_path):
    art = copy(artifacts("qwen2", "int8"), tmp_path / "art")
    edit(art, lambda m: m["generation"].update(temperature=0.5), sealed=False)
    refused(art, "edgeds.json was edited after export .*manifest_sha256")
    edit(art, lambda m: None)  # re-sealed: the same edit is now a valid manifest
    assert load_artifact(art).manifest.generation.temperature == 0.5


def test_nan_is_refused(artifacts, tmp_path):
    art = copy(artifacts("qwen2", "int8"), tmp_path / "art")
    text = (art / MANIFEST).read_text().replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": NaN')
    (art / MANIFEST).write_text(text)
    refused(art, "edgeds.json holds NaN or Infinity")


def model_field(key, value):
    return lambda m: m["model"].__setitem__(key, value)


@pytest.mark.parametrize(
    "change,match",
    [
        (model_field("num_layers", 0), r"model.num_layers is 0, outside 1..4096"),
        (model_field("num_layers", "2"), r"model.num_layers is a string, not an integer"),
        (
            model_field("num_kv_heads", 3),
            r"model.num_kv_heads is 3, which does not divide num_heads 4",
        ),
        (model_field("head_dim", -16), r"model.head_dim is -16, outside"),
        (model_field("vocab_size", 2**40), r"model.vocab_size is 1099511627776, outside"),
        (model_field("context_length", 0), r"model.context_length is 0"),
        (model_field("colour", "blue"), r"model has unknown field\(s\) 'colour'"),
        (lambda m: m["model"].pop("hidden_size"), r"model.hidden_size is missing"),
        (
            lambda m: m["graphs"]["onnx"]["kv_cache"].update(kind="paged"),
            r"kv_cache.kind is 'paged', not one of",
        ),
        (
            lambda m: m["graphs"]["onnx"]["kv_cache"].update(dtype="int4"),
            r"kv_cache.dtype is 'int4'",
        ),
        (
            lambda m: m["graphs"]["onnx"]["parts"].reverse(),
            r"graphs.onnx.parts start at layers \[1, 0\]",
        ),
        (
            lambda m: m["graphs"].update(tensorrt={}),
            r"graphs must name one or more of onnx, openvino",
        ),
        (
            lambda m: m["generation"].update(eos_token_ids=[10**6]),
            r"eos_token_ids is not a list of token ids",
        ),
        (
            lambda m: m["files"]["tokenizer.json"].update(size=-1),
            r"files.tokenizer.json.size is -1",
        ),
        (
            lambda m: m["quantization"].update(weights="int3"),
            r"quantization.weights is 'int3', not one of",
        ),
    ],
)
def test_a_field_out_of_range_is_one_line_naming_it(change, match, artifacts, tmp_path):
    art = copy(artifacts("qwen2", "int8"), tmp_path / "art")
    edit(art, change)
    assert refused(art, match).startswith("edgeds.json")


@pytest.mark.parametrize(
    "change,match",
    [
        (
            model_field("kv_lora_rank", 48),
            r"kv_cache.bytes_per_token is 576, but the model's shape gives 768",
        ),
        (
            model_field("n_group", 3),
            r"model.n_group is 3, which does not divide n_routed_experts 8",
        ),
        (model_field("num_experts_per_tok", 9), r"model.num_experts_per_tok is 9, outside 1..8"),
        (model_field("moe_layers", [2, 1]), r"model.moe_layers is not an increasing list"),
        (
            model_field("moe_layers", [1, 7]),
            r"model.moe_layers is not an increasing list .* below num_layers 3",
        ),
        (model_field("routing", "random"), r"model.routing is 'random'"),
        (model_field("qk_rope_head_dim", 15), r"model.qk_rope_head_dim is 15: rotary"),
    ],
)
def test_mla_and_moe_fields_are_checked_against_each_other(change, match, artifacts, tmp_path):
    art = copy(artifacts("deepseek_v3", "int8"), tmp_path / "art")
    edit(art, change)
    refused(art, match)


def test_a_changed_num_layers_does_not_match_the_graph(artifacts, tmp_path):
    """The ONNX graph has one cache input per layer: 2 more layers would bind buffers it lacks."""
    for kind in ("qwen2", "deepseek_v3"):
        art = copy(artifacts(kind, "int8"), tmp_path / kind)
        edit(art, model_field("num_layers", 4 if kind == "qwen2" else 5))
        refused(art, r"graphs.onnx.inputs hold \d+ cache tensors, not the \d+ of num_layers \d")


@pytest.mark.parametrize("kind", ["qwen2", "deepseek_v3"])
def test_native_decoders_refuse_an_index_that_does_not_fit_the_model(kind, artifacts, tmp_path):
    """A manifest whose widths still agree with each other, but not with the weights: the tensor
    index is checked before the C loops get a pointer (heap corruption before)."""
    art = copy(artifacts(kind, "int8"), tmp_path / "art")
    if kind == "qwen2":  # 4 heads over 4 KV heads: divides, but the fused qkv is narrower than that
        edit(art, model_field("num_kv_heads", 4))
        match = r"tensors.json: layers\[0\].qkv is 64 x 128, not 64 x 192"
    else:  # half the experts
        edit(art, lambda m: m["model"].update(n_routed_experts=4, n_group=2, topk_group=1))
        match = r"tensors.json: layers\[1\].moe.router has shape \[64, 8\], not \[64, 4\]"
    refused(art, match, backend="native")


@pytest.mark.parametrize(
    "where,name,match",
    [
        ("data_file", "../outside.data", "not a normalized path inside the artifact folder"),
        ("data_file", "/etc/passwd", "an absolute path"),
        ("tokenizer", "/tmp/tokenizer.json", "an absolute path"),
        ("tokenizer", "a/../../tokenizer.json", "not a normalized path"),
        ("files", "../outside.data", "files.'../outside.data' not a normalized path"),
    ],
)
def test_file_names_stay_inside_the_artifact(where, name, match, artifacts, tmp_path):
    art = copy(artifacts("qwen2", "int8"), tmp_path / "art")
    (tmp_path / "outside.data").write_bytes(b"\0" * 64)

    def change(m):
        if where == "data_file":
            m["graphs"]["onnx"]["data_file"] = name
        elif where == "tokenizer":
            m["tokenizer"]["file"] = name
        else:
            m["files"][name] = {"size": 64, "sha256": "0" * 64}

    edit(art, change)
    with opened_files() as seen:
        refused(art, match)
    assert not [p for p in seen if "outside" in p or p.startswith(("/etc", "/tmp/tok"))]


def test_a_symbolic_link_leading_out_is_refused(artifacts, tmp_path):
    art = copy(artifacts("qwen2", "int8"), tmp_path / "art")
    name = "tokenizer.compact.npz"  # the tokenizer file the runtime reads
    outside = tmp_path / name
    shutil.move(art / name, outside)
    (art / name).symlink_to(outside)  # the same bytes: only the link gives it away
    with opened_files() as seen:
        refused(art, f"artifact file '{name}' leads outside the artifact folder")
    assert str(outside) not in seen


# sys.addaudithook cannot be removed: one hook for the session, recording while asked to.
_RECORDING: list[list[str]] = []


def _audit(event: str, args: tuple) -> None:
    if _RECORDING and event == "open" and isinstance(args[0], (str, bytes, Path)):
        _RECORDING[-1].append(
            str(Path(args[0] if not isinstance(args[0], bytes) else args[0].decode()).absolute())
        )


sys.addaudithook(_audit)


class opened_files:
    def __enter__(self) -> list[str]:
        _RECORDING.append([])
        return _RECORDING[-1]

    def __exit__(self, *exc) -> None:
        _RECORDING.pop()


@pytest.mark.parametrize("backend", ["native", "onnxruntime", "openvino"])
def test_a_run_opens_no_file_beside_the_artifact(backend, artifacts, tmp_path):
    """Of everything under the folder that holds the artifact, only the artifact's own files
    are opened, by load, checksums, tokenizer and a generation (the runtime's libraries, the
    profiles and /proc are read from where they are installed)."""
    art = copy(artifacts("qwen2", "int8"), tmp_path / "art")
    (tmp_path / "outside.data").write_bytes(b"\0" * 64)
    with opened_files() as seen:
        engine = edgeds.load(art, backend=backend, threads=1)
        engine.generate(["def f(x):"], max_new_tokens=3)
    near = [p for p in seen if p.startswith(str(tmp_path))]
    assert near and all(p.startswith(str(art) + "/") for p in near), near
    listed = set(load_artifact(art).manifest.files) | {MANIFEST}
    assert {Path(p).name for p in near} <= listed


@pytest.mark.parametrize("backend", ["native", "onnxruntime", "openvino"])
@pytest.mark.parametrize("kind", ["qwen2", "deepseek_v3"])
def test_a_context_beyond_the_rotary_tables_is_refused_at_load(backend, kind, artifacts, tmp_path):
    """context_length raised in a re-sealed manifest: the graphs' rotary tables (128 positions
    here) end before it. ONNX Runtime failed in the middle of a job past their end and OpenVINO
    read wrong rows without a word; every backend refuses it before a token runs."""
    from edgeds.hardware import detect
    from edgeds.selection import native_unavailable

    if backend == "native" and (why := native_unavailable(detect(), None)):
        pytest.skip(why)
    art = copy(artifacts(kind, "int8"), tmp_path / "art")
    edit(art, lambda m: m["model"].update(context_length=256))
    assert load_artifact(art).model.context_length == 256  # the manifest alone is consistent
    message = refused(art, "rotary tables cover 128 positions|context_length 256 or more",
                      backend=backend, threads=1)
    assert ("--context 256" in message) == (backend != "native")  # native: tensors.json's check
    edit(art, lambda m: m["model"].update(context_length=1024))  # the model's own limit is 512
    refused(art, "model.context_length is 1024, beyond max_position_embeddings 512",
            backend=backend)


def test_parse_takes_the_json_value_alone():
    """No file system at all: what the fuzz below and other tools call."""
    m = json.loads((EMBEDDED / MANIFEST).read_text())
    assert parse(m).model.vocab_size == 4096
    for bad in (None, [], "x", {"format": "edgeds-artifact", "format_version": True}):
        with pytest.raises(ArtifactError):
            parse(bad)


# --- the fuzz: any edit of any field gives one line of error or a model that runs ---


def _leaves(value, path=()):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, (*path, i))
    if path:
        yield path


NASTY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.sampled_from([0, -1, 1, 2, 3, 4, 7, 16, 63, 64, 65, 2**31, 2**63, 1e-300, 0.5]),
    st.sampled_from(
        [
            "",
            "../outside.data",
            "/etc/passwd",
            "tokenizer.json",
            "model.onnx",
            "edgeds.json",
            "float16",
            "int8",
            "mla_latent",
            "per_head",
            "stateful",
        ]
    ),
    st.text(max_size=12),
    st.lists(st.integers(-2, 12), max_size=4),
    st.dictionaries(st.text(max_size=4), st.integers(-1, 4), max_size=2),
)


def _apply(m: dict, path: tuple, op: str, value) -> None:
    *parents, last = path
    node = m
    for key in parents:
        node = node[key]
    if op == "nudge":  # a plausible value: the number next to it, or another file's name
        old = node[last]
        node[last] = (
            old + value
            if type(old) in (int, float) and type(value) is int and abs(value) < 9
            else "tokenizer_config.json"
            if isinstance(old, str)
            else value
        )
    elif op == "delete":
        del node[last]
    elif op == "add" and isinstance(node, dict):
        node[f"{last}_x"] = value
    else:
        node[last] = value


OUTCOMES: list[str] = []


@pytest.fixture(scope="module")
def fuzz_folder(tmp_path_factory, artifacts):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "outside.data").write_bytes(b"\0" * 4096)
    return copy(artifacts("qwen2", "int8"), root / "art")


@pytest.mark.parametrize("backend", ["native", "onnxruntime"])
def test_any_edit_gives_one_line_or_a_model_that_runs(backend, fuzz_folder):
    original = json.loads((fuzz_folder / MANIFEST).read_text())
    OUTCOMES.clear()
    paths = [p for p in _leaves(original) if p[0] != "manifest_sha256"]

    @settings(
        max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    @given(
        st.sampled_from(paths),
        st.sampled_from(["set", "nudge", "nudge", "delete", "add"]),
        NASTY,
        st.sampled_from([True, True, True, False]),
    )
    def run(path, op, value, sealed):
        m = json.loads(json.dumps(original))
        _apply(m, path, op, value)
        try:
            text = json.dumps(seal(m) if sealed else m)
        except ValueError:  # an infinite float: JSON has no word for it
            return
        (fuzz_folder / MANIFEST).write_text(text)
        with opened_files() as seen:
            try:
                engine = edgeds.load(fuzz_folder, backend=backend, threads=1)
                engine.generate(["def f(x):"], max_new_tokens=2)
                OUTCOMES.append("ran")
            except UserError as exc:
                assert "\n" not in str(exc) and str(exc)
                OUTCOMES.append(str(exc)[:90])
        stray = [
            p
            for p in seen
            if p.startswith(str(fuzz_folder.parent)) and not p.startswith(str(fuzz_folder) + "/")
        ]
        assert not stray, stray

    try:
        run()
    finally:
        (fuzz_folder / MANIFEST).write_text(json.dumps(original))
    # The fuzz reaches past the seal: some edits load and run, some are refused deeper in.
    ran = OUTCOMES.count("ran")
    sealed = [o for o in OUTCOMES if o != "ran" and "was edited after export" not in o]
    print(*OUTCOMES, sep="\n")
    assert ran >= 2 and len(sealed) >= 10, OUTCOMES


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_graph_runtimes_refuse_widths_their_graph_does_not_have(backend, artifacts, tmp_path):
    """A vocab_size the graph's logits do not have: ONNX Runtime failed with pages of its own
    text, and OpenVINO ran on, returning narrower logits than the engine samples from."""
    art = copy(artifacts("qwen2", "int8"), tmp_path / "art")
    edit(art, lambda m: m["model"].update(vocab_size=384))
    refused(art, r"graph's logits (is|are) 320 wide.*the manifest's vocab_size says 384",
            backend=backend)
