"""Hypothesis: decoders and the session let nothing escape but RemoteProtocolError."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2p.encoding import pack
from p2p.identity import Identity
from p2p.wire.errors import RemoteProtocolError
from p2p.wire.messages import (
    CONTENT_ID_LEN,
    MessageType,
    Ping,
    decode,
    decode_frame_length,
    encode,
)
from p2p.wire.session import Session

from .test_session import ALL, hello, opened

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.binary(max_size=40)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5), max_leaves=12)


@given(st.binary(max_size=200))
def test_decode_random_bytes(data: bytes) -> None:
    try:
        decode(data)
    except RemoteProtocolError:
        pass


@given(st.sampled_from(list(MessageType)), st.lists(values, max_size=5))
def test_decode_structured_garbage(mtype: MessageType, fields: list[object]) -> None:
    try:
        body = pack(fields)  # type: ignore[arg-type]
    except (TypeError, OverflowError):  # beyond msgpack's integers: not a wire value at all
        return
    try:
        decode(bytes([mtype]) + body)
    except RemoteProtocolError:
        pass


@given(st.sampled_from(ALL), st.data())
def test_mutated_frames(msg: object, data: st.DataObject) -> None:
    frame = bytearray(encode(msg)[4:])  # type: ignore[arg-type]
    i = data.draw(st.integers(0, len(frame) - 1))
    frame[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(frame)))
    try:
        decode(bytes(frame[:cut]))
    except RemoteProtocolError:
        pass


@given(st.sampled_from(ALL))
def test_round_trip(msg: object) -> None:
    frame = encode(msg)  # type: ignore[arg-type]
    assert decode_frame_length(frame[:4]) == len(frame) - 4
    assert decode(frame[4:]) == msg


@given(st.binary(min_size=4, max_size=4))
def test_frame_length(header: bytes) -> None:
    try:
        n = decode_frame_length(header)
        assert n == struct.unpack(">I", header)[0]
    except RemoteProtocolError:
        pass


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.booleans())
def test_session_fed_garbage(data: bytes, after_handshake: bool) -> None:
    if after_handshake:
        _, b, _, _ = opened()
    else:
        ident = Identity.generate()
        b = Session(ident, hello(ident), initiator=False)
    try:
        b.receive_data(data)
        b.receive_eof()
    except RemoteProtocolError:
        pass


@settings(max_examples=30)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=20))
def test_any_split_points(cuts: list[int]) -> None:
    a, b, _, _ = opened()
    for msg in ALL:
        a.send(msg)
    a.send(Ping(7))
    data = bytes(a.data_to_send())
    got, pos, i = [], 0, 0
    while pos < len(data):
        step = cuts[i % len(cuts)] * 37
        got += b.receive_data(data[pos:pos + step])
        pos += step
        i += 1
    assert got == [*ALL, Ping(7)]
    assert CONTENT_ID_LEN == 32
