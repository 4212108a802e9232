"""``python -m examples.digits`` runs from the repository root, even beside packages that
install a top-level ``examples`` of their own (``examples/`` is a regular package)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_python_dash_m_examples_digits_runs_the_example():
    result = subprocess.run(
        [sys.executable, "-m", "examples.digits", "--rounds", "2", "--workers", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("final accuracy")
