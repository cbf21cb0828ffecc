"""The chat template's bounds: a syntax error is refused at load with the file and line; a render
that would not end, or would write without end, is refused for that request and the job goes on."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import SHARED
from typer.testing import CliRunner

from edgeds import chat_template
from edgeds.chat_template import ChatTemplate, TemplateLimit
from edgeds.errors import ArtifactError
from edgeds.manifest import seal

MESSAGES = [{"role": "user", "content": "Hi"}]
NESTED = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"


def template(tmp_path, source: str) -> ChatTemplate:
    path = tmp_path / "chat_template.jinja"
    path.write_text(source, encoding="utf-8")
    return ChatTemplate(path)


@pytest.fixture
def quick(monkeypatch):
    """A short time bound, so that the tests of it wait a fraction of a second."""
    monkeypatch.setattr(chat_template, "MAX_SECONDS", 0.2)


def test_the_real_r1_template_renders_within_the_bounds(tmp_path):
    cfg = json.loads((SHARED / "reference/deepseek-v3-tokenizer/tokenizer_config.json").read_text())
    text = template(tmp_path, cfg["chat_template"]).render(messages=MESSAGES,
                                                           add_generation_prompt=True,
                                                           bos_token="<s>", eos_token="</s>")
    assert text.startswith("<s>") and "Hi" in text


def test_a_syntax_error_is_refused_at_load_naming_the_file_and_line(tmp_path):
    with pytest.raises(ArtifactError, match=r"^chat_template.jinja, line 2: unexpected '}'"):
        template(tmp_path, "{% for m in messages %}\n{{ m.content }\n{% endfor %}")
    with pytest.raises(ArtifactError,
                       match=r"^chat_template.jinja, line 2: Unexpected end of template"):
        template(tmp_path, "{% for m in messages %}\n{{ m.content }}\n")


def test_a_template_that_is_not_utf8_is_refused_at_load(tmp_path):
    path = tmp_path / "chat_template.jinja"
    path.write_bytes(b"{{ messages }}\xff")
    with pytest.raises(ArtifactError, match="chat_template.jinja is not UTF-8 text"):
        ChatTemplate(path)


def test_nested_loops_end_with_a_clear_error(tmp_path, quick):
    with pytest.raises(TemplateLimit, match=r"ran past 0.2 s \(a loop that does not end\?\)"):
        template(tmp_path, NESTED).render(messages=MESSAGES)


def test_output_and_values_beyond_the_size_bound_are_refused(tmp_path):
    with pytest.raises(TemplateLimit, match="wrote more than"):
        template(tmp_path, "{% for a in range(100000) %}{{ 'y' * 1000 }}{% endfor %}").render()
    with pytest.raises(TemplateLimit, match="builds a value over"):
        template(tmp_path, "{{ 'x' * 1000000000 }}").render()
    with pytest.raises(TemplateLimit, match="power"):
        template(tmp_path, "{{ 9 ** 999999999 }}").render()
    with pytest.raises(TemplateLimit, match="recursed too deep"):
        template(tmp_path, "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}").render()


def test_rendering_leaves_the_callers_trace_function_in_place(tmp_path):
    import sys

    def tracer(frame, event, arg):
        return None

    sys.settrace(tracer)
    try:
        assert template(tmp_path, "{{ messages[0].content }}").render(messages=MESSAGES) == "Hi"
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(None)


def test_a_template_that_hangs_on_one_request_fails_that_record_alone(artifacts, tmp_path, quick):
    from edgeds.artifact import sha256_file
    from edgeds.cli.main import app

    art = tmp_path / "art"
    shutil.copytree(artifacts("qwen2", "int8"), art)
    source = art / "chat_template.jinja"
    source.write_text("{% if messages[0].content == 'hang' %}" + NESTED
                      + "{% endif %}{{ messages[0].content }}")
    manifest = json.loads((art / "edgeds.json").read_text())
    manifest["files"]["chat_template.jinja"].update(size=source.stat().st_size,
                                                    sha256=sha256_file(source))
    (art / "edgeds.json").write_text(json.dumps(seal(manifest)))
    lines = [{"id": "a", "messages": [{"role": "user", "content": "hang"}]},
             {"id": "b", "messages": [{"role": "user", "content": "fine"}]}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    r = CliRunner().invoke(app,
                           ["infer", str(art), "-i", str(tmp_path / "in.jsonl"), "-o",
                            str(tmp_path / "o.jsonl"), "--max-new-tokens", "2"])
    records = {rec["id"]: rec
               for rec in map(json.loads, (tmp_path / "o.jsonl").read_text().splitlines())}
    assert r.exit_code == 1, r.output  # some records failed
    assert "ran past 0.2 s" in records["a"]["error"]
    assert "error" not in records["b"] and records["b"]["usage"]["completion_tokens"] >= 1
