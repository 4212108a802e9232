"""The wire format: one frame per message or reply, safe to decode whoever sent it.

A frame is a fixed header, a table of buffer lengths, a metadata section in msgpack (plain
data, never pickle) and the tensors' bytes out of band. Integers are little-endian::

    offset 0    HEADER, 16 bytes: magic b"BSTN", version u8, kind u8 (1 message, 2 reply),
                flags u16 (0), meta_len u32, n_buffers u32
    offset 16   the buffer-length table: n_buffers x u64
    then        meta_len bytes of msgpack: the value, each tensor replaced by its dtype,
                shape, requires_grad flag and buffer index
    then        for each buffer i: zero bytes up to the next multiple of ALIGN (64), then
                lengths[i] bytes of tensor data

Padding only ever precedes a buffer: a frame without buffers ends with its meta, any other
with the last byte of its last buffer. A reader on a stream reads the header
(``parse_header``), the table (``frame_layout`` checks the lengths against ``Limits`` before
anything is allocated), the meta, then for each buffer skips ``padding(offset)`` bytes and
reads the buffer into its own ``bytearray``; ``decode_parts`` builds the value.

In the meta, msgpack's scalars (nil, bool, int, float, str, bin) and maps (str or int keys)
stand for themselves. Every array starts with an int tag saying what it is::

    0 [LIST, *items]                      4 [SIZE, *dims]
    1 [TUPLE, *items]                     5 [SLICE, start, stop, step]
    2 [RECORD, code, *fields]             6 [STRUCTSEQ, name, *items]  (torch.return_types)
    3 [TENSOR, dtype name, requires_grad, buffer index, *shape]

A record's code is its index in ``bastion.messages.RECORDS``, its fields those of
``WIRE_FIELDS``. Ext values carry the rest: 1 dtype, 2 device, 3 layout, 4 memory format
(each by name, names from an allowlist), 5 complex (two little-endian float64), 6 Ellipsis.
Decoding checks every tag, code, name, count, length and the nesting depth (every array and
map is one level, but for tensors and sizes); it builds nothing else.

>>> import torch
>>> from bastion.messages import Create
>>> frame = encode_bytes(Create(value=torch.arange(3.0), obj_id=7))
>>> kind, message = decode(frame)
>>> kind == KIND_MESSAGE, message.obj_id, message.value
(True, 7, tensor([0., 1., 2.]))
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import EllipsisType, NoneType
from typing import Any, NamedTuple

import msgpack
import torch
import torch.return_types

from bastion.errors import SerializationError
from bastion.events import dtype_name, tensor_bytes
from bastion.messages import RECORDS, WIRE_FIELDS

__all__ = [
    "encode_split",
    "ALIGN",
    "DEFAULT_LIMITS",
    "HEADER",
    "KIND_MESSAGE",
    "KIND_REPLY",
    "MAGIC",
    "VERSION",
    "FrameHeader",
    "Limits",
    "check_tensor",
    "decode",
    "decode_parts",
    "encode",
    "encode_bytes",
    "frame_layout",
    "padding",
    "parse_header",
]

MAGIC = b"BSTN"
VERSION = 1
KIND_MESSAGE = 1
KIND_REPLY = 2
ALIGN = 64
HEADER = struct.Struct("<4sBBHII")  # magic, version, kind, flags, meta_len, n_buffers


@dataclass(frozen=True)
class Limits:
    """What a decoder accepts; a frame over a limit is refused before it is allocated."""

    max_frame_bytes: int = 4 << 30  #: the whole frame: header, table, meta, padding, buffers
    max_meta_bytes: int = 16 << 20
    max_buffers: int = 4096
    max_depth: int = 32  #: containers inside one another (a tensor or a Size is no container)


DEFAULT_LIMITS = Limits()


class FrameHeader(NamedTuple):
    """The fixed header of a frame, as :func:`parse_header` checked it."""

    kind: int
    meta_len: int
    n_buffers: int

    @property
    def table_len(self) -> int:
        """Bytes of the buffer-length table that follows the header."""
        return 8 * self.n_buffers


def padding(offset: int) -> int:
    """How many zero bytes follow frame offset ``offset`` before the next buffer starts."""
    return -offset % ALIGN


# ------------------------------------------------------------------ codes, allowlists

# Array tags (the first item of every array in the meta).
_LIST, _TUPLE, _RECORD, _TENSOR, _SIZE, _SLICE, _STRUCTSEQ = range(7)
# Ext codes (whole values).
_DTYPE, _DEVICE, _LAYOUT, _MEMORY_FORMAT, _COMPLEX, _ELLIPSIS = range(1, 7)

_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
_COMPLEX_STRUCT = struct.Struct("<dd")


def _by_name(*values: Any) -> dict[str, Any]:
    return {str(v).removeprefix("torch."): v for v in values}


_DTYPES: dict[str, torch.dtype] = _by_name(
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.float16, torch.bfloat16, torch.float32, torch.float64,
    torch.complex64, torch.complex128,
)  # fmt: skip
_LAYOUTS = _by_name(
    torch.strided, torch.sparse_coo, torch.sparse_csr, torch.sparse_csc,
    torch.sparse_bsr, torch.sparse_bsc, torch.jagged,
)  # fmt: skip
_MEMORY_FORMATS = _by_name(
    torch.contiguous_format, torch.channels_last, torch.channels_last_3d, torch.preserve_format
)
_RETURN_TYPES: dict[str, type] = {
    name: cls
    for name, cls in vars(torch.return_types).items()
    if isinstance(cls, type)
    and cls.__module__ == "torch.return_types"
    and hasattr(cls, "n_sequence_fields")
}

# ---------------------------------------------------------------------------- encode

_PLAIN = frozenset({NoneType, bool, float, str, bytes})  # msgpack carries these as they are
_NAMED_EXT: dict[Any, msgpack.ExtType] = {
    value: msgpack.ExtType(code, name.encode())
    for code, table in ((_DTYPE, _DTYPES), (_LAYOUT, _LAYOUTS), (_MEMORY_FORMAT, _MEMORY_FORMATS))
    for name, value in table.items()
}
_ELLIPSIS_EXT = msgpack.ExtType(_ELLIPSIS, b"")


def _fields_getter(cls: type) -> tuple[Callable[[Any], Any], bool]:
    """A getter of ``cls``'s wire fields, and whether it returns one field rather than a tuple."""
    names = WIRE_FIELDS[cls]
    if not names:
        return (lambda obj: ()), False
    return operator.attrgetter(*names), len(names) == 1


_RECORD_OUT = {cls: (code, *_fields_getter(cls)) for code, cls in enumerate(RECORDS)}


def _wire(obj: Any, room: int, bufs: list[memoryview]) -> Any:
    """``obj`` as msgpack-ready data; ``room``: how many containers may still nest in it."""
    kind = type(obj)
    if kind in _PLAIN or (kind is int and _I64_MIN <= obj <= _I64_MAX):
        return obj
    record = _RECORD_OUT.get(kind)
    if record is not None:  # records, tuples and lists: the bulk of every message, inline
        code, get, single = record
        out, items = [_RECORD, code], ((get(obj),) if single else get(obj))
    elif kind is tuple:
        out, items = [_TUPLE], obj
    elif kind is list:
        out, items = [_LIST], obj
    else:
        leaf = _LEAVES_OUT.get(kind)
        if leaf is not None:
            return leaf(obj)
        return _wire_container(obj, room, bufs)
    if room <= 0:
        raise _too_deep()
    room -= 1
    append = out.append
    for x in items:
        k = type(x)
        append(
            x if k in _PLAIN or (k is int and _I64_MIN <= x <= _I64_MAX) else _wire(x, room, bufs)
        )
    return out


def _wire_container(obj: Any, room: int, bufs: list[memoryview]) -> Any:
    kind = type(obj)
    if kind is torch.Size:  # tensors and sizes hold only scalars: not a nesting level
        if any(d < 0 for d in obj):
            raise _cannot(obj, f"{obj} has a negative dimension")
        return [_SIZE, *obj]
    if isinstance(obj, torch.Tensor):
        return _wire_tensor(obj, bufs)
    wire = _CONTAINERS_OUT.get(kind)
    if wire is None:
        if kind is int:
            raise SerializationError(f"cannot serialize int {obj}: it does not fit in 64 bits")
        if _RETURN_TYPES.get(kind.__name__) is not kind:
            raise _cannot(obj, _advice(obj))
        wire = _wire_structseq
    if room <= 0:
        raise _too_deep()
    return wire(obj, room - 1, bufs)


def _wire_named(obj: Any) -> msgpack.ExtType:
    ext = _NAMED_EXT.get(obj)
    if ext is None:
        raise _cannot(obj, f"{obj} is not among the standard ones bastion carries")
    return ext


def _wire_dict(obj: dict, room: int, bufs: list[memoryview]) -> dict:
    out = {}
    for key, value in obj.items():
        if type(key) is not str and not (type(key) is int and _I64_MIN <= key <= _I64_MAX):
            raise _cannot(obj, f"a {type(key).__qualname__} key ({key!r}); keys are str or int")
        k = type(value)
        plain = k in _PLAIN or (k is int and _I64_MIN <= value <= _I64_MAX)
        out[key] = value if plain else _wire(value, room, bufs)
    return out


def _wire_slice(obj: slice, room: int, bufs: list[memoryview]) -> list:
    return [
        _SLICE,
        _wire(obj.start, room, bufs),
        _wire(obj.stop, room, bufs),
        _wire(obj.step, room, bufs),
    ]


def _wire_structseq(obj: tuple, room: int, bufs: list[memoryview]) -> list:
    return [_STRUCTSEQ, type(obj).__name__, *[_wire(x, room, bufs) for x in obj]]


def check_tensor(t: torch.Tensor) -> str:
    """The wire name of ``t``'s dtype, or ``SerializationError`` when ``t`` is a tensor that
    neither the wire nor the event log carries faithfully (sparse, nested, quantized, meta,
    an unknown dtype). Workers refuse such values before recording anything.

    >>> check_tensor(torch.ones(2))
    'float32'
    """
    if t.layout is not torch.strided or t.is_nested or t.is_quantized:
        what = "nested" if t.is_nested else "quantized" if t.is_quantized else str(t.layout)
        raise _cannot(t, f"a {what} tensor is not carried; send t.to_dense() or t.dequantize()")
    name = dtype_name(t.dtype)
    if name not in _DTYPES:
        raise _cannot(t, f"dtype {t.dtype} is not carried; convert it with t.to(...)")
    if t.device.type == "meta":
        raise _cannot(t, "a tensor on the meta device has no data")
    return name


def _wire_tensor(t: torch.Tensor, bufs: list[memoryview]) -> list:
    name = check_tensor(t)
    requires_grad = t.requires_grad
    if t.is_neg() or (t.numel() == 1 and t.dim() and t.stride(-1) != 1):  # tensor_bytes fails
        t = t.detach().resolve_neg().clone(memory_format=torch.contiguous_format)
    bufs.append(tensor_bytes(t))  # zero-copy when contiguous; CUDA data comes to the CPU
    return [_TENSOR, name, requires_grad, len(bufs) - 1, *t.shape]


_LEAVES_OUT: dict[type, Callable[[Any], Any]] = {
    torch.dtype: _wire_named,
    torch.layout: _wire_named,
    torch.memory_format: _wire_named,
    complex: lambda obj: msgpack.ExtType(_COMPLEX, _COMPLEX_STRUCT.pack(obj.real, obj.imag)),
    torch.device: lambda obj: msgpack.ExtType(_DEVICE, str(obj).encode()),
    EllipsisType: lambda obj: _ELLIPSIS_EXT,
}
_CONTAINERS_OUT: dict[type, Callable[[Any, int, list], Any]] = {
    dict: _wire_dict,
    slice: _wire_slice,
}


def _cannot(obj: object, advice: str) -> SerializationError:
    kind = type(obj)
    return SerializationError(f"cannot serialize {kind.__module__}.{kind.__qualname__}: {advice}")


def _advice(obj: object) -> str:
    if callable(obj):
        return "code is not data; ship functions with CallFunction to a worker with allow_code"
    if type(obj).__module__ == "numpy":
        return "convert it with torch.from_numpy(...) or .tolist()"
    return (
        "bastion carries None, bool, int, float, complex, str, bytes, list, tuple, dict, "
        "slice, Ellipsis, torch tensors, sizes, dtypes, devices and return types; "
        "convert it to one of those"
    )


def _too_deep() -> SerializationError:
    return SerializationError(
        "cannot serialize: the value nests containers deeper than Limits.max_depth; flatten it"
    )


def encode_split(
    obj: Any, kind: int = KIND_MESSAGE, *, limits: Limits = DEFAULT_LIMITS
) -> tuple[bytes, list[memoryview]]:
    """``obj`` as header, length table and meta in one ``bytes``, and its tensors' bytes.

    For transports that carry buffers their own way (shared memory); :func:`encode` lays
    the same pieces out as one frame.
    """
    if kind != KIND_MESSAGE and kind != KIND_REPLY:
        raise SerializationError(f"frame kind {kind!r} is neither KIND_MESSAGE nor KIND_REPLY")
    bufs: list[memoryview] = []
    try:
        meta = msgpack.packb(_wire(obj, limits.max_depth, bufs))
    except SerializationError:
        raise
    except (TypeError, ValueError, OverflowError, RuntimeError) as exc:  # torch, msgpack
        raise SerializationError(f"cannot serialize {type(obj).__qualname__}: {exc}") from exc
    n = len(bufs)
    if len(meta) > limits.max_meta_bytes or n > limits.max_buffers:
        raise SerializationError(
            f"the frame would hold {len(meta)} bytes of metadata and {n} tensors, over "
            f"Limits ({limits.max_meta_bytes} bytes, {limits.max_buffers} tensors): send "
            "large data as tensors, or split it over several messages"
        )
    lengths = [buf.nbytes for buf in bufs]
    head = HEADER.pack(MAGIC, VERSION, kind, 0, len(meta), n)
    head = b"".join((head, struct.pack(f"<{n}Q", *lengths), meta)) if n else head + meta
    offset = len(head)
    for length in lengths:
        offset += padding(offset) + length
    if offset > limits.max_frame_bytes:
        raise SerializationError(
            f"the frame would be {offset} bytes, over Limits.max_frame_bytes "
            f"({limits.max_frame_bytes}); split the data over several messages"
        )
    return head, bufs


def encode(
    obj: Any, kind: int = KIND_MESSAGE, *, limits: Limits = DEFAULT_LIMITS
) -> list[bytes | memoryview]:
    """The parts of one frame carrying ``obj``: their concatenation is the frame.

    A contiguous CPU tensor's part is a view of its data, not a copy.
    """
    head, bufs = encode_split(obj, kind, limits=limits)
    if not bufs:
        return [head]
    offset = len(head)
    parts: list[bytes | memoryview] = [head + bytes(padding(offset))]
    offset += padding(offset)
    for i, buf in enumerate(bufs):
        if i and (pad := padding(offset)):
            parts.append(bytes(pad))
            offset += pad
        parts.append(buf)
        offset += buf.nbytes
    return parts


def encode_bytes(
    obj: Any, kind: int = KIND_MESSAGE, *, limits: Limits = DEFAULT_LIMITS
) -> bytearray:
    """The frame carrying ``obj``, in one writable buffer (what :func:`decode` takes)."""
    parts = encode(obj, kind, limits=limits)
    return bytearray(parts[0]) if len(parts) == 1 else bytearray().join(parts)


# ---------------------------------------------------------------------------- decode

BytesLike = bytes | bytearray | memoryview  # memoryviews of any contiguous buffer too


def parse_header(data: BytesLike, limits: Limits = DEFAULT_LIMITS) -> FrameHeader:
    """Check the fixed header at the start of ``data`` (magic, version, kind, limits)."""
    return FrameHeader(*_check_header(data, limits))


def _check_header(data: BytesLike, limits: Limits) -> tuple[int, int, int]:
    if len(data) < HEADER.size:
        raise _bad(f"truncated: {len(data)} bytes, a header alone is {HEADER.size}")
    magic, version, kind, flags, meta_len, n_buffers = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise _bad(f"magic is {bytes(magic)!r}, expected {MAGIC!r}: not a bastion frame")
    if version != VERSION:
        raise _bad(f"wire version {version}, this bastion speaks {VERSION}; upgrade the older side")
    if (kind != KIND_MESSAGE and kind != KIND_REPLY) or flags:
        raise _bad(f"unknown kind {kind} or flags {flags:#x}")
    if meta_len > limits.max_meta_bytes:
        raise _bad(f"{meta_len} bytes of metadata, over Limits.max_meta_bytes")
    if n_buffers > limits.max_buffers:
        raise _bad(f"{n_buffers} buffers, over Limits.max_buffers")
    return kind, meta_len, n_buffers


def frame_layout(
    header: FrameHeader, table: BytesLike, limits: Limits = DEFAULT_LIMITS
) -> list[int]:
    """The buffer lengths ``table`` declares, once the whole frame they make fits ``limits``."""
    n = header.n_buffers
    if len(table) != 8 * n:
        raise _bad(f"buffer table of {len(table)} bytes for {n} buffers (8 bytes each)")
    lengths = list(struct.unpack(f"<{n}Q", table))
    offset = HEADER.size + 8 * n + header.meta_len
    for length in lengths:
        offset += padding(offset) + length
    if offset > limits.max_frame_bytes:
        raise _bad(f"the table declares a {offset}-byte frame, over Limits.max_frame_bytes")
    return lengths


def decode(frame: BytesLike, limits: Limits = DEFAULT_LIMITS) -> tuple[int, Any]:
    """``(kind, value)`` from one whole frame, as :func:`encode_bytes` makes it.

    Decoded tensors share memory with ``frame`` when it is writable (a read-only frame's
    buffers are copied).
    """
    try:
        view = memoryview(frame).cast("B")
    except (TypeError, ValueError) as exc:
        raise _bad(
            f"a frame is a contiguous bytes-like object, not {type(frame).__name__}"
        ) from exc
    kind, meta_len, n = _check_header(view, limits)
    start = HEADER.size + 8 * n
    offset = start + meta_len
    buffers = []
    if n:
        if len(view) < offset:
            raise _bad(f"truncated: {len(view)} bytes, the header announces at least {offset}")
        header = FrameHeader(kind, meta_len, n)
        for length in frame_layout(header, view[HEADER.size : start], limits):
            offset += padding(offset)
            buffers.append(_writable(view[offset : offset + length]))
            offset += length
    if offset != len(view):
        raise _bad(f"{len(view)} bytes where the header and table announce {offset}")
    return kind, _decode_meta(view[start : start + meta_len], buffers, limits.max_depth)


def decode_parts(
    meta: BytesLike, buffers: Sequence[BytesLike], limits: Limits = DEFAULT_LIMITS
) -> Any:
    """The value from a frame's meta section and its buffers, each used by exactly one tensor.

    Tensors share memory with writable buffers (read-only ones are copied).
    """
    if len(meta) > limits.max_meta_bytes or len(buffers) > limits.max_buffers:
        raise _bad(f"{len(meta)} bytes of metadata and {len(buffers)} buffers, over Limits")
    return _decode_meta(meta, [_writable(buf) for buf in buffers], limits.max_depth)


def _decode_meta(meta: BytesLike, bufs: list[memoryview], max_depth: int) -> Any:
    # No explicit max_*_len: unpackb already refuses any str, bin, ext, array or map declared
    # longer than len(meta) before allocating it, a tighter bound than Limits.max_meta_bytes.
    used = [False] * len(bufs)
    try:
        tree = msgpack.unpackb(meta, ext_hook=_ext_hook, strict_map_key=False)
        value = _build(tree, max_depth, bufs, used)
    except SerializationError:
        raise
    except Exception as exc:  # whatever the bytes are, the caller sees one error type
        raise _bad(f"the metadata does not decode ({type(exc).__name__}: {exc})") from exc
    if not all(used):
        raise _bad(f"buffer {used.index(False)} belongs to no tensor")
    return value


def _writable(buf: BytesLike) -> memoryview:
    try:
        view = memoryview(buf).cast("B")
    except (TypeError, ValueError) as exc:
        raise _bad(f"a buffer is a contiguous bytes-like object, not {type(buf).__name__}") from exc
    return memoryview(bytearray(view)) if view.readonly else view


def _bad(what: str) -> SerializationError:
    return SerializationError(f"bad frame: {what}")


def _named_leaf(table: dict[str, Any], what: str) -> Callable[[bytes], Any]:
    by_bytes = {name.encode(): value for name, value in table.items()}

    def leaf(data: bytes) -> Any:
        value = by_bytes.get(data)
        if value is None:
            raise _bad(f"unknown {what} {data[:64]!r}")
        return value

    return leaf


def _complex(data: bytes) -> complex:
    if len(data) != _COMPLEX_STRUCT.size:
        raise _bad(f"a complex number is {_COMPLEX_STRUCT.size} bytes, not {len(data)}")
    return complex(*_COMPLEX_STRUCT.unpack(data))


def _device(data: bytes) -> torch.device:
    try:
        return torch.device(data.decode("ascii"))
    except (UnicodeDecodeError, RuntimeError, ValueError) as exc:
        raise _bad(f"unknown device {data[:64]!r}") from exc


def _ellipsis(data: bytes) -> EllipsisType:
    if data:
        raise _bad(f"Ellipsis with {len(data)} bytes of payload")
    return ...


_LEAVES: dict[int, Callable[[bytes], Any]] = {
    _DTYPE: _named_leaf(_DTYPES, "dtype"),
    _LAYOUT: _named_leaf(_LAYOUTS, "layout"),
    _MEMORY_FORMAT: _named_leaf(_MEMORY_FORMATS, "memory format"),
    _DEVICE: _device,
    _COMPLEX: _complex,
    _ELLIPSIS: _ellipsis,
}


def _ext_hook(code: int, data: bytes) -> Any:
    leaf = _LEAVES.get(code)
    if leaf is None:
        raise _bad(f"unknown ext code {code}")
    return leaf(data)


# Types a decoded leaf may have (msgpack scalars, ext values): nothing more to build.
_FINAL = frozenset(
    {NoneType, bool, float, str, bytes, complex, EllipsisType,
     torch.dtype, torch.device, torch.layout, torch.memory_format}
)  # fmt: skip


def _build(node: Any, room: int, bufs: list[memoryview], used: list[bool]) -> Any:
    """The value a decoded msgpack node stands for; ``room``: containers that may still nest."""
    kind = type(node)
    if kind is list:
        tag = node[0] if node else None
        if type(tag) is not int:
            raise _bad(f"an array starts with {tag!r}, not a tag")
        if room <= 0 and tag != _TENSOR and tag != _SIZE:
            raise _bad("containers nest deeper than Limits.max_depth")
        room -= 1
        if tag == _RECORD:  # records, tuples and lists: the bulk of every message, inline
            cls = _record_class(node)
            del node[:2]
        elif tag == _TUPLE or tag == _LIST:
            del node[0]
        else:
            build = _ARRAYS.get(tag)
            if build is None:
                raise _bad(f"unknown array tag {tag}")
            return build(node, room, bufs, used)
        for i, x in enumerate(node):
            k = type(x)
            if k not in _FINAL and (k is not int or x > _I64_MAX):
                node[i] = _build(x, room, bufs, used)
        if tag == _LIST:
            return node
        return tuple(node) if tag == _TUPLE else cls(*node)
    if kind is dict:
        if room <= 0:
            raise _bad("containers nest deeper than Limits.max_depth")
        for key, value in node.items():
            if type(key) is not str and (type(key) is not int or key > _I64_MAX):
                raise _bad(f"a dict key is a {type(key).__qualname__}, not str or int")
            k = type(value)
            if k not in _FINAL and (k is not int or value > _I64_MAX):
                node[key] = _build(value, room - 1, bufs, used)
        return node
    if kind in _FINAL or (kind is int and node <= _I64_MAX):
        return node
    if kind is int:
        raise _bad(f"int {node} does not fit in 64 signed bits")
    raise _bad(f"the metadata holds a {kind.__qualname__}, which bastion never sends")


def _record_class(node: list) -> type:
    code = node[1] if len(node) > 1 else None
    if type(code) is not int or not 0 <= code < len(RECORDS):
        raise _bad(f"unknown record code {code!r} (this bastion knows {len(RECORDS)} records)")
    cls = RECORDS[code]
    if len(node) - 2 != len(WIRE_FIELDS[cls]):
        raise _bad(f"{cls.__name__} with {len(node) - 2} fields, expected {len(WIRE_FIELDS[cls])}")
    return cls


def _dims(dims: list, what: str) -> list[int]:
    if not all(type(d) is int and 0 <= d <= _I64_MAX for d in dims):
        raise _bad(f"{what} of {dims[:8]!r}")
    return dims


def _build_size(node: list, room: int, bufs: list, used: list) -> torch.Size:
    return torch.Size(_dims(node[1:], "a torch.Size"))


def _build_slice(node: list, room: int, bufs: list, used: list) -> slice:
    if len(node) != 4:
        raise _bad(f"a slice of {len(node) - 1} items, not 3")
    return slice(*(_build(x, room, bufs, used) for x in node[1:]))


def _build_structseq(node: list, room: int, bufs: list, used: list) -> tuple:
    name = node[1] if len(node) > 1 else None
    cls = _RETURN_TYPES.get(name) if type(name) is str else None
    if cls is None:
        raise _bad(f"unknown torch.return_types name {name!r}")
    if len(node) - 2 != cls.n_sequence_fields:
        raise _bad(f"torch.return_types.{name} of {len(node) - 2} items")
    return cls([_build(x, room, bufs, used) for x in node[2:]])


def _build_tensor(node: list, room: int, bufs: list[memoryview], used: list[bool]) -> torch.Tensor:
    if len(node) < 4:
        raise _bad(f"a tensor of {len(node) - 1} items, not 3 and its shape")
    name, requires_grad, index, shape = node[1], node[2], node[3], _dims(node[4:], "a shape")
    dtype = _DTYPES.get(name) if type(name) is str else None
    if dtype is None:
        raise _bad(f"unknown tensor dtype {name!r}")
    if type(requires_grad) is not bool or (
        requires_grad and not (dtype.is_floating_point or dtype.is_complex)
    ):
        raise _bad(f"requires_grad={requires_grad!r} for a {name} tensor")
    if type(index) is not int or not 0 <= index < len(bufs) or used[index]:
        raise _bad(f"tensor buffer {index!r} is missing or already used")
    buf = bufs[index]
    numel = 1
    for d in shape:
        numel *= d
    if len(buf) != numel * dtype.itemsize:
        raise _bad(f"a {name} tensor of shape {tuple(shape)} is {numel * dtype.itemsize} bytes, "
                   f"its buffer {len(buf)}")  # fmt: skip
    used[index] = True
    if numel == 0:
        tensor = torch.empty(shape, dtype=dtype)
    else:
        raw = torch.frombuffer(buf, dtype=torch.uint8)  # shares the buffer's memory
        if dtype is torch.bool and bool((raw > 1).any()):
            raise _bad("a bool tensor holds bytes other than 0 and 1")
        tensor = raw.view(dtype).reshape(shape)
    return tensor.requires_grad_() if requires_grad else tensor


_ARRAYS: dict[int, Callable[[list, int, list, list], Any]] = {
    _TENSOR: _build_tensor,
    _SIZE: _build_size,
    _SLICE: _build_slice,
    _STRUCTSEQ: _build_structseq,
}
