"""The federated page documents every public name of ``bastion.federated``."""

from __future__ import annotations

from pathlib import Path

import bastion.federated

PAGE = Path(__file__).resolve().parents[2] / "docs" / "federated.md"


def test_every_federated_name_is_on_the_federated_page():
    text = PAGE.read_text()
    missing = [name for name in bastion.federated.__all__ if name not in text]
    assert not missing, f"docs/federated.md does not mention {missing}"
