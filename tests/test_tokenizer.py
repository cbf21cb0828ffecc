"""The runtime tokenizer and chat template against the real DeepSeek-V3/R1 tokenizer."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
from conftest import SHARED

from edgeds.artifact import Artifact
from edgeds.manifest import TokenizerFiles
from edgeds.tokenizer import TextTokenizer, split_reasoning

REAL = SHARED / "reference/deepseek-v3-tokenizer"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    if not REAL.is_dir():
        pytest.skip("shared/reference is not beside the repository")
    root = tmp_path_factory.mktemp("tok")
    shutil.copyfile(REAL / "tokenizer.json", root / "tokenizer.json")
    cfg = json.loads((REAL / "tokenizer_config.json").read_text())
    (root / "chat_template.jinja").write_text(cfg["chat_template"])
    def token(value):
        return value["content"] if isinstance(value, dict) else value

    files = TokenizerFiles("tokenizer.json", "chat_template.jinja", token(cfg["bos_token"]),
                           token(cfg["eos_token"]), cfg.get("add_bos_token", False))
    # the tokenizer's part alone
    return TextTokenizer(Artifact(root, SimpleNamespace(tokenizer=files)))


def test_chat_template_renders_the_r1_format(tok):
    text = tok.render_chat([{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": "What is 2+2?"}])
    assert text.startswith("<｜begin▁of▁sentence｜>Be brief.")
    assert "<｜User｜>What is 2+2?<｜Assistant｜>" in text


def test_special_tokens_are_single_ids(tok):
    ids = tok.encode_chat([{"role": "user", "content": "hi"}]).tolist()
    assert ids[0] == 0  # <｜begin▁of▁sentence｜>
    assert tok.tok.token_to_id("<｜User｜>") in ids
    assert tok.tok.token_to_id("<｜Assistant｜>") in ids
    assert ids.count(0) == 1  # the template writes BOS; encode adds no second one


def test_raw_text_round_trips(tok):
    text = "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # ünïcode ✓"
    ids = tok.encode(text)
    assert tok.decode(ids) == text


def test_reasoning_split():
    assert (split_reasoning("Let me think.\n</think>\n\nThe answer is 4.")
            == ("Let me think.", "The answer is 4."))
    assert split_reasoning("<think>hmm</think>4") == ("hmm", "4")
    assert split_reasoning("no tags here") == (None, "no tags here")


def test_think_tags_survive_decoding(tok):
    ids = tok.tok.encode("<think>\nhmm\n</think>\n\n4", add_special_tokens=False).ids
    reasoning, answer = split_reasoning(tok.decode(ids))
    assert (reasoning, answer) == ("hmm", "4")
