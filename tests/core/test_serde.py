"""The wire format: exact round-trips, the documented frame layout, and bad frames refused."""

from __future__ import annotations

import builtins
import io
import math
import pickle
import struct
import warnings
from collections.abc import Sequence
from dataclasses import is_dataclass
from typing import Any

import msgpack
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bastion import serde
from bastion.errors import SerializationError
from bastion.messages import (
    RECORDS,
    WIRE_FIELDS,
    BudgetQuery,
    CallFunction,
    Clear,
    Create,
    Delete,
    ErrorInfo,
    Get,
    ListObjects,
    Move,
    ObjectSpec,
    Ref,
    Reply,
    RunOp,
    Search,
    Tag,
    TensorSpec,
)
from bastion.serde import HEADER, MAGIC, Limits, decode, decode_parts, encode, encode_bytes

I64 = st.integers(-(2**63), 2**63 - 1)
DTYPES = [
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.float16, torch.bfloat16, torch.float32, torch.float64,
    torch.complex64, torch.complex128,
]  # fmt: skip
# The meta's array tags and ext codes, as the module docstring documents them.
LIST, TUPLE, RECORD, TENSOR = 0, 1, 2, 3
EXT_DTYPE = 1

# -------------------------------------------------------------------------- helpers


def roundtrip(value: Any, kind: int = serde.KIND_MESSAGE) -> Any:
    got_kind, out = decode(encode_bytes(value, kind))
    assert got_kind == kind
    return out


def logical_bytes(t: torch.Tensor) -> bytes:
    """A tensor's value as bytes, computed without the code under test."""
    plain = torch.empty(t.shape, dtype=t.dtype).copy_(t.detach())
    return bytes(plain.reshape(-1).view(torch.uint8).numpy())


def assert_same(a: Any, b: Any) -> None:
    """Equal values of the very same types, floats and tensors bit for bit."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, float):
        assert struct.pack("<d", a) == struct.pack("<d", b)
    elif isinstance(a, complex):
        assert struct.pack("<dd", a.real, a.imag) == struct.pack("<dd", b.real, b.imag)
    elif isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape, a.requires_grad) == (b.dtype, b.shape, b.requires_grad)
        assert logical_bytes(a) == logical_bytes(b)
    elif isinstance(a, list | tuple):  # torch.Size and return types included
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, slice):
        for attr in ("start", "stop", "step"):
            assert_same(getattr(a, attr), getattr(b, attr))
    elif is_dataclass(a):
        for name in WIRE_FIELDS[type(a)]:
            assert_same(getattr(a, name), getattr(b, name))
    else:
        assert a == b


def depth(value: Any) -> int:
    """Containers inside one another, as Limits.max_depth counts them."""
    if isinstance(value, torch.Size):
        return 0
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list | tuple | slice):
        items = (value.start, value.stop, value.step) if isinstance(value, slice) else value
        return 1 + max((depth(v) for v in items), default=0)
    return 0


def frame(
    meta: Any,
    buffers: Sequence[bytes] = (),
    *,
    magic: bytes = MAGIC,
    version: int = 1,
    kind: int = 1,
    flags: int = 0,
    lengths: list[int] | None = None,
) -> bytearray:
    """A frame built by hand from the documented layout (``meta`` packed unless bytes)."""
    meta = meta if isinstance(meta, bytes) else msgpack.packb(meta)
    lengths = [len(b) for b in buffers] if lengths is None else lengths
    out = bytearray(HEADER.pack(magic, version, kind, flags, len(meta), len(lengths)))
    out += struct.pack(f"<{len(lengths)}Q", *lengths) + meta
    for buf in buffers:
        out += bytes(serde.padding(len(out))) + buf
    return out


def bad(data: Any, match: str | None = None, limits: Limits = serde.DEFAULT_LIMITS) -> None:
    with pytest.raises(SerializationError, match=match):
        decode(data, limits)


# ------------------------------------------------------------------------ round-trips

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    I64,
    st.floats(allow_nan=True, allow_infinity=True),
    st.complex_numbers(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.sampled_from([*DTYPES, torch.device("cpu"), torch.device("cuda", 1), ...]),
    st.sampled_from([torch.strided, torch.sparse_coo, torch.channels_last, torch.preserve_format]),
)


def containers(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=5).map(tuple),
        st.dictionaries(st.text(max_size=8) | I64, children, max_size=5),
        st.builds(slice, children, children, children),
    )


VALUES = st.recursive(SCALARS, containers, max_leaves=30)


@given(VALUES)
@settings(max_examples=300, deadline=None)
def test_plain_values_round_trip_exactly(value: Any) -> None:
    assume(depth(value) <= serde.DEFAULT_LIMITS.max_depth)
    assert_same(value, roundtrip(value))


@pytest.mark.parametrize(
    "value",
    [
        None, True, 0, -(2**63), 2**63 - 1, -0.0, math.inf, math.nan, 1 - 2j, "", "π", b"\x00",
        [], (), {}, ((),), [()], {"a": (1, [2, {3: None}])}, {-5: "neg"},
        torch.Size([]), torch.Size([2, 0, 3]), slice(None), slice(1, -1, 2), ...,
        (Ellipsis, slice(None, 2), None), torch.device("cuda:0"), torch.device("mps"),
        torch.contiguous_format, torch.channels_last_3d, torch.sparse_csr, torch.jagged,
    ],
    ids=repr,
)  # fmt: skip
def test_examples_round_trip_exactly(value: Any) -> None:
    assert_same(value, roundtrip(value))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_allowlisted_dtype_round_trips(dtype: torch.dtype) -> None:
    assert roundtrip(dtype) is dtype
    t = torch.arange(6).reshape(2, 3).to(dtype)
    assert_same(t, roundtrip(t))


def test_return_types_round_trip() -> None:
    value = torch.max(torch.tensor([[1.0, 5.0], [3.0, 2.0]]), dim=0)
    out = roundtrip([value, torch.linalg.slogdet(torch.eye(2))])
    assert type(out[0]) is torch.return_types.max
    assert_same(value, out[0])
    assert torch.equal(out[0].indices, torch.tensor([1, 0]))


RECORD_EXAMPLES = [
    Ref(5),
    TensorSpec(9, (2, 3), torch.bfloat16, True),
    ObjectSpec(3, "list"),
    ErrorInfo("KeyError", "no such key"),
    Create(value=torch.ones(2), obj_id=4, origin="move"),
    Create(value={"lr": 0.1}),
    Get(obj_id=7, with_grad=True),
    Move(obj_id=7, destination="tcp://10.0.0.2:7000"),
    Delete(obj_ids=[1, 2, 3]),
    Clear(),
    RunOp("Tensor.__add__", (Ref(5), Ref(6)), {}, True),
    RunOp("torch.sum", (Ref(1),), {"dim": (0, 1), "dtype": torch.float64}, False),
    CallFunction(b"\x80\x05cloudpickled", (Ref(1), 2), {"k": [3]}),
    CallFunction(b"code", ({"w": torch.ones(2)},), {}, True, True),
    Create(value=torch.ones(1), tags=("#digits", "#train"), description="shard 1 of 10"),
    Tag(obj_id=3, tags=("#digits",), description=None),
    Search(tags=("#digits", "#train")),
    Reply(value=[(TensorSpec(1, (2,), torch.float32), ["#a"], "why")]),
    ListObjects(),
    BudgetQuery(),
    Reply(value={1: TensorSpec(1, (), torch.int64), 2: ObjectSpec(2, "int")}),
    Reply(error=ErrorInfo("PermissionDenied", "private data")),
]


def test_every_record_has_an_example() -> None:
    assert {type(r) for r in RECORD_EXAMPLES} == set(RECORDS)


@pytest.mark.parametrize("record", RECORD_EXAMPLES, ids=lambda r: type(r).__name__)
def test_records_round_trip(record: Any) -> None:
    out = roundtrip(record, serde.KIND_REPLY)
    assert_same(record, out)


def test_reply_cause_never_crosses() -> None:
    reply = Reply(error=ErrorInfo("ValueError", "x"), cause=ValueError("local traceback"))
    out = roundtrip(reply)
    assert out.cause is None and out.error == reply.error


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    """Random dtype and shape (0-dim and empty included), random bits, and sometimes a
    transposed, strided, conjugated, negated or grad-requiring version of it."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.lists(st.integers(0, 4), max_size=4))
    numel = math.prod(shape)
    if numel == 0:
        t = torch.empty(shape, dtype=dtype)
    else:
        data = bytearray(
            draw(st.binary(min_size=numel * dtype.itemsize, max_size=numel * dtype.itemsize))
        )
        if dtype is torch.bool:
            data = bytearray(b & 1 for b in data)
        t = torch.frombuffer(data, dtype=torch.uint8).view(dtype).reshape(shape).clone()
    variant = draw(st.sampled_from(["plain", "transposed", "strided", "grad", "conj", "neg"]))
    differentiable = dtype.is_floating_point or dtype.is_complex
    if variant == "transposed" and t.dim() >= 2:
        t = t.mT
    elif variant == "strided" and t.dim() >= 1:
        t = t[..., ::2]
    elif variant == "grad" and differentiable:
        t = (t.clone().requires_grad_() * 1) if draw(st.booleans()) else t.requires_grad_()
    elif variant == "conj" and dtype.is_complex:
        t = t.conj()
    elif variant == "neg" and dtype.is_complex:
        t = t.conj().imag  # a view with the negative bit
    if draw(st.booleans()) and t.dtype.is_floating_point and not t.requires_grad:
        t.requires_grad_()  # on top of any variant (a view becomes a non-leaf)
    return t


@given(tensors())
@settings(max_examples=300, deadline=None)
def test_tensors_round_trip_bitwise(t: torch.Tensor) -> None:
    out = roundtrip(Create(value=t)).value
    assert (out.dtype, out.shape, out.requires_grad) == (t.dtype, t.shape, t.requires_grad)
    assert out.is_leaf and not out.is_conj() and not out.is_neg()
    assert logical_bytes(out) == logical_bytes(t)


@given(st.lists(tensors() | VALUES, max_size=6))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_tensors_inside_values(values: list) -> None:
    assume(depth(values) <= serde.DEFAULT_LIMITS.max_depth)
    assert_same(values, roundtrip(values))


def test_same_tensor_twice_gives_two_buffers() -> None:
    t = torch.arange(4)
    a, b = roundtrip((t, t))
    assert torch.equal(a, t) and torch.equal(b, t) and a.data_ptr() != b.data_ptr()


def test_contiguous_tensor_is_sent_without_a_copy() -> None:
    t = torch.arange(1000, dtype=torch.float32)
    parts = encode(Create(value=t))
    assert torch.frombuffer(parts[1], dtype=torch.uint8).data_ptr() == t.data_ptr()


def test_decoded_tensors_share_the_frame_and_raise_no_warning() -> None:
    data = encode_bytes(torch.zeros(4, dtype=torch.int32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, t = decode(data)
    data[-4:] = struct.pack("<i", 7)
    assert t.tolist() == [0, 0, 0, 7]


def test_read_only_frames_are_copied_without_warning() -> None:
    data = bytes(encode_bytes(torch.ones(3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, t = decode(data)
    t += 1  # the tensor owns writable memory
    assert t.tolist() == [2.0, 2.0, 2.0]


# -------------------------------------------------------------------- refused values


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (lambda: 1, "function: code is not data"),
        (print, "builtin_function_or_method"),
        (object(), "builtins.object"),
        (2**63, "64 bits"),
        (-(2**63) - 1, "64 bits"),
        ([2**64], "64 bits"),
        ({1.5: 0}, "float key"),
        ({(1, 2): 0}, "tuple key"),
        ({True: 0}, "bool key"),
        (bytearray(b"x"), "bytearray"),
        (torch.ones(2).to_sparse(), "sparse_coo"),
        (torch.ones(2, dtype=torch.uint16), "uint16"),
        (torch.float8_e4m3fn, "float8"),
        (torch.empty(2, device="meta"), "meta"),
        ({1, 2}, "set"),
        (torch.Size([2, -1]), "negative"),
    ],
    ids=repr,
)
def test_encode_refuses_what_it_cannot_carry(value: Any, match: str) -> None:
    with pytest.raises(SerializationError, match=match):
        encode(value)


def test_encode_refuses_numpy_arrays_and_says_what_to_do() -> None:
    np = pytest.importorskip("numpy")
    with pytest.raises(SerializationError, match=r"numpy\.ndarray.*torch\.from_numpy"):
        encode({"x": np.ones(2)})


def test_encode_refuses_quantized_tensors() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8)
    with pytest.raises(SerializationError, match="quantized"):
        encode(q)


def test_encode_refuses_values_nested_too_deep_and_cycles() -> None:
    value: Any = 1
    for _ in range(32):
        value = [value]
    assert roundtrip(value) == value
    with pytest.raises(SerializationError, match="max_depth"):
        encode([value])
    at_the_limit = [[torch.ones(2), torch.Size([2])]]
    for _ in range(30):
        at_the_limit = [at_the_limit]
    assert depth(at_the_limit) == 32  # tensors and sizes are not a level
    assert_same(at_the_limit, roundtrip(at_the_limit))
    cycle: list = []
    cycle.append(cycle)
    with pytest.raises(SerializationError, match="max_depth"):
        encode(cycle)


def test_encode_limits() -> None:
    with pytest.raises(SerializationError, match="metadata"):
        encode("x" * 100, limits=Limits(max_meta_bytes=50))
    with pytest.raises(SerializationError, match="tensors"):
        encode([torch.ones(1)] * 3, limits=Limits(max_buffers=2))
    with pytest.raises(SerializationError, match="max_frame_bytes"):
        encode(torch.ones(100), limits=Limits(max_frame_bytes=400))
    with pytest.raises(SerializationError, match="kind"):
        encode(1, kind=3)


# --------------------------------------------------------------------------- layout


def test_frame_layout_matches_the_docstring() -> None:
    tensors_ = [torch.ones(3), torch.ones(5, dtype=torch.int8), torch.ones(1, dtype=torch.float64)]
    parts = encode(tensors_)
    data = encode_bytes(tensors_)
    assert b"".join(bytes(p) for p in parts) == data
    magic, version, kind, flags, meta_len, n = HEADER.unpack_from(data)
    assert (magic, version, kind, flags, n) == (MAGIC, 1, 1, 0, 3)
    assert HEADER.size == 16
    lengths = list(struct.unpack_from("<3Q", data, 16))
    assert lengths == [12, 5, 8]
    assert len(parts[0]) % serde.ALIGN == 0  # header, table, meta and padding
    offset, starts = 16 + 24 + meta_len, []
    for length in lengths:
        offset += serde.padding(offset)
        starts.append(offset)
        offset += length
    assert offset == len(data)  # no padding after the last buffer
    assert all(start % 64 == 0 for start in starts)
    assert [bytes(data[s : s + n]) for s, n in zip(starts, lengths)] == [
        logical_bytes(t) for t in tensors_
    ]


@given(st.lists(st.integers(0, 200), max_size=6))
@settings(deadline=None)
def test_every_buffer_starts_64_byte_aligned(lengths: list[int]) -> None:
    position, starts = 0, []
    for part in encode([torch.ones(n, dtype=torch.uint8) for n in lengths]):
        if isinstance(part, memoryview):  # a buffer; the other parts are bytes
            starts.append(position)
        position += memoryview(part).nbytes
    assert len(starts) == len(lengths)
    assert all(start % 64 == 0 for start in starts)


def read_like_a_stream(data: bytes, limits: Limits = serde.DEFAULT_LIMITS) -> tuple[int, Any]:
    """What a TCP transport does: header, table, meta, then each buffer on its own."""
    stream = io.BytesIO(data)
    header = serde.parse_header(stream.read(HEADER.size), limits)
    lengths = serde.frame_layout(header, stream.read(header.table_len), limits)
    meta = stream.read(header.meta_len)
    offset, buffers = HEADER.size + header.table_len + header.meta_len, []
    for length in lengths:
        skipped = stream.read(serde.padding(offset))
        assert skipped == bytes(len(skipped))
        offset += len(skipped)
        buf = bytearray(length)
        assert stream.readinto(buf) == length
        buffers.append(buf)
        offset += length
    assert stream.read() == b""
    return header.kind, decode_parts(meta, buffers, limits)


def test_a_stream_reader_needs_only_header_and_table() -> None:
    value = Reply(value=[torch.randn(3, 7), torch.tensor(2), torch.zeros(0, 3), "x"])
    kind, out = read_like_a_stream(bytes(encode_bytes(value, serde.KIND_REPLY)))
    assert kind == serde.KIND_REPLY
    assert_same(value, out)


def test_decode_parts_copies_read_only_buffers() -> None:
    t = torch.arange(3)
    data = bytes(encode_bytes(t))
    header = serde.parse_header(data)
    (length,) = serde.frame_layout(header, data[16:24])
    meta = data[24 : 24 + header.meta_len]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = decode_parts(meta, [data[-length:]])
    assert torch.equal(out, t)


# ----------------------------------------------------------------------- bad frames

GOOD = encode_bytes(Create(value=torch.arange(4, dtype=torch.int32)))


def test_bad_magic_version_kind_flags() -> None:
    bad(frame(None, magic=b"PK\x03\x04"), "magic")
    bad(frame(None, version=2), "version 2")
    bad(frame(None, kind=9), "kind 9")
    bad(frame(None, flags=1), "flags")
    bad(b"", "truncated")
    bad(12345, "bytes-like")


def test_truncated_and_overlong_frames() -> None:
    for end in range(len(GOOD)):
        bad(GOOD[:end])
    bad(GOOD + b"\x00", "announce")


def test_limits_are_checked_from_the_header() -> None:
    bad(frame(b"\xc0" * 100), "max_meta_bytes", Limits(max_meta_bytes=99))
    bad(frame(None, lengths=[1] * 5), "max_buffers", Limits(max_buffers=4))
    header = HEADER.pack(MAGIC, 1, 1, 0, 0xFFFF_FFFF, 0)
    bad(header, "max_meta_bytes")
    header = HEADER.pack(MAGIC, 1, 1, 0, 0, 0xFFFF_FFFF)
    bad(header, "max_buffers")


def test_huge_declared_buffers_are_refused_before_allocation() -> None:
    header = serde.FrameHeader(serde.KIND_MESSAGE, 10, 2)
    table = struct.pack("<2Q", 1, 2**62)
    with pytest.raises(SerializationError, match="max_frame_bytes"):
        serde.frame_layout(header, table)
    bad(frame(None, lengths=[2**64 - 1]), "max_frame_bytes")
    bad(frame(None, lengths=[3, 3]), "max_frame_bytes", Limits(max_frame_bytes=100))
    with pytest.raises(SerializationError, match="table"):
        serde.frame_layout(header, table[:-1])


def test_msgpack_length_headers_cannot_force_allocations() -> None:
    bad(frame(b"\xdd\xff\xff\xff\xff"), "exceeds max_array_len")  # 2**32 - 1 items
    bad(frame(b"\xdf\xff\xff\xff\xff"), "exceeds max_map_len")
    bad(frame(b"\xc6\xff\xff\xff\xff"), "incomplete")  # bin of 4 GiB
    bad(frame(b"\xc9\xff\xff\xff\xff\x05"), "exceeds max_ext_len")


def tensor_meta(name: str = "int32", shape: tuple = (4,), index: int = 0, grad: bool = False):
    return [TENSOR, name, grad, index, *shape]


def test_tensor_buffers_are_checked() -> None:
    data = bytes(16)
    assert decode(frame(tensor_meta(), [data]))[1].tolist() == [0, 0, 0, 0]
    bad(frame(tensor_meta(shape=(5,)), [data]), "20 bytes, its buffer 16")
    bad(frame(tensor_meta(shape=(2**40, 2**40)), [data]), "its buffer 16")
    bad(frame(tensor_meta(shape=(-4,)), [data]), "shape")
    bad(frame(tensor_meta(name="uint16"), [data]), "unknown tensor dtype")
    bad(frame(tensor_meta(name="float8_e4m3fn"), [data]), "unknown tensor dtype")
    bad(frame(tensor_meta(name="torch.storage"), [data]), "unknown tensor dtype")
    bad(frame(tensor_meta(index=1), [data]), "missing")
    bad(frame([LIST, tensor_meta(), tensor_meta()], [data]), "already used")
    bad(frame(tensor_meta(), [data, data]), "buffer 1 belongs to no tensor")
    bad(frame(None, [data]), "buffer 0 belongs to no tensor")
    bad(frame(tensor_meta(grad=True), [data]), "requires_grad")
    bad(frame(tensor_meta(grad=1), [data]), "requires_grad")
    bad(frame(tensor_meta(name="bool"), [b"\x00\x01\x02\x00"]), "bool")
    bad(frame([TENSOR, "int32"], [data]), "a tensor of 1 items")


def test_unknown_names_codes_and_tags() -> None:
    bad(frame(msgpack.ExtType(EXT_DTYPE, b"float128")), "unknown dtype")
    bad(frame(msgpack.ExtType(EXT_DTYPE, b"__class__")), "unknown dtype")
    bad(frame(msgpack.ExtType(99, b"")), "unknown ext code 99")
    bad(frame(b"\xd4\x80\x00"), "unknown ext code -128")
    bad(frame(b"\xd6\xff\x00\x00\x00\x00"), "Timestamp")  # msgpack's own timestamp ext
    bad(frame(msgpack.ExtType(2, b"\xff")), "device")
    bad(frame(msgpack.ExtType(5, b"\x00")), "complex")
    bad(frame(msgpack.ExtType(6, b"\x00")), "Ellipsis")
    bad(frame([RECORD, 99]), "unknown record code 99")
    bad(frame([RECORD, -1]), "unknown record code -1")
    bad(frame([RECORD, "Ref", 1]), "unknown record code 'Ref'")
    bad(frame([RECORD, RECORDS.index(Ref), 1, 2]), "Ref with 2 fields, expected 1")
    bad(frame([RECORD, RECORDS.index(RunOp), "op"]), "RunOp with 1 fields, expected 4")
    bad(frame([6, "system", 1]), "return_types")
    bad(frame([6, "max", 1]), "return_types.max of 1 items")
    bad(frame([5, 1, 2]), "slice")
    bad(frame([4, 1.5]), "torch.Size")
    bad(frame([]), "not a tag")
    bad(frame([True, 1]), "not a tag")
    bad(frame(["list", 1]), "not a tag")
    bad(frame([77, 1]), "unknown array tag 77")


def test_bad_plain_data() -> None:
    bad(frame({1.5: 0}), "dict key is a float")
    bad(frame({b"k": 0}), "dict key is a bytes")
    bad(frame({"k": [LIST, 2**64 - 1]}), "64 signed bits")
    bad(frame(2**63), "64 signed bits")


def test_too_deep_nesting() -> None:
    meta: Any = 0
    for _ in range(33):
        meta = [LIST, meta]
    bad(frame(meta), "max_depth")
    assert depth(decode(frame(meta[1]))[1]) == 32
    bad(frame(meta[1]), "max_depth", Limits(max_depth=31))
    deep_maps: Any = 0
    for _ in range(40):
        deep_maps = {"k": deep_maps}
    bad(frame(deep_maps), "max_depth")
    bad(frame(b"\x91" * 5000 + b"\x00"))  # far past any depth, raw msgpack arrays


@pytest.mark.parametrize(
    "meta",
    [b"\xc1", b"\x92\x00", b"\x00\x00", b"\xa5ab", b"\xd9\x02\xff\xfe", b"\xcb\x00"],
    ids=["never-used byte", "missing item", "extra data", "short str", "bad utf-8", "short float"],
)
def test_garbage_msgpack(meta: bytes) -> None:
    bad(frame(meta), "does not decode|not a tag")


class Boom:
    ran = False

    def __reduce__(self) -> tuple:
        return (setattr, (Boom, "ran", True))


def test_pickles_are_never_unpickled() -> None:
    payload = pickle.dumps(Boom())
    assert pickle.loads(payload) is None and Boom.ran  # it would run code...
    Boom.ran = False
    bad(frame(payload))  # ...as a frame's meta it is only bad msgpack
    bad(payload, "magic")
    with pytest.raises(SerializationError):
        decode_parts(payload, [])
    assert not Boom.ran


def test_decoding_imports_nothing() -> None:
    frames = [encode_bytes(r) for r in RECORD_EXAMPLES] + [encode_bytes(slice(1, ...))]
    real_import, real_loads, calls = builtins.__import__, pickle.loads, []

    def recording_import(name: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        return real_import(name, *args, **kwargs)

    builtins.__import__, pickle.loads = recording_import, calls.append
    try:
        outs = [decode(f)[1] for f in frames]
    finally:
        builtins.__import__, pickle.loads = real_import, real_loads
    assert calls == []
    for record, out in zip(RECORD_EXAMPLES, outs):
        assert_same(record, out)


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_random_bytes_never_raise_anything_else(data: bytes) -> None:
    for candidate in (data, GOOD[:16] + data, frame(data)):
        try:
            decode(candidate)
        except SerializationError:
            pass


@given(st.data())
@settings(max_examples=300, deadline=None)
def test_corrupted_frames_never_raise_anything_else(data: st.DataObject) -> None:
    good = data.draw(st.sampled_from([GOOD, *[encode_bytes(r) for r in RECORD_EXAMPLES[:6]]]))
    corrupted = bytearray(good)
    for _ in range(data.draw(st.integers(1, 4))):
        corrupted[data.draw(st.integers(0, len(good) - 1))] = data.draw(st.integers(0, 255))
    try:
        decode(corrupted)
    except SerializationError:
        pass
