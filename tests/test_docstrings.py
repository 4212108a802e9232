"""Every example in the docstrings of bastion's modules runs and shows what it says."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest
import torch

PACKAGES = ("bastion", "bastion.audit", "bastion.transports", "bastion.stores",
            "bastion.plugins", "bastion.federated")


def _modules() -> list[str]:
    names = set(PACKAGES)
    for package in PACKAGES:
        path = importlib.import_module(package).__path__
        for info in pkgutil.iter_modules(path, package + "."):
            if info.name != "bastion.__main__":
                names.add(info.name)
    return sorted(names)


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} docstring examples failed in {name}"
    assert not hasattr(torch.Tensor, "send"), f"{name}'s examples left torch hooked"
