"""The documentation cannot drift from the code: every hook and public name is documented."""

from __future__ import annotations

import inspect
from pathlib import Path

import bastion
from bastion.plugins import hookspecs

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_every_hook_is_documented():
    text = (DOCS / "plugins.md").read_text()
    hooks = [name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction)
             if name.startswith("bastion_")]  # fmt: skip
    assert hooks, "no hooks found"
    for name in hooks:
        assert f"### `{name}(" in text, f"hook {name} is missing from docs/plugins.md"


def test_every_public_name_is_in_the_api_page():
    text = (DOCS / "api.md").read_text()
    missing = [name for name in bastion.__all__ if name not in text and name != "__version__"]
    assert not missing, f"docs/api.md does not mention {missing}"
