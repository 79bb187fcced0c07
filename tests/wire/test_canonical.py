"""Every message has one body: decoding refuses any body that is not the canonical encoding.

docs/PROTOCOL.md (Frames): control bodies are canonical msgpack, msgpack's smallest form of
every value. The bodies here are written byte by byte from the msgpack specification, in
every width a value fits, not by the code under test.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p.bitfield import bitfield_of
from p2p.identity import PeerId
from p2p.wire.errors import RemoteProtocolError
from p2p.wire.messages import (
    FRAME_HEADER,
    MAX_PUNCH_ADDRS,
    Accept,
    Bitfield,
    Cancel,
    Connect,
    Data,
    GetBitfield,
    GetManifest,
    Goodbye,
    Have,
    Hello,
    HolePunchConnect,
    HolePunchSync,
    Manifest,
    Message,
    MessageType,
    Ping,
    Pong,
    Reject,
    RelayStatus,
    Request,
    Reserve,
    Stop,
    decode,
    encode,
)

CID = bytes(range(32))

# -- a msgpack writer that may choose any width a value fits in --------------------------------


def _int_forms(n: int) -> list[bytes]:
    forms = []
    if 0 <= n < 128:
        forms.append(bytes([n]))
    if -32 <= n < 0:
        forms.append(struct.pack(">b", n))
    for tag, fmt, lo, hi in ((0xCC, ">B", 0, 2**8), (0xCD, ">H", 0, 2**16), (0xCE, ">I", 0, 2**32),
                             (0xCF, ">Q", 0, 2**64), (0xD0, ">b", -(2**7), 2**7),
                             (0xD1, ">h", -(2**15), 2**15), (0xD2, ">i", -(2**31), 2**31),
                             (0xD3, ">q", -(2**63), 2**63)):
        if lo <= n < hi:
            forms.append(bytes([tag]) + struct.pack(fmt, n))
    return forms


def _sized_forms(n: int, fix: tuple[int, int] | None, tags: tuple[int, ...]) -> list[bytes]:
    """Length prefixes: a fix form (``base | n`` below ``limit``) and the 8/16/32-bit ones."""
    forms = []
    if fix is not None and n < fix[1]:
        forms.append(bytes([fix[0] | n]))
    for tag, fmt, hi in zip(tags, (">B", ">H", ">I")[-len(tags):], (2**8, 2**16, 2**32)[-len(tags):],
                            strict=True):
        if n < hi:
            forms.append(bytes([tag]) + struct.pack(fmt, n))
    return forms


Choose = Callable[[list[bytes]], bytes]


def wide(value: object, choose: Choose) -> bytes:
    """``value`` in msgpack, each item in the width ``choose`` picks among those it fits."""
    if value is None:
        return b"\xc0"
    if isinstance(value, bool):
        return b"\xc3" if value else b"\xc2"
    if isinstance(value, int):
        return choose(_int_forms(value))
    if isinstance(value, bytes):
        return choose(_sized_forms(len(value), None, (0xC4, 0xC5, 0xC6))) + value
    if isinstance(value, str):
        raw = value.encode()
        return choose(_sized_forms(len(raw), (0xA0, 32), (0xD9, 0xDA, 0xDB))) + raw
    if isinstance(value, list | tuple):
        head = choose(_sized_forms(len(value), (0x90, 16), (0xDC, 0xDD)))
        return head + b"".join(wide(item, choose) for item in value)
    raise TypeError(type(value))


def smallest(value: object) -> bytes:
    """The canonical form: the shortest width of each item (unsigned before signed on a tie)."""
    return wide(value, lambda forms: min(forms, key=len))


def drawn(draw: Callable[[st.SearchStrategy[bytes]], bytes]) -> Choose:
    return lambda forms: draw(st.sampled_from(forms))


# -- messages of every type, and their fields as PROTOCOL.md lists them ---------------------------

cids = st.binary(min_size=32, max_size=32)
indexes = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)


@st.composite
def bitfields(draw: st.DrawFn) -> Bitfield:
    count = draw(st.integers(0, 40))
    held = draw(st.sets(st.integers(0, count - 1))) if count else set()
    return Bitfield(draw(cids), count, bitfield_of(count, held))


messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Hello, st.integers(0, 0xFFFF), st.binary(min_size=32, max_size=32).map(PeerId),
              st.lists(st.tuples(st.text(min_size=1, max_size=40), st.integers(1, 0xFFFF)),
                       max_size=16).map(tuple),
              st.text(max_size=32)),
    st.builds(GetManifest, cids),
    st.builds(Manifest, cids, st.none() | st.binary(max_size=300)),
    st.builds(GetBitfield, cids),
    bitfields(),
    st.builds(Have, cids, indexes),
    st.builds(Request, cids, indexes),
    st.builds(Reject, cids, indexes, st.integers(0, 255)),
    st.builds(Cancel, cids, indexes),
    st.builds(Ping, u64),
    st.builds(Pong, u64),
    st.builds(Goodbye, st.text(max_size=64)),
    st.builds(Reserve),
    st.builds(RelayStatus, st.integers(0, 255), st.text(max_size=64), st.integers(0, 2**32 - 1),
              st.lists(st.tuples(st.text(min_size=1, max_size=40), st.integers(1, 0xFFFF)),
                       max_size=4).map(tuple),
              st.none() | st.tuples(st.text(min_size=1, max_size=40), st.integers(1, 0xFFFF)),
              st.integers(0, 2**32 - 1), u64),
    st.builds(Connect, cids.map(PeerId)),
    st.builds(Stop, cids.map(PeerId), st.binary(min_size=16, max_size=16)),
    st.builds(Accept, st.binary(min_size=16, max_size=16)),
    st.builds(HolePunchConnect, st.integers(1, 255),
              st.lists(st.tuples(st.ip_addresses().filter(lambda ip: getattr(ip, "ipv4_mapped", None) is None).map(str), st.integers(1, 0xFFFF)),
                       max_size=MAX_PUNCH_ADDRS).map(tuple), st.booleans()),
    st.builds(HolePunchSync, st.integers(1, 255)),
)


def fields_of(msg: Message) -> list[object]:
    """The body's list, as the table in docs/PROTOCOL.md orders it."""
    match msg:
        case Hello(version, peer, addrs, agent):
            return [version, peer.key, [[h, p] for h, p in addrs], agent]
        case Manifest(cid, data):
            return [cid, data]
        case Bitfield(cid, count, bits):
            return [cid, count, bits]
        case Reject(cid, index, reason):
            return [cid, index, reason]
        case Have(cid, index) | Request(cid, index) | Cancel(cid, index):
            return [cid, index]
        case GetManifest(cid) | GetBitfield(cid):
            return [cid]
        case Ping(nonce) | Pong(nonce):
            return [nonce]
        case Goodbye(reason):
            return [reason]
        case Reserve():
            return []
        case RelayStatus(code, reason, ttl, addrs, observed, seconds, nbytes):
            return [code, reason, ttl, [[h, p] for h, p in addrs],
                    None if observed is None else [observed[0], observed[1]], seconds, nbytes]
        case Connect(target):
            return [target.key]
        case Stop(source, token):
            return [source.key, token]
        case Accept(token):
            return [token]
        case HolePunchConnect(round_, addrs, public):
            return [round_, [[h, p] for h, p in addrs], public]
        case HolePunchSync(round_):
            return [round_]
    raise AssertionError(msg)


_TYPES = {Hello: MessageType.HELLO, GetManifest: MessageType.GET_MANIFEST,
          Manifest: MessageType.MANIFEST, GetBitfield: MessageType.GET_BITFIELD,
          Bitfield: MessageType.BITFIELD, Have: MessageType.HAVE, Request: MessageType.REQUEST,
          Reject: MessageType.REJECT, Cancel: MessageType.CANCEL, Ping: MessageType.PING,
          Pong: MessageType.PONG, Goodbye: MessageType.GOODBYE, Reserve: MessageType.RESERVE,
          RelayStatus: MessageType.RELAY_STATUS, Connect: MessageType.CONNECT,
          Stop: MessageType.STOP, Accept: MessageType.ACCEPT,
          HolePunchConnect: MessageType.HOLE_PUNCH_CONNECT,
          HolePunchSync: MessageType.HOLE_PUNCH_SYNC}


# -- the properties ---------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(messages)
def test_the_body_written_from_the_document_is_the_one_encode_makes(msg: Message) -> None:
    body = bytes([_TYPES[type(msg)]]) + smallest(fields_of(msg))
    assert encode(msg)[FRAME_HEADER:] == body
    assert decode(body) == msg


@settings(max_examples=600, deadline=None)
@given(messages, st.data())
def test_a_body_decodes_only_if_it_is_the_canonical_one(msg: Message, data: st.DataObject) -> None:
    canonical = encode(msg)[FRAME_HEADER:]
    body = bytes([canonical[0]]) + wide(fields_of(msg), drawn(data.draw))
    if body == canonical:
        assert decode(body) == msg
    else:
        with pytest.raises(RemoteProtocolError, match="non-canonical"):
            decode(body)


@settings(max_examples=200, deadline=None)
@given(cids, indexes, st.binary(max_size=64))
def test_a_data_header_re_encodes_to_the_bytes_received(cid: bytes, index: int, payload: bytes) -> None:
    body = bytes([MessageType.DATA]) + cid + struct.pack(">I", index) + payload
    msg = decode(body)
    assert msg == Data(cid, index, payload)
    assert encode(msg)[FRAME_HEADER:] == body


@pytest.mark.parametrize("body", [
    # Request(CID, 5) with the index as a uint32, a uint8, and a (positive) int8
    b"\x07\x92\xc4\x20" + CID + b"\xce\x00\x00\x00\x05",
    b"\x07\x92\xc4\x20" + CID + b"\xcc\x05",
    b"\x07\x92\xc4\x20" + CID + b"\xd0\x05",
    # ... with the content id as a bin16, and the list as an array16
    b"\x07\x92\xc5\x00\x20" + CID + b"\x05",
    b"\x07\xdc\x00\x02\xc4\x20" + CID + b"\x05",
    # Ping(1) as a uint64; Goodbye("bye") as a str8
    b"\x0b\x91\xcf" + bytes(7) + b"\x01",
    b"\x0d\x91\xd9\x03bye",
], ids=["index uint32", "index uint8", "index int8", "cid bin16", "array16", "nonce uint64",
        "reason str8"])
def test_non_canonical_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="non-canonical"):
        decode(body)


def test_the_canonical_request_is_accepted() -> None:
    assert decode(b"\x07\x92\xc4\x20" + CID + b"\x05") == Request(CID, 5)


# -- the fast path for indexed messages -------------------------------------------------------


def _general(frame: bytes) -> object:
    """What the general (msgpack) path makes of ``frame``: a message, or the error type."""
    from p2p.wire import messages

    saved = messages._INDEXED
    messages._INDEXED = {}
    try:
        return messages.decode(frame)
    except RemoteProtocolError as exc:
        return type(exc)
    finally:
        messages._INDEXED = saved


def _fast(frame: bytes) -> object:
    try:
        return decode(frame)
    except RemoteProtocolError as exc:
        return type(exc)


@pytest.mark.parametrize("mtype", [6, 7, 10])
@pytest.mark.parametrize("index", [0, 5, 127, 128, 255, 256, 65535, 65536, 2**32 - 1])
def test_the_fast_path_decodes_indexed_messages_exactly_as_the_general_path(mtype: int, index: int) -> None:
    cid = bytes(range(32))
    for width_body in bodies_of_index(index):
        frame = bytes([mtype]) + b"\x92\xc4\x20" + cid + width_body
        assert _fast(frame) == _general(frame)


def bodies_of_index(index: int) -> list[bytes]:
    """``index`` in every msgpack integer form it fits (canonical or not)."""
    out = []
    if index < 0x80:
        out.append(bytes([index]))
    for lead, fmt in ((0xCC, ">B"), (0xCD, ">H"), (0xCE, ">I"), (0xCF, ">Q"),
                      (0xD0, ">b"), (0xD1, ">h"), (0xD2, ">i"), (0xD3, ">q")):
        try:
            out.append(bytes([lead]) + struct.pack(fmt, index))
        except struct.error:
            pass
    return out


@settings(max_examples=300, deadline=None)
@given(mtype=st.sampled_from([6, 7, 10]), tail=st.binary(max_size=8),
       prefix=st.sampled_from([b"\x92\xc4\x20", b"\x92\xc5\x00\x20", b"\x93\xc4\x20", b"\xdc\x00\x02\xc4\x20"]))
def test_the_fast_path_agrees_with_the_general_path_on_any_body(mtype: int, tail: bytes, prefix: bytes) -> None:
    frame = bytes([mtype]) + prefix + bytes(32) + tail
    assert _fast(frame) == _general(frame)


@pytest.mark.parametrize("kind", [Have, Request, Cancel])
@pytest.mark.parametrize("index", [0, 5, 127, 128, 255, 256, 65535, 65536, 2**32 - 1])
def test_the_fast_encoder_writes_the_documented_body(kind: type, index: int) -> None:
    """Have, Request and Cancel are encoded without msgpack (one per chunk asked): the same
    bytes as the document's smallest form, at every width of the index."""
    msg = kind(bytes(range(32)), index)
    assert encode(msg)[FRAME_HEADER:] == bytes([_TYPES[kind]]) + smallest(fields_of(msg))
