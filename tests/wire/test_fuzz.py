"""Hypothesis: decoders and the session let nothing escape but RemoteProtocolError.

The decoders are fed garbage directly; the session is fed garbage from outside (which dies
at the AEAD tag) and, through a RawPeer, authentic records whose decrypted plaintext is
hostile, checked against a frame-by-frame reading of the protocol and for bounded memory.
"""

from __future__ import annotations

import signal
import struct
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from p2p.encoding import pack, unpack
from p2p.identity import Identity
from p2p.wire import noise as noise_module
from p2p.wire import session as session_module
from p2p.wire.errors import RemoteProtocolError
from p2p.wire.messages import (
    CONTENT_ID_LEN,
    DATA_HEADER,
    FRAME_HEADER,
    MAX_FRAME,
    PROTOCOL_VERSION,
    Data,
    Hello,
    Message,
    MessageType,
    Ping,
    decode,
    decode_frame_length,
    encode,
)
from p2p.wire.noise import CIPHERS, MAX_MESSAGE
from p2p.wire.session import MAX_PLAINTEXT, RECV_BUFFER, Session, State

from .raw_peer import RawPeer
from .test_session import ALL, CID, hello, opened

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.binary(max_size=40)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5), max_leaves=12)

_U32 = struct.Struct(">I")
_OTHER = Identity.generate()
_CONTROL: list[Message] = [m for m in ALL if not isinstance(m, Data)]
_SAMPLES: list[Message] = [*ALL, hello(_OTHER)]
# Values just inside and just outside the wire's limits, for fields that check them.
_edge_values: st.SearchStrategy[object] = st.sampled_from([
    -1, 0, 255, 256, 0xFFFF, 0x10000, 2**32 - 1, 2**32, 2**64 - 1, -(2**63), None, True,
    b"", bytes(31), bytes(32), bytes(33), "", "x" * 128, "x" * 129, "x" * 256, "x" * 257,
    "\u00e9" * 128, [], [[]], [["", 1]], [["h", 0]], [["h", 0x10000]], [["h", 1]] * 17,
]) | values


def _frame(body: bytes) -> bytes:
    return _U32.pack(len(body)) + body


def _packed(mtype: MessageType, fields: list[object]) -> bytes | None:
    try:
        return _frame(bytes([mtype]) + pack(fields))
    except (TypeError, OverflowError):
        return None


def _with_bad_field(msg: Message, i: int, value: object) -> bytes | None:
    """``msg`` with field ``i`` of its msgpack list replaced by ``value`` (framed)."""
    frame = encode(msg)
    fields = unpack(frame[5:], max_bin=1 << 24)
    fields[i % len(fields)] = value
    return _packed(MessageType(frame[4]), fields)


def _wire_values(frames: st.SearchStrategy[bytes | None]) -> st.SearchStrategy[bytes]:
    """The frames that could be packed at all (msgpack has no 70-bit integers)."""
    return frames.filter(lambda b: b is not None)  # type: ignore[return-value]


def _decode_checked(frame: bytes | bytearray) -> Message | None:
    """``decode(frame)``, which may raise RemoteProtocolError and nothing else (then None).

    What it does return must be a message that this side could have sent: it encodes
    without breaking a limit, to exactly the bytes received (decoding is canonical),
    and decodes back to itself.
    """
    try:
        msg = decode(frame)
    except RemoteProtocolError:
        return None
    assert encode(msg)[FRAME_HEADER:] == bytes(frame)
    assert decode(encode(msg)[FRAME_HEADER:]) == msg
    return msg


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_decode_random_bytes(data: bytes) -> None:
    _decode_checked(data)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(list(MessageType)), st.lists(values, max_size=5))
def test_decode_structured_garbage(mtype: MessageType, fields: list[object]) -> None:
    frame = _packed(mtype, fields)
    if frame is not None:  # else beyond msgpack's integers: not a wire value at all
        _decode_checked(frame[FRAME_HEADER:])


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([*_CONTROL, hello(_OTHER)]), st.integers(0, 7), _edge_values)
def test_decode_one_bad_field(msg: Message, i: int, value: object) -> None:
    frame = _with_bad_field(msg, i, value)
    if frame is not None:
        _decode_checked(frame[FRAME_HEADER:])


def test_decode_every_prefix_and_extension() -> None:
    """Every frame of every sample cut at every point, and with bytes added at its end."""
    for msg in _SAMPLES:
        frame = encode(msg)[FRAME_HEADER:]
        for cut in range(len(frame)):
            _decode_checked(frame[:cut])
        for extra in (b"\x00", b"\xc0", b"\x91\x00", b"\xff" * 5):
            _decode_checked(frame + extra)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(ALL), st.data())
def test_mutated_frames(msg: Message, data: st.DataObject) -> None:
    frame = bytearray(encode(msg)[FRAME_HEADER:])
    i = data.draw(st.integers(0, len(frame) - 1))
    frame[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(frame)))
    _decode_checked(bytes(frame[:cut]))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(ALL))
def test_round_trip(msg: object) -> None:
    frame = encode(msg)  # type: ignore[arg-type]
    assert decode_frame_length(frame[:4]) == len(frame) - 4
    assert decode(frame[4:]) == msg


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=4, max_size=4))
def test_frame_length(header: bytes) -> None:
    try:
        n = decode_frame_length(header)
        assert n == struct.unpack(">I", header)[0]
    except RemoteProtocolError:
        pass


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
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


@settings(max_examples=30, deadline=None)
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


# -- behind the tag: authentic records whose plaintext is hostile ---------------------------
#
# Everything above that reaches a session dies at the AEAD tag (only the key holder can
# make a record that decrypts). Here the far end is a RawPeer: it completes a real handshake
# with the session under test and then seals whatever plaintext the test draws, so the
# frame reassembly and the message decoders behind decryption are what gets fuzzed.

SERVER_MAX_FRAME = 64 * 1024
"""What a server accepts (``ServerLimits.max_frame``, docs/PROTOCOL.md)."""
SMALLEST_RECV_BUFFER = 2 * (MAX_MESSAGE + 2)
"""The smallest receive buffer a Session accepts: two whole records."""
RETAINED_SLACK = 4 * 1024
"""Room for the small objects a session keeps besides a frame (they come to under 500 bytes)."""

STUCK_AFTER = 10.0
"""Seconds one example may take before the receiver counts as stuck (examples take milliseconds)."""
MAX_RECORDS = 300
"""Records per example, at most (about): 2-byte records of a 200 KiB frame would take seconds."""
MAX_READS = 200
"""Calls to receive_data per example, at most (about)."""

_PATTERN = bytes(range(256)) * 800  # Data payloads up to 200 KiB without drawing random bytes
_EDGE_LENGTHS = [0, 1, DATA_HEADER - 1, 1000, 1001, SERVER_MAX_FRAME, SERVER_MAX_FRAME + 1,
                 MAX_FRAME, MAX_FRAME + 1, 2**31, 2**32 - 1]


def _mutated(msg: Message, i: int, byte: int) -> bytes:
    frame = bytearray(encode(msg))
    frame[i % len(frame)] = byte
    return bytes(frame)


# The decrypted stream is made of pieces: plaintext bytes, or the name of one that depends
# on the peer or on the receiver's limit (resolved in the test).
_valid: st.SearchStrategy[bytes] = (
    st.sampled_from(ALL).map(encode)
    | st.one_of(st.integers(0, 900), st.integers(0, 900),
                st.integers(0, len(_PATTERN)))  # the large ones span many records
    .map(lambda n: encode(Data(CID, 9, _PATTERN[:n]))))
_headers: st.SearchStrategy[bytes] = st.tuples(  # any length, then too little or too much
    st.sampled_from(_EDGE_LENGTHS) | st.integers(0, 2**32 - 1), st.binary(max_size=64),
).map(lambda t: _U32.pack(t[0]) + t[1])
_bad_field = _wire_values(st.tuples(  # a valid-looking message with one field wrong
    st.sampled_from([*_CONTROL, hello(_OTHER)]), st.integers(0, 7), _edge_values,
).map(lambda t: _with_bad_field(*t)))
_truncated: st.SearchStrategy[bytes] = st.tuples(  # a frame cut short, its length fixed to match
    st.sampled_from(_SAMPLES), st.integers(0, 64),
).map(lambda t: _frame(encode(t[0])[FRAME_HEADER:][:t[1]]))
_hostile: st.SearchStrategy[bytes] = st.one_of(
    st.tuples(st.sampled_from(list(MessageType)) | st.integers(0, 255), st.binary(max_size=300))
    .map(lambda t: _frame(bytes([t[0]]) + t[1])),                                  # garbage body
    _wire_values(st.tuples(st.sampled_from(list(MessageType)), st.lists(values, max_size=5))
                 .map(lambda t: _packed(*t))),                                     # well-typed garbage
    st.tuples(st.sampled_from(_SAMPLES), st.integers(0, 1 << 20), st.integers(0, 255))
    .map(lambda t: _mutated(*t)),                                                  # one byte changed
    st.tuples(st.sampled_from(_SAMPLES), st.integers(0, 64))
    .map(lambda t: encode(t[0])[:t[1]]),                                           # cut, length stale
    st.binary(max_size=100),                                                       # raw bytes
)
_named = st.sampled_from(["hello", "hello-other-version", "data-at-limit", "data-over-limit"])
# Valid frames more often than not, so that a hostile one often comes deep into a working stream.
_pieces = st.one_of(_valid, _valid, _valid, _valid, _headers, _bad_field, _truncated, _hostile,
                    _named)


def _resolve(piece: bytes | str, peer: RawPeer, max_frame: int) -> bytes:
    match piece:
        case bytes():
            return piece
        case "hello":
            return peer.hello()
        case "hello-other-version":
            return peer.hello(PROTOCOL_VERSION + 1)
        case "data-at-limit" | "data-over-limit":
            length = max_frame + (piece == "data-over-limit")
            payload = _PATTERN[:min(length - DATA_HEADER, len(_PATTERN))]  # at MAX_FRAME: cut short
            return _U32.pack(length) + bytes([MessageType.DATA]) + CID + _U32.pack(3) + payload
    raise AssertionError(piece)


def _plain(msg: Message) -> Message:
    """``msg`` with a Data payload copied out of the session's frame buffer (compared by value)."""
    return Data(msg.content_id, msg.index, bytes(msg.payload)) if isinstance(msg, Data) else msg


def _reference(plain: bytes, peer: RawPeer, max_frame: int) -> tuple[list[Message], str, int]:
    """What the docs say a receiver makes of this decrypted stream, frame by frame.

    Returns the messages it yields; how the stream ends: ``"ok"``, ``"partial"`` (a frame is
    cut short: EOF is an error) or ``"error"`` (the peer broke the protocol); and the length
    of the frame cut short (0 if none), which is what the receiver may be holding at the end.
    """
    out: list[Message] = []
    pos, seen_hello = 0, False
    while len(plain) - pos >= FRAME_HEADER:
        (length,) = _U32.unpack_from(plain, pos)
        if not 1 <= length <= min(MAX_FRAME, max_frame):
            return out, "error", 0
        if len(plain) - pos - FRAME_HEADER < length:
            return out, "partial", length
        body = plain[pos + FRAME_HEADER:pos + FRAME_HEADER + length]
        pos += FRAME_HEADER + length
        try:
            msg = decode(body)
        except RemoteProtocolError:
            return out, "error", 0
        if not seen_hello:
            if (not isinstance(msg, Hello) or msg.peer_id != peer.identity.peer_id
                    or msg.version != PROTOCOL_VERSION):
                return out, "error", 0
            seen_hello = True
        elif isinstance(msg, Hello):
            return out, "error", 0
        else:
            out.append(_plain(msg))
    return out, "ok" if pos == len(plain) else "partial", 0


class Stuck(AssertionError):
    """The receiver did not return: a loop in it makes no progress."""


@contextmanager
def _watchdog(seconds: float) -> Iterator[None]:
    """Raise :class:`Stuck` in the block if it runs longer than ``seconds``.

    pytest-timeout cannot stand in: Hypothesis takes its one alarm as a failure and replays
    the example to shrink it, this time with no alarm set, and that replay would hang.
    Any alarm already set (pytest-timeout's, for the whole test) is put back afterwards.
    """
    def stuck(signum: int, frame: object) -> None:
        raise Stuck(f"receive_data did not return within {seconds} s")

    previous = signal.signal(signal.SIGALRM, stuck)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    start = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - start), 0.001))


def _retained(snapshot: tracemalloc.Snapshot) -> int:
    """Bytes still allocated from the session and its cipher states."""
    keep = [tracemalloc.Filter(True, session_module.__file__),
            tracemalloc.Filter(True, noise_module.__file__)]
    return sum(stat.size for stat in snapshot.filter_traces(keep).statistics("filename"))


def _feed(session: Session, wire: bytes, read_sizes: list[int], *, recv_buffer: int,
          max_frame: int, holding: int) -> tuple[list[Message], RemoteProtocolError | None]:
    """Feed ``wire`` in reads of ``read_sizes`` (cycled) until it ends or the session rejects it.

    Returns the messages received and the rejection, if any. Checks that memory stays within
    the documented limits: the receive buffer, plus one frame in progress (``holding`` bytes
    of it at the end).
    """
    got: list[Message] = []
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        pos, i = 0, 0
        while pos < len(wire):
            step = read_sizes[i % len(read_sizes)]
            i += 1
            try:
                msgs = session.receive_data(wire[pos:pos + step])
            except RemoteProtocolError as exc:
                return got, exc
            pos += step
            got += [_plain(m) for m in msgs]
            del msgs
            # The receive buffer never grows, and always has room for a whole record (or
            # the reader would stall); besides it, the session holds one frame in progress.
            room = session.get_buffer()
            assert len(room.obj) == recv_buffer  # type: ignore[arg-type]
            assert len(room) >= MAX_MESSAGE + 2
            del room
            assert session.pending_receive <= MAX_MESSAGE + 1 + max_frame
        # Counted by the allocator, not by the session: since the handshake it grew by the
        # frame in progress and nothing else (no copy of what it already delivered).
        assert _retained(tracemalloc.take_snapshot()) <= holding + RETAINED_SLACK
        return got, None
    finally:
        if started:
            tracemalloc.stop()


_sizes = st.lists(st.integers(0, 40) | st.integers(0, MAX_PLAINTEXT), min_size=1, max_size=8)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(pieces=st.lists(_pieces, min_size=1, max_size=12),
       hello_first=st.sampled_from([True, True, True, False]),
       peer_dials=st.booleans(), cipher=st.sampled_from(sorted(CIPHERS)),
       max_frame=st.sampled_from([MAX_FRAME, SERVER_MAX_FRAME, 1000]),
       recv_buffer=st.sampled_from([RECV_BUFFER, SMALLEST_RECV_BUFFER]),
       record_sizes=_sizes, read_sizes=_sizes,
       cut=st.none() | st.tuples(st.integers(0, 64) | st.integers(0, MAX_PLAINTEXT),
                                 st.integers(0, MAX_MESSAGE)))
def test_session_fed_hostile_plaintext(pieces: list[bytes | str], hello_first: bool,
                                       peer_dials: bool, cipher: str, max_frame: int,
                                       recv_buffer: int, record_sizes: list[int],
                                       read_sizes: list[int], cut: tuple[int, int] | None) -> None:
    """Any plaintext in authentic records: valid messages, or RemoteProtocolError; bounded memory."""
    ident = Identity.generate()
    session = Session(ident, hello(ident), initiator=not peer_dials, cipher=cipher,
                      recv_buffer=recv_buffer, max_frame=max_frame)
    peer = RawPeer(session, cipher=cipher)
    plain = (peer.hello() if hello_first else b"") + b"".join(
        _resolve(p, peer, max_frame) for p in pieces)
    # At most about MAX_RECORDS records: tiny records for short streams, coarser for long ones.
    least = max(1, len(plain) // MAX_RECORDS)
    record_sizes = [n and max(n, least) for n in record_sizes]
    record_sizes = record_sizes if any(record_sizes) else [*record_sizes, least]
    if cut is None:  # the stream ends on a record boundary
        delivered, wire = plain, peer.seal(plain, record_sizes)
    else:  # the stream ends inside one last record, which carries the last `tail` bytes
        tail, keep = min(cut[0], len(plain)), cut[1]
        delivered = plain[:len(plain) - tail]
        wire = peer.seal(delivered, record_sizes)
        last = peer.record(plain[len(plain) - tail:])
        wire += last[:1 + keep % (len(last) - 1)]
    expected, verdict, holding = _reference(delivered, peer, max_frame)

    least = max(1, len(wire) // MAX_READS)
    with _watchdog(STUCK_AFTER):
        got, failure = _feed(session, wire, [max(n, least) for n in read_sizes],
                             recv_buffer=recv_buffer, max_frame=max_frame, holding=holding)

    event(f"stream: {verdict}, {min(len(expected), 3)}+ messages before its end")
    assert got == expected[:len(got)]
    if failure is not None:
        assert verdict == "error", f"rejected a stream the protocol allows: {failure}"
        assert "authentication" not in str(failure)  # every record was authentic
        assert session.state is State.CLOSED
        return
    assert verdict != "error", "accepted a stream the protocol forbids"
    assert got == expected
    for msg in got:  # every message that came out is one we could have sent
        assert _plain(decode(encode(msg)[FRAME_HEADER:])) == msg
    if verdict == "partial" or cut is not None:
        with pytest.raises(RemoteProtocolError):
            session.receive_eof()
    else:
        session.receive_eof()


def test_raw_peer_reaches_the_decoder() -> None:
    """RawPeer's records authenticate, so a bad frame fails in the decoder, not at the tag."""
    ident = Identity.generate()
    session = Session(ident, hello(ident), initiator=True)
    peer = RawPeer(session)
    assert session.receive_data(peer.seal(peer.hello() + encode(Ping(1)))) == [Ping(1)]
    assert session.remote_hello is not None
    assert session.remote_hello.peer_id == peer.identity.peer_id
    with pytest.raises(RemoteProtocolError, match="unknown message type 200"):
        session.receive_data(peer.seal(_frame(bytes([200]) + pack([]))))
