"""The compact tokenizer encodes and decodes exactly as `tokenizers` does with the tokenizer.json
it was written from: for the DeepSeek-V3 tokenizer itself and for small tokenizers trained here
with the pre-tokenizers of the other families (Qwen2 with NFC, Llama 3 with ignore_merges, the
coder/llm models' splits and Digits, GPT-2's ByteLevel regex)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from edgeds.compact_tokenizer import CompactTokenizer, isolated
from edgeds.errors import ArtifactError
from export import compact_tokenizer as writer

REAL = Path(__file__).resolve().parents[2] / "shared/reference/deepseek-v3-tokenizer"

QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
         r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3 = QWEN2.replace(r"|\p{N}|", r"|\p{N}{1,3}|")
CODER = [r"[\r\n]", r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-Ֆ]+",
         r"\s?[!-/:-~！-／：-～‘-‟　-。]+", r"\s+$", r"[一-龥ࠀ-一가-퟿]+"]

CORPUS = (
    "The quick brown fox's 12345 jumps; they'll WE'VE over the lazy dog.\n"
    "def main(argv):\n    return sum(x**2 for x in argv)  # 3.14159\r\n\t\n"
    "中文的句子，还有日本語のカタカナ、한국어 문장. Ünïcödé e\u0301 café ﬁ ½ ① Ⅻ ٣٤ "
    "<think>steps</think> {\"a\": [1, 2]}   trailing  \n\n"
) * 20


def _random_texts(tok: Tokenizer, n: int, seed: int = 0) -> list[str]:
    rnd = random.Random(seed)
    common = list(" \n\t\r aZz09.,;'\"-_()中é한ـ🙂\u0301\u00a0\u3000")
    added = [t.content for t in tok.get_added_tokens_decoder().values()]
    texts = []
    for _ in range(n):
        chars = [chr(rnd.randrange(0x110000)) if rnd.random() < 0.2 else rnd.choice(common)
                 for _ in range(rnd.randint(1, 30))]
        if added and rnd.random() < 0.3:
            chars.insert(rnd.randrange(len(chars) + 1), rnd.choice(added))
        texts.append("".join(c for c in chars if not 0xD800 <= ord(c[0]) < 0xE000))
    return texts + CORPUS.split("\n") + [CORPUS, "a" * 500, " " * 300 + "x", "ab" * 200]


def _same(compact: CompactTokenizer, tok: Tokenizer, texts: list[str], seed: int = 0) -> None:
    for text in texts:
        assert compact.encode(text) == tok.encode(text, add_special_tokens=False).ids, text
    rnd = random.Random(seed)
    for _ in range(300):
        ids = [rnd.randrange(tok.get_vocab_size() + 3) for _ in range(rnd.randint(1, 10))]
        for skip in (True, False):
            assert compact.decode(ids, skip) == tok.decode(ids, skip_special_tokens=skip), ids


def _trained(pre, normalizer=None, size: int = 600) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre, decoders.ByteLevel()
    if normalizer is not None:
        tok.normalizer = normalizer
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS] * 3, trainer)
    tok.add_tokens(["<think>", "</think>", "<tool▁call>"])  # normalized, not special
    return tok


def _splits(*patterns: str) -> list:
    return [pre_tokenizers.Split(Regex(p), "isolated") for p in patterns]


FAMILIES = {
    "gpt2-bytelevel": lambda: _trained(pre_tokenizers.ByteLevel(add_prefix_space=False)),
    "qwen2": lambda: _trained(pre_tokenizers.Sequence(
        [*_splits(QWEN2), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
        normalizers.NFC()),
    "llama3": lambda: _trained(pre_tokenizers.Sequence(
        [*_splits(LLAMA3), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])),
    "coder": lambda: _trained(pre_tokenizers.Sequence(
        [*_splits(*CODER), pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])),
}


def _written(tok: Tokenizer, folder: Path, ignore_merges: bool = False) -> CompactTokenizer:
    data = json.loads(tok.to_str())
    if ignore_merges:
        data["model"]["ignore_merges"] = True
    (folder / "tokenizer.json").write_text(json.dumps(data))
    assert writer.write_compact_tokenizer(folder / "tokenizer.json", folder / "t.npz") is None
    return CompactTokenizer(folder / "t.npz")


@pytest.mark.parametrize("family", FAMILIES)
def test_each_familys_pre_tokenizer_encodes_and_decodes_as_tokenizers(family, tmp_path):
    tok = FAMILIES[family]()
    compact = _written(tok, tmp_path)
    _same(compact, tok, _random_texts(tok, 400))
    assert compact.token_to_id("</think>") == tok.token_to_id("</think>")
    assert compact.token_to_id("<s>") == tok.token_to_id("<s>") == 0


def test_ignore_merges_takes_whole_words_from_the_vocabulary(tmp_path):
    tok = FAMILIES["llama3"]()
    data = json.loads(tok.to_str())
    data["model"]["ignore_merges"] = True
    ref = Tokenizer.from_str(json.dumps(data))
    _same(_written(tok, tmp_path, ignore_merges=True), ref, _random_texts(ref, 200))


def test_the_deepseek_v3_tokenizer(tmp_path):
    if not REAL.is_dir():
        pytest.skip("shared/reference is not beside the repository")
    assert writer.write_compact_tokenizer(REAL / "tokenizer.json", tmp_path / "t.npz") is None
    compact = CompactTokenizer(tmp_path / "t.npz")
    tok = Tokenizer.from_file(str(REAL / "tokenizer.json"))
    _same(compact, tok, _random_texts(tok, 1500))
    for token in ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜tool▁sep｜>", "Ġthe"):
        assert compact.token_to_id(token) == tok.token_to_id(token) is not None
    assert compact.token_to_id("</think>") is tok.token_to_id("</think>") is None


def test_a_long_word_merges_in_the_same_order_either_way(tmp_path):
    """Words over _LONG_WORD symbols take the heap; both orders give tokenizers' ids."""
    tok = FAMILIES["gpt2-bytelevel"]()
    compact = _written(tok, tmp_path)
    rnd = random.Random(3)
    for _ in range(50):
        word = "".join(rnd.choice("abcdefghé中") for _ in range(rnd.randint(49, 400)))
        syms = [compact._byte_ids[b] for b in word.encode()]
        assert compact._merge_long(list(syms)) == compact._merge(list(syms))
        assert compact.encode(word) == tok.encode(word, add_special_tokens=False).ids


def test_an_unsupported_tokenizer_is_left_to_tokenizers(tmp_path):
    tok = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    (tmp_path / "tokenizer.json").write_text(tok.to_str())
    why = writer.write_compact_tokenizer(tmp_path / "tokenizer.json", tmp_path / "t.npz")
    assert "not BPE" in why and not (tmp_path / "t.npz").exists()


def test_a_translation_that_differs_is_not_kept(tmp_path, monkeypatch):
    """The exporter's own check: a pattern that splits differently leaves no compact file."""
    tok = FAMILIES["qwen2"]()
    (tmp_path / "tokenizer.json").write_text(tok.to_str())
    monkeypatch.setattr(writer, "python_pattern", lambda onig: r"\s+|\S+")
    why = writer.write_compact_tokenizer(tmp_path / "tokenizer.json", tmp_path / "t.npz")
    assert "differs from tokenizers'" in why and not (tmp_path / "t.npz").exists()


@pytest.mark.parametrize("onig", [r"\s+$", r"^\s*\w?", r"[^\s\p{L}]+|\p{N}{2}"])
def test_patterns_split_as_oniguruma_does(onig, tmp_path):
    """Anchors are a line's in Oniguruma; classes take its Unicode tables."""
    split = pre_tokenizers.Split(Regex(onig), "isolated")
    rx = re.compile(writer.python_pattern(onig))
    for text in ["a  \nb \n", " \n\n x\ty  ", "١٢ab 34\u3000\U00010d40\U00010d41!", ""]:
        assert isolated(rx, text) == [p for p, _ in split.pre_tokenize_str(text)], text


def test_a_damaged_file_is_an_artifact_error(tmp_path):
    (tmp_path / "t.npz").write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match="not a compact tokenizer"):
        CompactTokenizer(tmp_path / "t.npz")
    np.savez(tmp_path / "o.npz", spec=np.frombuffer(b'{"version": 9}', np.uint8))
    with pytest.raises(ArtifactError, match="version 9 is not 1"):
        CompactTokenizer(tmp_path / "o.npz")
    spec = np.frombuffer(b'{"version": 1}', np.uint8)  # arrays of the wrong shapes
    np.savez(tmp_path / "s.npz", spec=spec, token_bytes=np.zeros(3, np.uint8),
             token_offsets=np.zeros(2, np.int64), byte_ids=np.zeros(256, np.int32),
             merges=np.zeros(5, np.int32), in_model=np.zeros(1, np.bool_))
    with pytest.raises(ArtifactError, match="not a compact tokenizer"):
        CompactTokenizer(tmp_path / "s.npz")


def test_an_export_reads_its_compact_tokenizer_and_says_the_same(artifacts):
    """An exported artifact names its compact form; the runtime reads that, and chats and
    prompts become the ids tokenizer.json gives."""
    from edgeds.artifact import load_artifact
    from edgeds.tokenizer import TextTokenizer

    art = load_artifact(artifacts("qwen2", "int8"))
    assert art.manifest.tokenizer.compact == writer.COMPACT_FILE
    assert writer.COMPACT_FILE in art.files_for("onnx")
    compact = TextTokenizer(art)
    assert isinstance(compact.tok, CompactTokenizer)
    ref = Tokenizer.from_file(str(art.path("tokenizer.json")))
    chat = [{"role": "user", "content": "def add(a, b):\n    return a + b  # 1234 中文"}]
    text = compact.render_chat(chat)
    assert compact.encode_chat(chat).tolist() == ref.encode(text, add_special_tokens=False).ids
    ids = compact.encode("Hello, world! 12345").tolist()
    assert compact.decode(ids) == ref.decode(ids, skip_special_tokens=True)


def test_doctor_names_the_tokenizer_a_load_reads(artifacts):
    from edgeds.default_model import default_artifact
    from edgeds.doctor import diagnose, format_report

    assert "tokenizer: tokenizer.compact.npz: read as arrays" in format_report(
        diagnose(artifacts("qwen2", "int8")))
    # the embedded model was exported before the compact form
    assert "tokenizer: tokenizer.json: parsed by tokenizers" in format_report(
        diagnose(default_artifact()))
