"""What the CLI says when a command fails: a user's mistake is one line and exit 2; anything else
is a bug, reported as one "internal error" line naming the log file that holds the traceback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeds.cli.main import EXIT_INTERNAL, EXIT_USAGE, app


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_a_bug_is_one_internal_error_line_naming_its_traceback_log(monkeypatch, tmp_path):
    """A real defect inside a command (here diagnose() given a hardware record it cannot read)
    is not the user's: it is not shown as "error:", and its traceback is kept in a file."""
    import edgeds.doctor

    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGEDS_CACHE_DIR", str(cache))
    monkeypatch.setattr(edgeds.doctor, "detect", lambda: None)
    r = invoke("doctor")
    assert r.exit_code == EXIT_INTERNAL
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("edgeds: internal error: AttributeError: 'NoneType' object has no ")
    [log] = re.findall(r"the traceback is in (\S+);", line)
    assert Path(log).parent == cache / "logs"
    text = Path(log).read_text()
    assert "Traceback (most recent call last)" in text and "in diagnose" in text


def test_a_value_error_from_a_bug_is_no_longer_a_user_error(monkeypatch, tmp_path):
    """Every ValueError used to be printed as the user's mistake, hiding bugs that raise one."""
    import edgeds.doctor

    monkeypatch.setenv("EDGEDS_CACHE_DIR", str(tmp_path))

    def broken(*a, **k):
        return int("not a number")  # a defect, not anything the user gave

    monkeypatch.setattr(edgeds.doctor, "choose_profile", broken)
    r = invoke("doctor")
    assert r.exit_code == EXIT_INTERNAL
    assert r.stderr.startswith("edgeds: internal error: ValueError: invalid literal for int()")
    assert len(list((tmp_path / "logs").iterdir())) == 1


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback_instead(monkeypatch, tmp_path, how):
    import edgeds.doctor

    monkeypatch.setenv("EDGEDS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(edgeds.doctor, "detect", lambda: None)
    if how == "env":
        monkeypatch.setenv("EDGEDS_DEBUG", "1")
    r = invoke(*(["--debug"] if how == "flag" else []), "doctor")
    assert isinstance(r.exception, AttributeError)  # raised through: Python prints its traceback
    assert "internal error" not in r.output
    assert not (tmp_path / "logs").exists()


def test_an_unwritable_cache_folder_still_names_a_log(monkeypatch, tmp_path):
    import edgeds.doctor

    (tmp_path / "file").write_text("")
    monkeypatch.setenv("EDGEDS_CACHE_DIR", str(tmp_path / "file"))  # a file: no logs folder in it
    monkeypatch.setattr(edgeds.doctor, "detect", lambda: None)
    r = invoke("doctor")
    assert r.exit_code == EXIT_INTERNAL
    [log] = re.findall(r"the traceback is in (\S+);", r.stderr)
    assert Path(log).is_file() and "AttributeError" in Path(log).read_text()


# {tmp} is the test's folder, {in} a good input file in it, {out} an output path.
USER_MISTAKES = {
    "a bad flag value": "infer -i {in} -o {out} --batch-size -1",
    "no input": "infer -o {out}",
    "a missing input file": "infer -i {tmp}/nope.jsonl -o {out}",
    "an unknown profile": "infer -i {in} -o {out} --profile no-such-profile",
    "a missing artifact": "infer {tmp}/no-artifact -i {in} -o {out}",
    "bad sampling": "infer -i {in} -o {out} --temperature -1",
    "an unknown backend": "infer -i {in} -o {out} --backend tensorflow",
    "--tensorrt without an artifact": "doctor --tensorrt",
    "a folder that is no artifact": "doctor {tmp}",
    "a missing checkpoint": "export {tmp}/no-checkpoint -o {tmp}/art",
}


@pytest.mark.parametrize("mistake", list(USER_MISTAKES))
def test_a_user_mistake_is_one_error_line_and_exit_2(mistake, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEDS_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "in.jsonl").write_text('{"id": 1, "prompt": "x"}\n')
    words = {"{tmp}": tmp_path, "{in}": tmp_path / "in.jsonl", "{out}": tmp_path / "out.jsonl"}
    args = USER_MISTAKES[mistake].split()
    for key, value in words.items():
        args = [a.replace(key, str(value)) for a in args]
    r = invoke(*args)
    assert r.exit_code == EXIT_USAGE, r.output
    lines = r.stderr.strip().splitlines()  # a note may come first ("no model given; ...")
    assert lines[-1].startswith("edgeds: error: ") and "Traceback" not in r.stderr, r.stderr
    assert sum("error" in line for line in lines) == 1
    assert not (tmp_path / "cache" / "logs").exists()
    assert not (tmp_path / "out.jsonl").exists()


def test_every_error_the_user_can_fix_is_a_user_error():
    """The exporter's, the runtime's and the batch job's: the CLI maps them by this one base."""
    from edgeds.batch.output import OutputBusy, OutputError, ResumeError
    from edgeds.errors import ArtifactError, ConfigError, UsageError, UserError
    from edgeds.sampling import SamplingError
    from edgeds_export.errors import ExportError

    for cls in (ArtifactError, ConfigError, UsageError, SamplingError, ExportError, OutputError,
                OutputBusy, ResumeError):
        assert issubclass(cls, UserError), cls
    assert issubclass(UsageError, ValueError) and issubclass(SamplingError, ValueError)
    assert OutputError.exit_code == 3 and UserError.exit_code == EXIT_USAGE
