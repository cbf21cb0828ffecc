"""Tokenizer and chat template from the artifact: its compact tokenizer where the exporter wrote
one (else `tokenizers` with the fast tokenizer file) plus a sandboxed Jinja template.

No transformers: the tokenizer's files and the template are all the runtime needs. The
template runs in Jinja's immutable sandbox within bounds of time and size (chat_template.py).
"""

from __future__ import annotations

import numpy as np

from .artifact import Artifact
from .chat_template import ChatTemplate
from .compact_tokenizer import CompactTokenizer
from .errors import ArtifactError

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ROLES = ("system", "user", "assistant", "tool")


class TextTokenizer:
    def __init__(self, artifact: Artifact):
        meta = artifact.manifest.tokenizer
        if meta.compact:
            self.tok = CompactTokenizer(artifact.path(meta.compact))
            self._ids = self.tok.encode
        else:  # an artifact exported before the compact form, or a tokenizer it cannot hold
            from tokenizers import Tokenizer

            self.tok = tok = Tokenizer.from_file(str(artifact.path(meta.file)))
            self._ids = lambda text: tok.encode(text, add_special_tokens=False).ids
        self.bos_token, self.eos_token = meta.bos_token, meta.eos_token
        self.bos_id = self.tok.token_to_id(self.bos_token) if self.bos_token else None
        self.add_bos = meta.add_bos_token and self.bos_id is not None
        self.template = (
            ChatTemplate(artifact.path(meta.chat_template)) if meta.chat_template else None
        )
        self.reasoning = self.tok.token_to_id(THINK_CLOSE) is not None

    def encode(self, text: str) -> np.ndarray:
        ids = self._ids(text)
        if self.add_bos:
            ids = [self.bos_id, *ids]
        return np.asarray(ids, dtype=np.int64)

    def render_chat(self, messages: list[dict]) -> str:
        if self.template is None:
            raise ArtifactError("this artifact has no chat template; pass raw text prompts")
        return self.template.render(messages=messages, add_generation_prompt=True,
                                    bos_token=self.bos_token or "", eos_token=self.eos_token or "")

    def encode_chat(self, messages: list[dict]) -> np.ndarray:
        # The template writes the BOS token itself, so none is added here.
        return np.asarray(self._ids(self.render_chat(messages)), dtype=np.int64)

    def decode(self, ids) -> str:
        return self.tok.decode(list(map(int, ids)), skip_special_tokens=True)


def split_reasoning(text: str) -> tuple[str | None, str]:
    """DeepSeek-R1 output -> (reasoning, answer). The chat template opens <think> itself, so the
    generated text usually holds only the closing tag; without one there is no reasoning part."""
    if THINK_CLOSE not in text:
        return None, text
    reasoning, answer = text.split(THINK_CLOSE, 1)
    return reasoning.replace(THINK_OPEN, "", 1).strip(), answer.lstrip()
