"""The events a worker records, and the payload digest they carry.

| kind     | when                                   |
| -------- | -------------------------------------- |
| create   | send, op result, function result, move in (also an in-place op: a new version) |
| get      | the object leaves to its requester (origin call: a shipped function's value) |
| move     | the object leaves to another worker    |
| delete   | a pointer was collected                |
| clear    | clear_objects                          |
| denied   | a request refused (permission, auth, privacy budget) |
| release  | private-derived data left under the release policy (allow, or dp: noise, epsilon) |
| policy   | the data owner set the worker's release policy and privacy budget |

>>> import torch
>>> from bastion.events import payload_digest
>>> payload_digest(torch.tensor([1, 2])) == payload_digest(torch.tensor([1, 2]))
True
>>> payload_digest(torch.tensor([1, 2])) == payload_digest(torch.tensor([1, 2], dtype=torch.int32))
False
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import blake3
import torch

EVENT_KINDS: tuple[str, ...] = (
    "create", "get", "move", "delete", "clear", "denied", "release", "policy",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of a worker's event log, oldest first by ``seq`` (1, 2, 3... per worker).

    ``hash`` covers every other field and ``prev_hash`` (the previous event's ``hash``), so
    editing, inserting or deleting a row breaks the chain.
    """

    seq: int
    ts: float
    worker: str
    kind: str
    object_id: int | None = None
    peer: str | None = None
    origin: str | None = None
    op: str | None = None
    inputs: tuple[int, ...] = ()
    dtype: str | None = None
    shape: tuple[int, ...] | None = None
    digest: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    prev_hash: str = ""
    hash: str = ""


_DTYPE_NAMES: dict[torch.dtype, str] = {}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = str(dtype).removeprefix("torch.")
    return name


#: dtypes whose CPU tensors numpy can view directly (no bfloat16, no 8-bit floats).
_NUMPY_VIEWABLE = frozenset({
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.float16, torch.float32, torch.float64,
})  # fmt: skip


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """A zero-copy byte view of a CPU tensor's data (a contiguous copy when it has to)."""
    data = tensor.detach() if tensor.requires_grad else tensor
    if data.numel() == 0:
        return memoryview(b"")
    if (
        data.dtype in _NUMPY_VIEWABLE
        and data.is_cpu
        and data.is_contiguous()
        and not data.is_neg()
    ):
        return memoryview(data.numpy()).cast("B")
    if not data.is_cpu:
        data = data.cpu()
    # A fresh dense copy: no conj or neg bit, unit strides even for one-element tensors.
    data = data.resolve_conj().resolve_neg().clone(memory_format=torch.contiguous_format)
    return memoryview(data.reshape(-1).view(torch.uint8).numpy())


_PREFIXES: dict[tuple[torch.dtype, torch.Size], bytes] = {}
_PARALLEL_HASH_BYTES = 8 << 20


def _prefix(tensor: torch.Tensor) -> bytes:
    key = (tensor.dtype, tensor.shape)
    prefix = _PREFIXES.get(key)
    if prefix is None:
        if len(_PREFIXES) > 4096:
            _PREFIXES.clear()
        prefix = _PREFIXES[key] = f"{dtype_name(key[0])}|{tuple(key[1])}|".encode()
    return prefix


def payload_digest(value: Any) -> str:
    """A BLAKE3 digest (hex) over a tensor's dtype, shape and bytes, or a plain value's repr."""
    if isinstance(value, torch.Tensor):
        data = tensor_bytes(value)
        # Large payloads hash on every core (47 -> 26 ms for 256 MiB here); small ones
        # stay on this thread, where starting a pool would cost more than it saves.
        threads = blake3.blake3.AUTO if data.nbytes >= _PARALLEL_HASH_BYTES else 1
        hasher = blake3.blake3(_prefix(value), max_threads=threads)
        hasher.update(data)
    else:
        hasher = blake3.blake3(f"object|{type(value).__name__}|{value!r}".encode())
    return hasher.hexdigest()
