"""The demo: the seed tutorial through the CLI."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from bastion.cli import cli


def test_demo_runs_the_seed_tutorial():
    result = CliRunner().invoke(cli, ["demo"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[-1] == "seed tutorial: all steps hold"
    assert any(line.startswith("Objects in M1 machine before .get():  {") for line in lines)
    assert "Objects in M1 machine after .get():  {}" in lines
    assert any("LocationError" in line and "M1" in line and "M2" in line for line in lines)
    assert "Statement: The location of both variable is the same:  False" in lines
    assert any(line.startswith("M1: create") and "move" in line for line in lines)


def test_demo_serialized():
    result = CliRunner().invoke(cli, ["demo", "--serialize"])
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith("seed tutorial: all steps hold")


def test_python_dash_m_bastion():
    out = subprocess.run([sys.executable, "-m", "bastion", "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out.startswith("bastion, version")
