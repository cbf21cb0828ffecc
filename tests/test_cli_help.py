"""What a new user reads first: `edgeds --version` and honest `--help` pages."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import edgeds
from edgeds.cli.main import app


def test_version():
    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"edgeds {edgeds.__version__}"


@pytest.mark.parametrize("command", ["export", "infer", "doctor", "bench", "compare"])
def test_examples_are_shown_line_by_line(command):
    r = CliRunner().invoke(app, [command, "--help"], terminal_width=100)
    assert r.exit_code == 0
    lines = r.output.splitlines()
    start = lines.index("  Examples:")
    assert all(line.strip().startswith("edgeds ") for line in lines[start + 1:start + 3])


@pytest.mark.parametrize("command", ["export", "bench"])
def test_no_default_of_0_where_0_means_the_automatic_choice(command):
    r = CliRunner().invoke(app, [command, "--help"], terminal_width=100)
    assert "[default: 0]" not in r.output
