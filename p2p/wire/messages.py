"""Application messages and their frames: encode and decode side by side.

A frame is ``length:u32be || type:u8 || body`` where ``length`` counts the type
byte and the body. Every body except :class:`Data` is one canonical msgpack list
(``p2p.encoding``). :class:`Data` is a fixed binary header followed by the raw
chunk bytes, so that a megabyte is never wrapped (or unwrapped) by msgpack and
the receiver gets the payload as a view of the buffer the frame was decrypted into.

Decoding is canonical: a control body must be exactly the encoding of the message it
decodes to (re-encoded and compared), so one message has one body. A Data header is
fixed binary, which has one form for each value already.

This module does no I/O. Every decoder raises :class:`RemoteProtocolError` and nothing else.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any

from .. import content, encoding
from ..address import normalize_host
from ..bitfield import bitfield_size, bits_beyond
from ..errors import DecodeError
from ..identity import PUBLIC_KEY_LEN, PeerId
from .errors import LocalProtocolError, RemoteProtocolError

# -- limits (docs/PROTOCOL.md explains each) --------------------------------------------

PROTOCOL_VERSION = 1
"""The version in Hello. A peer speaking another version is sent Goodbye and dropped."""
CONTENT_ID_LEN = 32
"""A content id is a BLAKE3-256 digest."""
# The content formats set these; the wire only carries what they allow.
MIN_CHUNK = content.MIN_CHUNK
"""Smallest chunk size a manifest may choose."""
MAX_CHUNK = content.MAX_CHUNK
"""Largest chunk size a manifest may choose; a Data payload is one whole chunk."""
MAX_MANIFEST = content.MAX_MANIFEST_BYTES
"""Largest encoded signed manifest carried in a Manifest message."""
MAX_CHUNK_COUNT = max(content.MAX_TOTAL_CHUNKS, content.MAX_LISTED_CHUNKS)
"""The most chunks a content has (a listed directory's limit; a version 1 manifest of at most
MAX_MANIFEST bytes lists fewer): a Bitfield is at most a 2 MiB body."""
MAX_INDEX = 0xFFFF_FFFF
"""Chunk indexes travel as u32."""
MAX_ADDRS = 16
"""Listen addresses in a Hello: enough for dual stack and a few interfaces."""
MAX_HOST = 253
"""Longest host text (a DNS name's maximum length)."""
MAX_AGENT = 128
"""Longest agent string in a Hello (for logs and UIs only)."""
MAX_REASON = 256
"""Longest reason text in a Goodbye."""
MAX_PUNCH_ADDRS = 8
"""Addresses in a HolePunchConnect: a node's observed and listen addresses, both families.
The receiver dials at most ``p2p.wire.punch.MAX_CANDIDATES`` of them."""
MAX_PUNCH_ROUND = 255
"""Round numbers travel as u8; the punch itself stops after ``p2p.wire.punch.MAX_ROUNDS``."""
MAX_CONTROL_BODY = MAX_MANIFEST + 1024
"""Largest msgpack body: a Manifest (the largest non-Data message) plus its fields."""
FRAME_HEADER = 4
"""The u32 length prefix."""
DATA_HEADER = 1 + CONTENT_ID_LEN + 4
"""type, content id, index: the fixed part of a Data frame before the payload."""
MAX_FRAME = DATA_HEADER + MAX_CHUNK
"""Largest frame length (type + body): one Data message carrying the largest chunk."""


class MessageType(enum.IntEnum):
    """The type byte of each frame."""

    HELLO = 1
    GET_MANIFEST = 2
    MANIFEST = 3
    GET_BITFIELD = 4
    BITFIELD = 5
    HAVE = 6
    REQUEST = 7
    DATA = 8
    REJECT = 9
    CANCEL = 10
    PING = 11
    PONG = 12
    GOODBYE = 13
    RESERVE = 14
    RELAY_STATUS = 15
    CONNECT = 16
    STOP = 17
    ACCEPT = 18
    # 14-19 are left free for the relay's messages; hole punching starts at 20.
    HOLE_PUNCH_CONNECT = 20
    HOLE_PUNCH_SYNC = 21


class RejectReason(enum.IntEnum):
    """Why a Request was not answered with Data. Unknown codes decode as plain ints."""

    NOT_HELD = 1
    """The server does not hold this chunk (or this content)."""
    CHANGED = 2
    """The shared file changed on disk; the server no longer serves it as this content."""
    TOO_MANY_IN_FLIGHT = 3
    """The client has more requests outstanding than the server allows; retry later."""
    BAD_INDEX = 4
    """The index is beyond the content's chunk count."""
    CANCELLED = 5
    """Not sent on the wire today; reserved so clients can share one code space."""
    INTERNAL = 6
    """The server could not read the chunk (an I/O error on its side)."""


class RelayCode(enum.IntEnum):
    """The outcome a :class:`RelayStatus` reports (Circuit Relay v2's codes, our numbers).
    Unknown codes decode as plain ints (treat as a refusal)."""

    OK = 0
    NO_RESERVATION = 1
    """The target holds no reservation on this relay (it cannot be reached through it)."""
    RESOURCE_LIMIT_EXCEEDED = 2
    """A relay limit (reservations, circuits, per peer, per IP) is reached; try later or elsewhere."""
    PERMISSION_DENIED = 3
    """This relay does not serve the request (relaying is off, or it refuses this peer)."""
    CONNECTION_FAILED = 4
    """The target did not open its side of the circuit in time."""


TOKEN_LEN = 16
"""A circuit token: random, names one pending circuit between the relay and its target."""
MAX_RELAY_ADDRS = 4
"""Addresses a relay names for itself in a RelayStatus (v4 + v6, a spare)."""


# -- messages ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """First application message from each side, right after the Noise handshake."""

    version: int
    """Protocol version the sender speaks (PROTOCOL_VERSION)."""
    peer_id: PeerId
    """The sender's peer id; must equal the identity proven in the handshake."""
    listen_addrs: tuple[tuple[str, int], ...]
    """Where the sender accepts connections (host, port); may be empty."""
    agent: str
    """Free text naming the software, e.g. ``p2p/0.1``."""


@dataclass(frozen=True, slots=True)
class GetManifest:
    """Ask for the signed manifest of ``content_id``."""

    content_id: bytes


@dataclass(frozen=True, slots=True)
class Manifest:
    """Answer to GetManifest: the encoded signed manifest, or None if unknown to the sender."""

    content_id: bytes
    data: bytes | None


@dataclass(frozen=True, slots=True)
class GetBitfield:
    """Ask which chunks of ``content_id`` the peer can serve; subscribes to its Have messages."""

    content_id: bytes


@dataclass(frozen=True, slots=True)
class Bitfield:
    """The chunks the sender can serve: bit i (MSB first) of ``bits`` is chunk i.

    ``chunk_count == 0`` and empty ``bits`` mean "I hold nothing of it".
    """

    content_id: bytes
    chunk_count: int
    bits: bytes


@dataclass(frozen=True, slots=True)
class Have:
    """The sender can now serve chunk ``index`` of ``content_id``."""

    content_id: bytes
    index: int


@dataclass(frozen=True, slots=True)
class Request:
    """Ask for the whole chunk ``index`` of ``content_id``."""

    content_id: bytes
    index: int


@dataclass(frozen=True, slots=True)
class Data:
    """The bytes of one chunk. ``payload`` is a view of the receive buffer (no copy)."""

    content_id: bytes
    index: int
    payload: bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class Reject:
    """A Request that will not be answered with Data; ``reason`` is a RejectReason code."""

    content_id: bytes
    index: int
    reason: int


@dataclass(frozen=True, slots=True)
class Cancel:
    """The client no longer wants chunk ``index``; the server drops it if not yet sent."""

    content_id: bytes
    index: int


@dataclass(frozen=True, slots=True)
class Ping:
    """Liveness probe; answered by a Pong with the same nonce."""

    nonce: int


@dataclass(frozen=True, slots=True)
class Pong:
    """Answer to Ping."""

    nonce: int


@dataclass(frozen=True, slots=True)
class Goodbye:
    """The sender is closing the connection; ``reason`` is for logs."""

    reason: str


@dataclass(frozen=True, slots=True)
class Reserve:
    """Ask the relay for a reservation (or to refresh the one held on this connection)."""


@dataclass(frozen=True, slots=True)
class RelayStatus:
    """The relay's answer to Reserve, Connect or Accept (docs/PROTOCOL.md, Relays)."""

    code: int
    """:class:`RelayCode` (OK or why not)."""
    reason: str
    """For people and logs: which limit, which peer."""
    ttl: int = 0
    """Reserve: seconds the reservation lasts from now (refresh before). Else 0."""
    relay_addrs: tuple[tuple[str, int], ...] = ()
    """Reserve: where the relay accepts connections (what relay hints carry)."""
    observed: tuple[str, int] | None = None
    """Reserve: the address the relay sees this connection come from."""
    limit_seconds: int = 0
    """Connect/Accept: the longest the circuit may last (0: no limit)."""
    limit_bytes: int = 0
    """Connect/Accept: bytes the circuit may carry, both ways together (0: no limit)."""


@dataclass(frozen=True, slots=True)
class Connect:
    """Dialler -> relay: splice this connection to ``target`` (which holds a reservation)."""

    target: PeerId


@dataclass(frozen=True, slots=True)
class Stop:
    """Relay -> target over its reservation: ``source`` wants a circuit; open a new connection
    to the relay and send Accept(token) on it."""

    source: PeerId
    token: bytes


@dataclass(frozen=True, slots=True)
class Accept:
    """Target -> relay on a new connection: this connection is the target's side of the
    circuit named ``token``."""

    token: bytes


@dataclass(frozen=True, slots=True)
class HolePunchConnect:
    """Hole punching, over a relayed session: where the sender can be dialled directly.

    The peer that starts the punch sends it (and times the answer: the round trip), the other
    answers with its own (docs/PROTOCOL.md, Hole punching).
    """

    round: int
    """Which attempt this is, from 1; the answer repeats it."""
    addrs: tuple[tuple[str, int], ...]
    """The sender's addresses (IP literal, port): the ones observers saw it at first, then its
    listen addresses. Unsigned claims: the receiver dials a bounded few."""
    public: bool
    """The sender is reachable (a dial-back proved it): then the other side simply dials it
    (connection reversal), with no timing."""


@dataclass(frozen=True, slots=True)
class HolePunchSync:
    """Hole punching: the starter's go. Its receiver dials at once; the sender dials half a
    round trip later, so that the two SYNs cross."""

    round: int
    """The round of the HolePunchConnect exchange this follows."""


Message = (Hello | GetManifest | Manifest | GetBitfield | Bitfield | Have | Request | Data
           | Reject | Cancel | Ping | Pong | Goodbye | Reserve | RelayStatus | Connect | Stop
           | Accept | HolePunchConnect | HolePunchSync)
RELAY_MESSAGES = (Reserve, Connect, Accept)
"""Messages a relay answers: a server hands a connection whose first request is one of
these to its relay (docs/PROTOCOL.md, Relays)."""

_U32 = struct.Struct(">I")
_DATA_HEAD = struct.Struct(">IB32sI")  # frame length, type, content id, index
_MAX_U64 = (1 << 64) - 1
_MAX_U32 = (1 << 32) - 1


# -- encoding -----------------------------------------------------------------------------


def encode_frame(msg: Message) -> tuple[bytes, bytes | bytearray | memoryview]:
    """Encode ``msg`` as one frame, returned as ``(head, tail)`` to be sent back to back.

    For Data, ``head`` is the 41-byte fixed header and ``tail`` the payload as given
    (not copied); for every other message ``head`` is the whole frame and ``tail`` empty.
    Raises :class:`LocalProtocolError` for a message that breaks a limit (our bug).
    """
    if type(msg) is Data:
        payload = msg.payload
        n = len(payload)
        if n > MAX_CHUNK or len(msg.content_id) != CONTENT_ID_LEN or not 0 <= msg.index <= MAX_INDEX:
            raise LocalProtocolError("Data message breaks a wire limit")
        head = _DATA_HEAD.pack(DATA_HEADER + n, MessageType.DATA, msg.content_id, msg.index)
        return head, payload
    if isinstance(msg, (Request, Have, Cancel)):
        return _encode_indexed(msg), b""
    mtype, fields = _fields(msg)
    body = encoding.pack(fields)
    if len(body) > MAX_CONTROL_BODY:
        raise LocalProtocolError(f"{type(msg).__name__} is larger than the wire allows")
    return _U32.pack(1 + len(body)) + bytes((mtype,)) + body, b""


def encode(msg: Message) -> bytes:
    """The frame of ``msg`` as one bytes object (copies a Data payload; for tests and small messages)."""
    head, tail = encode_frame(msg)
    return head + bytes(tail) if tail else head


def _fields(msg: Message) -> tuple[MessageType, list[Any]]:
    match msg:
        case Hello(version, peer_id, addrs, agent):
            _check_hello(version, addrs, agent)
            return MessageType.HELLO, [version, peer_id.key, [[h, p] for h, p in addrs], agent]
        case GetManifest(cid):
            return MessageType.GET_MANIFEST, [_cid_out(cid)]
        case Manifest(cid, data):
            if data is not None and len(data) > MAX_MANIFEST:
                raise LocalProtocolError("manifest larger than MAX_MANIFEST")
            return MessageType.MANIFEST, [_cid_out(cid), None if data is None else bytes(data)]
        case GetBitfield(cid):
            return MessageType.GET_BITFIELD, [_cid_out(cid)]
        case Bitfield(cid, count, bits):
            _check_bitfield(count, bits, LocalProtocolError)
            return MessageType.BITFIELD, [_cid_out(cid), count, bytes(bits)]
        case Have(cid, index):
            return MessageType.HAVE, [_cid_out(cid), _index_out(index)]
        case Request(cid, index):
            return MessageType.REQUEST, [_cid_out(cid), _index_out(index)]
        case Reject(cid, index, reason):
            if not 0 <= reason <= 255:
                raise LocalProtocolError("reject reason is a u8")
            return MessageType.REJECT, [_cid_out(cid), _index_out(index), int(reason)]
        case Cancel(cid, index):
            return MessageType.CANCEL, [_cid_out(cid), _index_out(index)]
        case Ping(nonce):
            return MessageType.PING, [_nonce_out(nonce)]
        case Pong(nonce):
            return MessageType.PONG, [_nonce_out(nonce)]
        case Goodbye(reason):
            return MessageType.GOODBYE, [_reason_out(reason)]
        case Reserve():
            return MessageType.RESERVE, []
        case RelayStatus(code, reason, ttl, addrs, observed, seconds, nbytes):
            if not 0 <= code <= 255 or not 0 <= ttl <= _MAX_U32 or not 0 <= seconds <= _MAX_U32 \
                    or not 0 <= nbytes <= _MAX_U64 or len(addrs) > MAX_RELAY_ADDRS:
                raise LocalProtocolError("RelayStatus breaks a wire limit")
            for host, port in (*addrs, *(() if observed is None else (observed,))):
                if not host or len(host.encode()) > MAX_HOST or not 0 < port <= 0xFFFF:
                    raise LocalProtocolError(f"bad relay address {host!r}:{port}")
            return MessageType.RELAY_STATUS, [
                int(code), _reason_out(reason), ttl, [[h, p] for h, p in addrs],
                None if observed is None else [observed[0], observed[1]], seconds, nbytes]
        case Connect(target):
            return MessageType.CONNECT, [target.key]
        case Stop(source, token):
            return MessageType.STOP, [source.key, _token_out(token)]
        case Accept(token):
            return MessageType.ACCEPT, [_token_out(token)]
        case HolePunchConnect(round_, addrs, public):
            _check_punch(round_, addrs, public)
            return MessageType.HOLE_PUNCH_CONNECT, [round_, [[h, p] for h, p in addrs], public]
        case HolePunchSync(round_):
            if not 1 <= round_ <= MAX_PUNCH_ROUND:
                raise LocalProtocolError("hole punch round must be in [1, 255]")
            return MessageType.HOLE_PUNCH_SYNC, [round_]
    raise LocalProtocolError(f"not a wire message: {type(msg).__name__}")


def _reason_out(reason: str) -> str:
    if len(reason.encode("utf-8", "surrogatepass")) > MAX_REASON:
        reason = reason.encode("utf-8", "ignore")[:MAX_REASON].decode("utf-8", "ignore")
    return reason


def _token_out(token: bytes) -> bytes:
    if not isinstance(token, bytes) or len(token) != TOKEN_LEN:
        raise LocalProtocolError(f"a circuit token is {TOKEN_LEN} bytes")
    return token


def _cid_out(cid: bytes) -> bytes:
    if not isinstance(cid, bytes) or len(cid) != CONTENT_ID_LEN:
        raise LocalProtocolError("content id must be 32 bytes")
    return cid


def _index_out(index: int) -> int:
    if not 0 <= index <= MAX_INDEX:
        raise LocalProtocolError("chunk index must fit in u32")
    return index


def _nonce_out(nonce: int) -> int:
    if not 0 <= nonce <= _MAX_U64:
        raise LocalProtocolError("ping nonce must fit in u64")
    return nonce


def _check_hello(version: int, addrs: tuple[tuple[str, int], ...], agent: str) -> None:
    if not 0 <= version <= 0xFFFF or len(addrs) > MAX_ADDRS or len(agent.encode()) > MAX_AGENT:
        raise LocalProtocolError("Hello breaks a wire limit")
    for host, port in addrs:
        if not host or len(host.encode()) > MAX_HOST or not 0 < port <= 0xFFFF:
            raise LocalProtocolError(f"bad listen address {host!r}:{port}")


def _check_punch(round_: int, addrs: tuple[tuple[str, int], ...], public: bool) -> None:
    if not 1 <= round_ <= MAX_PUNCH_ROUND or len(addrs) > MAX_PUNCH_ADDRS \
            or not isinstance(public, bool):
        raise LocalProtocolError("HolePunchConnect breaks a wire limit")
    for host, port in addrs:
        if not _is_canonical_ip(host) or not 0 < port <= 0xFFFF:
            raise LocalProtocolError(f"bad hole punch address {host!r}:{port}")


def _is_canonical_ip(host: str) -> bool:
    """An IP literal in its one printed form (no names: a punch never resolves one)."""
    try:
        return normalize_host(host) == host
    except ValueError:
        return False


def _check_bitfield(count: int, bits: bytes, error: type[Exception]) -> None:
    if not 0 <= count <= MAX_CHUNK_COUNT or len(bits) != bitfield_size(count):
        raise error("bitfield: length does not match chunk count")
    if bits_beyond(bits, count):
        raise error("bitfield: bits set beyond the chunk count")


# -- decoding -----------------------------------------------------------------------------


def decode_frame_length(header: bytes | bytearray | memoryview) -> int:
    """The frame length in a 4-byte header, checked against MAX_FRAME. Raises RemoteProtocolError."""
    n: int = _U32.unpack(header)[0]
    if not 1 <= n <= MAX_FRAME:
        raise RemoteProtocolError(f"frame length {n} outside [1, {MAX_FRAME}]")
    return n


def decode(frame: bytes | bytearray | memoryview) -> Message:
    """Decode one frame body (type byte + body, without the length prefix).

    A Data payload is returned as a memoryview of ``frame`` (no copy), so the
    caller must not reuse ``frame``. A control body that is not the canonical encoding of
    what it decodes to (a value not in msgpack's smallest form, say) is refused. Raises :class:`RemoteProtocolError` and nothing else.
    """
    view = memoryview(frame)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    if len(view) < 1:
        raise RemoteProtocolError("empty frame")
    mtype = view[0]
    if mtype == MessageType.DATA:
        if len(view) < DATA_HEADER:
            raise RemoteProtocolError("Data frame shorter than its header")
        if len(view) - DATA_HEADER > MAX_CHUNK:
            raise RemoteProtocolError("Data payload larger than MAX_CHUNK")
        cid = bytes(view[1:33])
        (index,) = _U32.unpack_from(view, 33)
        return Data(cid, index, view[DATA_HEADER:])
    if len(view) - 1 > MAX_CONTROL_BODY:
        raise RemoteProtocolError("control message larger than the wire allows")
    if mtype in _INDEXED and (fast := _decode_indexed(mtype, view)) is not None:
        return fast
    body = view[1:]
    try:
        fields = encoding.unpack(body, max_bin=MAX_MANIFEST, max_str=max(MAX_HOST, MAX_REASON),
                                 max_array=max(MAX_ADDRS, 4))
        msg = _decode_fields(mtype, fields)
    except DecodeError as exc:
        raise RemoteProtocolError(f"malformed message (type {mtype}): {exc}") from None
    # One message, one body: what we decoded must encode back to exactly the bytes received
    # (msgpack's smallest form of every value; docs/PROTOCOL.md, Frames).
    try:
        again = encoding.pack(_fields(msg)[1])
    except LocalProtocolError as exc:  # pragma: no cover - every decoded field is within limits
        raise RemoteProtocolError(f"malformed message (type {mtype}): {exc}") from None
    if body != again:
        raise RemoteProtocolError(f"non-canonical encoding of a {type(msg).__name__} message")
    return msg


_INDEXED: dict[int, type[Have] | type[Request] | type[Cancel]] = {
    MessageType.HAVE: Have, MessageType.REQUEST: Request, MessageType.CANCEL: Cancel}
"""The messages that come by the thousand (``[content_id, index]``): decoded by
:func:`_decode_indexed` without msgpack when their body is the canonical one."""
_INDEXED_TYPE: dict[type, int] = {kind: int(mtype) for mtype, kind in _INDEXED.items()}
_INDEXED_PREFIX = b"\x92\xc4\x20"  # a list of two, then a bin8 of 32 bytes
_U16 = struct.Struct(">H")


def _encode_indexed(msg: Request | Have | Cancel) -> bytes:
    """The frame of a Have, Request or Cancel, built directly: the same bytes as the general
    path (msgpack's smallest form of the index), which the tests check, at a fraction of its
    cost (one per chunk requested)."""
    cid, index = _cid_out(msg.content_id), _index_out(msg.index)
    if index < 0x80:
        tail = bytes((index,))
    elif index <= 0xFF:
        tail = bytes((0xCC, index))
    elif index <= 0xFFFF:
        tail = b"\xcd" + _U16.pack(index)
    else:
        tail = b"\xce" + _U32.pack(index)
    body = _INDEXED_PREFIX + cid + tail
    return _U32.pack(1 + len(body)) + bytes((_INDEXED_TYPE[type(msg)],)) + body


def _decode_indexed(mtype: int, view: memoryview) -> Message | None:
    """Have, Request or Cancel from the exact canonical body (a fixarray of two, a bin8 of
    32 bytes, an index in its smallest msgpack form), at a fraction of the general path's
    cost; None for anything else, which the general path then decodes or refuses, so what
    is accepted and what is refused is the same either way."""
    n = len(view)
    if n < 37 or view[1:4] != _INDEXED_PREFIX:
        return None
    lead = view[36]
    if lead < 0x80:
        index, end = lead, 37
    elif lead == 0xCC and n == 38 and view[37] >= 0x80:
        index, end = view[37], 38
    elif lead == 0xCD and n == 39 and (index := _U16.unpack_from(view, 37)[0]) > 0xFF:
        end = 39
    elif lead == 0xCE and n == 41 and (index := _U32.unpack_from(view, 37)[0]) > 0xFFFF:
        end = 41
    else:
        return None
    if end != n:
        return None
    return _INDEXED[mtype](bytes(view[4:36]), index)


def _decode_fields(mtype: int, value: Any) -> Message:
    expect_list, expect_int = encoding.expect_list, encoding.expect_int
    match mtype:
        case MessageType.HELLO:
            version, key, addrs, agent = expect_list(value, 4, "Hello")
            version = expect_int(version, 0, 0xFFFF, "Hello.version")
            peer = PeerId(encoding.expect_bytes(key, PUBLIC_KEY_LEN, "Hello.peer_id"))
            out: list[tuple[str, int]] = []
            for item in expect_list(addrs, None, "Hello.listen_addrs"):
                host, port = expect_list(item, 2, "Hello address")
                host = encoding.expect_str(host, MAX_HOST, "Hello address host")
                if not host:
                    raise DecodeError("Hello address: empty host")
                out.append((host, expect_int(port, 1, 0xFFFF, "Hello address port")))
            if len(out) > MAX_ADDRS:
                raise DecodeError("Hello: too many listen addresses")
            agent = encoding.expect_str(agent, MAX_AGENT, "Hello.agent")
            return Hello(version, peer, tuple(out), agent)
        case MessageType.GET_MANIFEST:
            (cid,) = expect_list(value, 1, "GetManifest")
            return GetManifest(_cid_in(cid))
        case MessageType.MANIFEST:
            cid, data = expect_list(value, 2, "Manifest")
            if data is not None:
                data = encoding.expect_bytes(data, None, "Manifest.data", MAX_MANIFEST)
            return Manifest(_cid_in(cid), data)
        case MessageType.GET_BITFIELD:
            (cid,) = expect_list(value, 1, "GetBitfield")
            return GetBitfield(_cid_in(cid))
        case MessageType.BITFIELD:
            cid, count, bits = expect_list(value, 3, "Bitfield")
            count = expect_int(count, 0, MAX_CHUNK_COUNT, "Bitfield.chunk_count")
            bits = encoding.expect_bytes(bits, None, "Bitfield.bits")
            _check_bitfield(count, bits, DecodeError)
            return Bitfield(_cid_in(cid), count, bits)
        case MessageType.HAVE | MessageType.REQUEST | MessageType.CANCEL:
            cid, index = expect_list(value, 2, MessageType(mtype).name)
            cid, index = _cid_in(cid), expect_int(index, 0, MAX_INDEX, "index")
            if mtype == MessageType.HAVE:
                return Have(cid, index)
            return Request(cid, index) if mtype == MessageType.REQUEST else Cancel(cid, index)
        case MessageType.REJECT:
            cid, index, reason = expect_list(value, 3, "Reject")
            return Reject(_cid_in(cid), expect_int(index, 0, MAX_INDEX, "Reject.index"),
                          expect_int(reason, 0, 255, "Reject.reason"))
        case MessageType.PING:
            (nonce,) = expect_list(value, 1, "Ping")
            return Ping(expect_int(nonce, 0, _MAX_U64, "Ping.nonce"))
        case MessageType.PONG:
            (nonce,) = expect_list(value, 1, "Pong")
            return Pong(expect_int(nonce, 0, _MAX_U64, "Pong.nonce"))
        case MessageType.GOODBYE:
            (reason,) = expect_list(value, 1, "Goodbye")
            return Goodbye(encoding.expect_str(reason, MAX_REASON, "Goodbye.reason"))
        case MessageType.RESERVE:
            expect_list(value, 0, "Reserve")
            return Reserve()
        case MessageType.RELAY_STATUS:
            code, reason, ttl, addrs, observed, seconds, nbytes = expect_list(value, 7, "RelayStatus")
            items = expect_list(addrs, None, "RelayStatus.relay_addrs")
            if len(items) > MAX_RELAY_ADDRS:
                raise DecodeError("RelayStatus: too many relay addresses")
            return RelayStatus(
                expect_int(code, 0, 255, "RelayStatus.code"),
                encoding.expect_str(reason, MAX_REASON, "RelayStatus.reason"),
                expect_int(ttl, 0, _MAX_U32, "RelayStatus.ttl"),
                tuple(_address_in(item, "RelayStatus address") for item in items),
                None if observed is None else _address_in(observed, "RelayStatus.observed"),
                expect_int(seconds, 0, _MAX_U32, "RelayStatus.limit_seconds"),
                expect_int(nbytes, 0, _MAX_U64, "RelayStatus.limit_bytes"))
        case MessageType.CONNECT:
            (target,) = expect_list(value, 1, "Connect")
            return Connect(PeerId(encoding.expect_bytes(target, PUBLIC_KEY_LEN, "Connect.target")))
        case MessageType.STOP:
            source, token = expect_list(value, 2, "Stop")
            return Stop(PeerId(encoding.expect_bytes(source, PUBLIC_KEY_LEN, "Stop.source")),
                        encoding.expect_bytes(token, TOKEN_LEN, "Stop.token"))
        case MessageType.ACCEPT:
            (token,) = expect_list(value, 1, "Accept")
            return Accept(encoding.expect_bytes(token, TOKEN_LEN, "Accept.token"))
        case MessageType.HOLE_PUNCH_CONNECT:
            round_, addrs, public = expect_list(value, 3, "HolePunchConnect")
            round_ = expect_int(round_, 1, MAX_PUNCH_ROUND, "HolePunchConnect.round")
            punch_addrs: list[tuple[str, int]] = []
            for item in expect_list(addrs, None, "HolePunchConnect.addrs"):
                host, port = expect_list(item, 2, "HolePunchConnect address")
                host = encoding.expect_str(host, MAX_HOST, "HolePunchConnect address host")
                if not _is_canonical_ip(host):
                    raise DecodeError("HolePunchConnect address: not an IP literal in canonical form")
                punch_addrs.append((host, expect_int(port, 1, 0xFFFF, "HolePunchConnect address port")))
            if len(punch_addrs) > MAX_PUNCH_ADDRS:
                raise DecodeError("HolePunchConnect: too many addresses")
            if not isinstance(public, bool):
                raise DecodeError("HolePunchConnect.public: expected a boolean")
            return HolePunchConnect(round_, tuple(punch_addrs), public)
        case MessageType.HOLE_PUNCH_SYNC:
            (round_,) = expect_list(value, 1, "HolePunchSync")
            return HolePunchSync(expect_int(round_, 1, MAX_PUNCH_ROUND, "HolePunchSync.round"))
    raise DecodeError(f"unknown message type {mtype}")


def _address_in(item: Any, what: str) -> tuple[str, int]:
    host, port = encoding.expect_list(item, 2, what)
    host = encoding.expect_str(host, MAX_HOST, f"{what} host")
    if not host:
        raise DecodeError(f"{what}: empty host")
    return host, encoding.expect_int(port, 1, 0xFFFF, f"{what} port")


def _cid_in(value: Any) -> bytes:
    return encoding.expect_bytes(value, CONTENT_ID_LEN, "content id")
