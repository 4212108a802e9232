"""TorchHook, the public surface, errors, and the packaging rules."""

from __future__ import annotations

import importlib.util
import inspect
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import bastion as sy


def test_hook_adds_and_unhook_removes_the_methods():
    assert not hasattr(torch.Tensor, "send")
    hook = sy.TorchHook(torch)
    assert hasattr(torch.Tensor, "send") and hasattr(nn.Module, "send")
    assert hook.local_worker is sy.local_worker
    hook.unhook()
    assert not hasattr(torch.Tensor, "send") and not hasattr(nn.Module, "get")
    hook.unhook()  # twice is harmless


def test_methods_stay_until_the_last_hook_is_unhooked():
    first, second = sy.TorchHook(torch), sy.TorchHook(torch)
    first.unhook()
    assert hasattr(torch.Tensor, "send")
    second.unhook()
    assert not hasattr(torch.Tensor, "send")


def test_pointers_keep_working_after_unhook():
    hook = sy.TorchHook(torch)
    worker = sy.VirtualWorker(hook, id="after-unhook")
    p = torch.tensor([2]).send(worker)
    hook.unhook()
    assert (p * 2).get().item() == 4
    worker.close()


def test_bad_arguments_get_clear_errors():
    with pytest.raises(sy.ConfigurationError, match="TorchHook"):
        sy.TorchHook(inspect)
    with pytest.raises(sy.ConfigurationError, match="TorchHook"):
        sy.VirtualWorker("M1")
    with pytest.raises(sy.ConfigurationError, match="worker id"):
        sy.VirtualWorker(id="has space")
    with pytest.raises(sy.ConfigurationError):
        sy.VirtualWorker(id="x", durability="sometimes")
    hook = sy.TorchHook(torch)
    try:
        with pytest.raises(sy.ConfigurationError, match="needs a worker"):
            torch.ones(1).send("M1")
    finally:
        hook.unhook()


def test_virtual_worker_without_hook_and_default_id():
    worker = sy.VirtualWorker()
    assert worker.id.startswith("worker-")
    assert worker.send(torch.ones(1)).get().item() == 1.0
    worker.close()


def test_every_error_is_a_bastion_error():
    for name in ("LocationError", "ObjectNotFoundError", "PermissionDenied",
                 "SerializationError", "RemoteValueError", "ConfigurationError",
                 "ConnectionLost", "TransportError", "RemoteError", "UnsupportedOperation"):
        assert issubclass(getattr(sy, name), sy.BastionError), name


def test_public_api_is_documented_and_typed():
    for name in sy.__all__:
        obj = getattr(sy, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__, f"{name} has no docstring"
        if inspect.isfunction(obj):
            assert "return" in obj.__annotations__, f"{name} has no return annotation"


def test_the_folder_names_are_not_importable_from_elsewhere(tmp_path):
    code = "import importlib.util as u; print([u.find_spec(n) for n in ('core', 'stores')])"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[None, None]"
    assert importlib.util.find_spec("bastion.transports.memory") is not None
