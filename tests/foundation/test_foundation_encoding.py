"""Canonical msgpack and base32 text (p2p.encoding)."""

from __future__ import annotations

import base64

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.encoding import (
    b32decode,
    b32encode,
    expect_bytes,
    expect_int,
    expect_list,
    expect_str,
    pack,
    unpack,
    unpack_canonical,
)
from p2p.errors import BadInput, DecodeError, RemoteProtocolError

# msgpack's int range: what the canonical subset can hold.
ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
scalars = st.none() | st.booleans() | ints | st.binary(max_size=64) | st.text(max_size=32)
canonical_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=6), max_leaves=40)


@given(canonical_values)
def test_pack_unpack_round_trip(value: object) -> None:
    data = pack(value)
    assert unpack(data, max_bin=64) == value
    assert unpack_canonical(data, max_bin=64) == value
    # What pack produces is exactly msgpack's smallest form.
    assert data == msgpack.packb(value, use_bin_type=True)


@given(st.lists(scalars, max_size=5))
def test_tuples_encode_like_lists(items: list[object]) -> None:
    assert pack(tuple(items)) == pack(items)
    assert unpack_canonical(pack(tuple(items)), max_bin=64) == items


def test_bool_and_int_stay_distinct() -> None:
    assert pack(True) != pack(1)
    assert unpack_canonical(pack(True), max_bin=0) is True
    assert unpack_canonical(pack(0), max_bin=0) == 0
    assert unpack_canonical(pack(0), max_bin=0) is not False


@pytest.mark.parametrize("value", [{}, {"a": 1}, 1.5, 0.0, {1, 2}, bytearray(b"x"), object(),
                                   [1, [2, {}]]])
def test_pack_refuses_values_outside_the_canonical_subset(value: object) -> None:
    with pytest.raises(TypeError):
        pack(value)


def test_pack_refuses_ext_type() -> None:
    with pytest.raises(TypeError):
        pack(msgpack.ExtType(1, b"x"))


def test_pack_refuses_nesting_deeper_than_16() -> None:
    value: list[object] = []
    for _ in range(17):
        value = [value]
    with pytest.raises(TypeError, match="nesting"):
        pack(value)
    pack(value[0])  # 16 levels is fine


# -- limits --------------------------------------------------------------------------


def test_unpack_limits_bin() -> None:
    assert unpack(pack(b"x" * 10), max_bin=10) == b"x" * 10
    with pytest.raises(DecodeError):
        unpack(pack(b"x" * 11), max_bin=10)


def test_unpack_limits_str() -> None:
    assert unpack(pack("y" * 10), max_bin=0, max_str=10) == "y" * 10
    with pytest.raises(DecodeError):
        unpack(pack("y" * 11), max_bin=0, max_str=10)


def test_unpack_limits_array() -> None:
    assert unpack(pack([1] * 10), max_bin=0, max_array=10) == [1] * 10
    with pytest.raises(DecodeError):
        unpack(pack([1] * 11), max_bin=0, max_array=10)


def test_unpack_checks_declared_length_before_allocating() -> None:
    # A bin32 header claiming 4 GiB followed by nothing: refused by the limit, not by allocation.
    with pytest.raises(DecodeError):
        unpack(b"\xc6\xff\xff\xff\xff", max_bin=1024)
    # An array32 header claiming 4 billion items.
    with pytest.raises(DecodeError):
        unpack(b"\xdd\xff\xff\xff\xff", max_bin=1024)


@pytest.mark.parametrize("data", [b"", b"\x92\x01", b"\xc4\x05abc", b"\xc1", b"\x01\x02",
                                  b"\xa2\xff\xfe", b"\x91" * 100_000])
def test_unpack_malformed(data: bytes) -> None:
    with pytest.raises(DecodeError):
        unpack(data, max_bin=1024)


def test_decode_error_is_both_peer_fault_and_bad_input() -> None:
    with pytest.raises(DecodeError) as info:
        unpack(b"\xc1", max_bin=0)
    assert isinstance(info.value, RemoteProtocolError)
    assert isinstance(info.value, BadInput)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(msgpack.packb({"a": 1}), id="map"),
        pytest.param(msgpack.packb(1.5), id="float64"),
        pytest.param(msgpack.packb(1.5, use_single_float=True), id="float32"),
        pytest.param(msgpack.packb(msgpack.ExtType(5, b"abcd")), id="fixext4"),
        pytest.param(msgpack.packb([1, {"k": b""}], use_bin_type=True), id="nested-map"),
    ],
)
def test_unpack_canonical_rejects_maps_floats_ext(data: bytes) -> None:
    with pytest.raises(DecodeError):
        unpack_canonical(data, max_bin=64)


@pytest.mark.parametrize("data", [b"\x80", b"\xc7\x00\x05", b"\xcb" + bytes(8), b"\xca" + bytes(4)],
                         ids=["empty-map", "empty-ext8", "float64", "float32"])
def test_unpack_rejects_maps_floats_and_ext_of_any_size(data: bytes) -> None:
    with pytest.raises(DecodeError):
        unpack(data, max_bin=64)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xcc\x05", id="uint8-for-fixint"),
        pytest.param(b"\xcd\x00\x05", id="uint16-for-fixint"),
        pytest.param(b"\xcf" + (5).to_bytes(8, "big"), id="uint64-for-fixint"),
        pytest.param(b"\xd0\xff", id="int8-for-negative-fixint"),
        pytest.param(b"\xd1\x00\x80", id="int16-for-uint8"),
        pytest.param(b"\xd9\x01a", id="str8-for-fixstr"),
        pytest.param(b"\xda\x00\x01a", id="str16-for-fixstr"),
        pytest.param(b"\xc5\x00\x01a", id="bin16-for-bin8"),
        pytest.param(b"\xdc\x00\x01\x01", id="array16-for-fixarray"),
        pytest.param(b"\xdd\x00\x00\x00\x01\x01", id="array32-for-fixarray"),
        pytest.param(b"\xa1a", id="str-where-pack-gives-str"),  # control: canonical, see below
    ],
)
def test_unpack_canonical_rejects_longer_forms(data: bytes) -> None:
    value = unpack(data, max_bin=64)  # well-formed msgpack...
    if pack(value) == data:
        assert unpack_canonical(data, max_bin=64) == value
    else:  # ...but not the smallest form of its value
        with pytest.raises(DecodeError, match="non-canonical"):
            unpack_canonical(data, max_bin=64)


@given(st.binary(max_size=200))
def test_unpack_random_bytes_only_decode_error_escapes(data: bytes) -> None:
    for decode in (unpack, unpack_canonical):
        try:
            value = decode(data, max_bin=64, max_str=64, max_array=16)
        except DecodeError:
            continue
        if decode is unpack_canonical:
            assert pack(value) == data


@given(canonical_values, st.integers(min_value=0, max_value=1 << 16), st.integers(1, 255))
def test_unpack_canonical_mutated_encoding_is_canonical_or_refused(
    value: object, pos: int, xor: int
) -> None:
    data = bytearray(pack(value))
    data[pos % len(data)] ^= xor
    try:
        decoded = unpack_canonical(bytes(data), max_bin=64)
    except DecodeError:
        return
    assert pack(decoded) == bytes(data)
    # Compared with types: 0 == False in Python, yet they are different values on the wire.
    assert _typed(decoded) != _typed(value)


def _typed(value: object) -> object:
    """``value`` with the type of every part beside it, so that equal-comparing values of
    different types (0 and False, 1.0 and 1) are told apart."""
    if isinstance(value, list | tuple):
        return (type(value).__name__, tuple(_typed(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((_typed(k), _typed(v)) for k, v in value.items()))
    return (type(value).__name__, value)


# -- field checks -----------------------------------------------------------------------


def test_field_checks() -> None:
    assert expect_list([1, 2], 2) == [1, 2]
    with pytest.raises(DecodeError, match="expected 3 fields"):
        expect_list([1, 2], 3)
    with pytest.raises(DecodeError):
        expect_list(b"ab")
    assert expect_int(5, 0, 5) == 5
    for bad in (True, 6, -1, "5", None):
        with pytest.raises(DecodeError):
            expect_int(bad, 0, 5)
    assert expect_bytes(b"abc", 3) == b"abc"
    with pytest.raises(DecodeError):
        expect_bytes(b"abc", 4)
    with pytest.raises(DecodeError):
        expect_bytes(b"abc", max_len=2)
    with pytest.raises(DecodeError):
        expect_bytes("abc")
    assert expect_str("é", 2) == "é"
    with pytest.raises(DecodeError, match="longer than 1 bytes"):
        expect_str("é", 1)  # two UTF-8 bytes
    with pytest.raises(DecodeError):
        expect_str(b"x", 10)


# -- base32 text ------------------------------------------------------------------------


@given(st.binary(max_size=80))
def test_b32_round_trip(data: bytes) -> None:
    text = b32encode(data)
    assert text == text.lower()
    assert "=" not in text
    assert set(text) <= set("abcdefghijklmnopqrstuvwxyz234567")
    if data:
        assert b32decode(text) == data
        assert b32decode(text.upper()) == data
    else:
        assert text == ""


@given(st.binary(min_size=1, max_size=40))
def test_b32_matches_rfc4648(data: bytes) -> None:
    assert b32encode(data) == base64.b32encode(data).decode().rstrip("=").lower()


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("mzxw6===", id="padding"),
        pytest.param("mzxw6 ytb", id="space"),
        pytest.param("mzxw1", id="digit-1"),
        pytest.param("mzxw8", id="digit-8"),
        pytest.param("mzxw\u00e9", id="non-ascii"),
        pytest.param("m", id="impossible-length-1"),
        pytest.param("mzx", id="impossible-length-3"),
        pytest.param("mzxw6y", id="impossible-length-6"),
        pytest.param("mf", id="nonzero-trailing-bits"),  # "me" is b"a"; "mf" sets a padding bit
        pytest.param("mz", id="nonzero-trailing-bits-2"),
        pytest.param("mzxw7", id="nonzero-trailing-bits-5"),
    ],
)
def test_b32decode_rejects(text: str) -> None:
    with pytest.raises(DecodeError, match="peer id"):
        b32decode(text, "peer id")


@given(st.binary(min_size=1, max_size=40), st.data())
def test_b32decode_one_text_per_value(data: bytes, draw: st.DataObject) -> None:
    """Changing the last character to any other base32 digit never decodes to the same bytes."""
    text = b32encode(data)
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    other = draw.draw(st.sampled_from([c for c in alphabet if c != text[-1]]))
    mutated = text[:-1] + other
    try:
        decoded = b32decode(mutated)
    except DecodeError:
        return
    assert decoded != data
    assert b32encode(decoded) == mutated
