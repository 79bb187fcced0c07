"""One secure session: Noise XX handshake, identity proof, Hello, then encrypted frames.

A :class:`Session` is a pure object (h11 style): feed it received bytes, take
decrypted messages out; give it messages, take ciphertext to send. No sockets,
no clock. The asyncio shell in ``transport.py`` only moves bytes.

Stream format (docs/PROTOCOL.md has the whole conversation):

* every Noise message, handshake or transport, travels as ``len:u16be || message``
  (the Noise spec, section 3, caps a message at 65535 bytes and leaves framing to
  the application);
* the decrypted transport payloads form one byte stream of application frames
  (``messages.py``); a large frame spans many Noise messages. A large Data frame's
  fixed header is sealed in its own record so that the payload's records line up
  with the payload and can be decrypted straight into the frame buffer; small frames
  are gathered into shared records (:data:`GATHER_FRAMES_BELOW`).

Receiving is zero-copy for Data: :meth:`get_buffer`/:meth:`buffer_updated`
follow ``asyncio.BufferedProtocol``, ciphertext lands in the session's own
buffer and payload records are decrypted into the frame buffer that the
returned :class:`Data` views.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence

from .. import encoding
from ..buffers import AlignedPool, BufferPool
from ..errors import BadSignature, DecodeError
from ..identity import PUBLIC_KEY_LEN, SIGNATURE_LEN, Identity, PeerId
from .errors import LocalProtocolError, RemoteProtocolError, WrongPeer
from .messages import (
    DATA_HEADER,
    FRAME_HEADER,
    MAX_FRAME,
    PROTOCOL_VERSION,
    Goodbye,
    Hello,
    Message,
    MessageType,
    decode,
    decode_frame_length,
    encode_frame,
)
from .noise import MAX_MESSAGE, TAGLEN, CipherState, HandshakeXX, KeyPair

PROLOGUE = b"p2p-wire/1"
"""Noise prologue (section 6): both sides must agree on it, or the handshake fails."""
IDENTITY_TAG = b"p2p-wire/1 noise static key + handshake hash:"
"""Domain separation for the Ed25519 signature that binds a peer id to this handshake."""
MAX_HANDSHAKE_MESSAGE = 512
"""Our handshake messages are under 300 bytes; anything larger is refused before use."""
MAX_PLAINTEXT = MAX_MESSAGE - TAGLEN
"""Plaintext bytes per Noise transport message."""
DECODE_AHEAD = 512
"""Messages decoded ahead of the application: past this many queued, the session stops
decrypting the records in its buffer (the shell stops reading the socket) until they are
taken. A peer's flood then costs us the messages we handle, not the thousands a full
receive buffer of tiny frames holds (a 1 MiB buffer holds 24,000 Haves)."""
RECV_BUFFER = 1 << 20
"""Default ciphertext receive buffer: large reads mean few trips through the event loop."""

GATHER_FRAMES_BELOW = 16 * 1024
"""Frames smaller than this (requests, control messages, a folder's small chunks) are gathered
and sealed together when the bytes are taken (:meth:`Session.data_to_send`): one record, one
AES-GCM call, for up to :data:`MAX_PLAINTEXT` bytes of them instead of one each (two for a Data
frame). Receivers accept any split of frames into records (docs/PROTOCOL.md). Larger Data
frames keep their header in a record of its own, so their payload's records line up with the
payload and are decrypted straight into the frame buffer."""
POOLED_SEAL = 64 * 1024
"""Frames that seal into this many bytes or more are sealed into a pooled buffer
(:mod:`p2p.buffers`): chunks, not control messages."""
POOLED_FRAME = 64 * 1024
"""Data frames of at least this many bytes are received into a pooled, page-aligned
buffer with the payload starting a page, so that the verified chunk is written to disk
with ``O_DIRECT`` straight from it."""
SEAL_POOL = BufferPool()
"""Shared by every session of the process: sealed chunks waiting to be sent."""
FRAME_POOL = AlignedPool()
"""Shared by every session of the process: received chunks until they are written."""

_U16 = struct.Struct(">H")
_DATA = int(MessageType.DATA)


class State(enum.Enum):
    """Where a session is in its life."""

    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSED = "closed"


class Session:
    """The sans-IO secure channel of one connection (either side)."""

    def __init__(self, identity: Identity, hello: Hello, *, initiator: bool,
                 expected_peer: PeerId | None = None, cipher: str = "AESGCM",
                 recv_buffer: int = RECV_BUFFER, max_frame: int = MAX_FRAME,
                 first: Sequence[Message] = ()) -> None:
        if recv_buffer < 2 * (MAX_MESSAGE + 2):
            raise LocalProtocolError("receive buffer must hold at least two Noise messages")
        if hello.peer_id != identity.peer_id:
            raise LocalProtocolError("our Hello must carry our own peer id")
        self.identity = identity
        self.initiator = initiator
        self.expected_peer = expected_peer
        self.state = State.HANDSHAKE
        self.max_frame = max_frame
        """Largest frame accepted from the peer. A server receives only small control
        messages, so it sets this low: a frame buffer is allocated when its header arrives."""
        self.remote_peer: PeerId | None = None
        """The peer id the remote proved in the handshake."""
        self.remote_hello: Hello | None = None
        """The remote's Hello, once received (the session is usable from then on)."""
        self.handshake_hash = b""
        self._hello = hello
        self._first = tuple(first) if initiator else ()
        """Messages an initiator sends right after its Hello, in the flight of Noise message 3,
        without waiting for the responder's Hello (docs/PROTOCOL.md, the conversation)."""
        # A fresh static X25519 key per session: the Ed25519 identity, not this key,
        # is what peers remember, so there is nothing to gain by reusing it.
        self._hs: HandshakeXX | None = HandshakeXX(initiator, KeyPair.generate(),
                                                   prologue=PROLOGUE, cipher=cipher)
        self._send_cs: CipherState | None = None
        self._recv_cs: CipherState | None = None
        self._out: list[bytes | bytearray | memoryview] = []
        self._plain = bytearray()
        """Small frames sent and not sealed yet (:data:`GATHER_FRAMES_BELOW`); sealed before
        anything is added to :attr:`_out`, so the order of frames is kept."""
        self._rbuf = bytearray(recv_buffer)
        self._rview = memoryview(self._rbuf)
        self._rstart = 0
        self._rend = 0
        self._events: list[Message] = []
        self._hdr = bytearray()
        self._frame: memoryview | None = None
        self._fview = memoryview(b"")
        self._fpos = 0
        self._fneed = 0
        self.stalled = False
        """Whole records wait in the buffer because :data:`DECODE_AHEAD` messages are
        queued: call :meth:`decode_more` once they are taken (and read no more until then)."""
        self.stop_on: tuple[type, ...] = ()
        """Message types after whose record the session stops decoding: what follows is
        not ours (a relay circuit's spliced bytes, docs/PROTOCOL.md, Relays);
        :meth:`take_unread` hands it over."""
        self.stopped = False
        """A :attr:`stop_on` message arrived: nothing more is decoded."""
        if initiator:
            self._queue_handshake(self._hs.write_message(b""))  # -> e (no payload: nothing is secret yet)

    # -- sending -------------------------------------------------------------------------

    def send(self, msg: Message) -> None:
        """Encrypt ``msg`` for sending; take the bytes with :meth:`data_to_send`."""
        if self.state is not State.OPEN:
            raise LocalProtocolError(f"cannot send in state {self.state.value}")
        head, tail = encode_frame(msg)
        size = len(head) + len(tail)
        if size < GATHER_FRAMES_BELOW:
            if len(self._plain) + size > MAX_PLAINTEXT:
                self._seal_gathered()
            self._plain += head
            if tail:
                self._plain += tail
            return
        self._seal_gathered()
        self._out.append(self._seal(head, tail))

    @property
    def sealed_pending(self) -> bool:
        """Ciphertext waits to be taken (not only small frames gathered for one record): the
        shell takes it now; gathered frames alone it may leave for the end of its loop turn."""
        return bool(self._out)

    def _seal_gathered(self) -> None:
        if self._plain:
            plain, self._plain = self._plain, bytearray()
            self._out.append(self._seal(plain, b""))

    def data_to_send(self) -> bytes | bytearray | memoryview:
        """All ciphertext produced so far and not yet taken (handshake and records)."""
        self._seal_gathered()
        out = self._out
        if not out:
            return b""
        self._out = []
        return out[0] if len(out) == 1 else b"".join(out)

    def close(self, reason: str = "") -> None:
        """Queue a Goodbye (when the session is open) and refuse further sending and receiving."""
        if self.state is State.OPEN:
            self.send(Goodbye(reason))
        self.state = State.CLOSED

    def _queue_handshake(self, message: bytes) -> None:
        self._out.append(_U16.pack(len(message)) + message)

    def _seal(self, head: bytes | bytearray, tail: bytes | bytearray | memoryview) -> bytearray | memoryview:
        """Encrypt one frame into records: ``head`` alone, then ``tail`` in full records."""
        cs = self._send_cs
        assert cs is not None
        pieces = (head, tail) if len(tail) else (head,)
        total = 0
        for piece in pieces:
            n = len(piece)
            total += n + -(-n // MAX_PLAINTEXT) * (2 + TAGLEN)
        out: bytearray | memoryview
        if total >= POOLED_SEAL:
            out = view = SEAL_POOL.take(total)
        else:
            out = bytearray(total)
            view = memoryview(out)
        pos = 0
        for piece in pieces:
            pos = cs.encrypt_records_into(piece, view, pos, MAX_PLAINTEXT)
        return out

    # -- receiving -----------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Feed received bytes (any split); returns the messages they complete.

        Raises :class:`RemoteProtocolError` (or :class:`WrongPeer`) when the peer
        misbehaved; the session is then closed and must be dropped.
        """
        view = memoryview(data)
        events: list[Message] = []
        while len(view):
            buf = self.get_buffer()
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            view = view[n:]
            events += self.buffer_updated(n)
            while self.stalled:  # all at once here: the caller takes every message
                events += self.decode_more()
        return events

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Where the next received bytes should be written (``BufferedProtocol.get_buffer``)."""
        return self._rview[self._rend:]

    def buffer_updated(self, nbytes: int) -> list[Message]:
        """``nbytes`` were written into :meth:`get_buffer`; returns the completed messages
        (at most about :data:`DECODE_AHEAD`; then :attr:`stalled` says more wait)."""
        if self.state is State.CLOSED:
            raise LocalProtocolError("session is closed")
        self._rend += nbytes
        return self.decode_more()

    def decode_more(self) -> list[Message]:
        """Decode records already received (after :attr:`stalled`); returns their messages."""
        if self.state is State.CLOSED:
            raise LocalProtocolError("session is closed")
        if self.stopped:
            return []
        try:
            self._process()
        except RemoteProtocolError:
            self.state = State.CLOSED
            raise
        events, self._events = self._events, []
        return events

    def receive_eof(self) -> None:
        """The peer closed its side. Raises :class:`RemoteProtocolError` if it cut a record or frame short."""
        if self._rend != self._rstart or self._hdr or self._frame is not None:
            self.state = State.CLOSED
            raise RemoteProtocolError("stream truncated in the middle of a record or frame")
        self.state = State.CLOSED

    def take_unread(self) -> bytes:
        """After :attr:`stopped`: the received bytes after the record that stopped the
        session (they belong to whatever runs on the connection next). Closes the session.
        Raises :class:`RemoteProtocolError` if that record ended inside a frame."""
        if not self.stopped:
            raise LocalProtocolError("the session has not stopped")
        if self._hdr or self._frame is not None:
            self.state = State.CLOSED
            raise RemoteProtocolError("a frame continues past the record that ends the session")
        unread = bytes(self._rview[self._rstart:self._rend])
        self._rstart = self._rend = 0
        self.state = State.CLOSED
        return unread

    @property
    def pending_receive(self) -> int:
        """Bytes held for incomplete records and frames (for memory accounting)."""
        return self._rend - self._rstart + (len(self._frame) if self._frame is not None else 0)

    def _process(self) -> None:
        view, pos, end = self._rview, self._rstart, self._rend
        self.stalled = False
        while end - pos >= 2:
            if self.stopped:
                break  # the rest is another protocol's bytes (take_unread)
            if len(self._events) >= DECODE_AHEAD:
                self.stalled = True
                self._rstart = pos
                return  # the rest stays where it is: no room is needed until it is decoded
            size = (view[pos] << 8) | view[pos + 1]
            if end - pos - 2 < size:
                break
            start = pos + 2
            pos = start + size
            self._rstart = pos
            if self._hs is not None:
                self._handshake_record(bytes(view[start:pos]))
            elif self._frame is not None and TAGLEN < size <= self._fneed + TAGLEN:
                # This record and those after it are all payload of the current frame:
                # decrypt the whole run in place, in one call.
                cs = self._recv_cs
                assert cs is not None
                pos, fpos = cs.decrypt_records_into(view, start - 2, end, self._fview,
                                                    self._fpos, self._fneed)
                self._fneed -= fpos - self._fpos
                self._fpos = fpos
                self._rstart = pos
                if not self._fneed:
                    self._finish_frame()
            else:
                self._transport_record(view[start:pos])
        self._rstart = pos
        if self.stopped:
            return  # keep the unread bytes where they are
        if pos == end:
            self._rstart = self._rend = 0
        elif len(self._rbuf) - end < MAX_MESSAGE + 2:
            # Not enough room for a whole record after the partial one: move it to the front.
            keep = end - pos
            self._rbuf[0:keep] = self._rbuf[pos:end]
            self._rstart, self._rend = 0, keep

    def _handshake_record(self, message: bytes) -> None:
        hs = self._hs
        assert hs is not None
        if len(message) > MAX_HANDSHAKE_MESSAGE:
            raise RemoteProtocolError("handshake message too long")
        payload = hs.read_message(message)
        if hs.step == 1:  # responder read "-> e": answer "<- e, ee, s, es" with our proof
            self._queue_handshake(hs.write_message(self._proof))
            return
        # Message 2 (read by the initiator) or 3 (read by the responder) carries a proof.
        assert hs.rs is not None
        peer = self._check_proof(payload, hs.rs, hs.h_before_payload)
        if self.expected_peer is not None and peer != self.expected_peer:
            raise WrongPeer(f"expected peer {self.expected_peer.short()}, got {peer.short()}")
        self.remote_peer = peer
        if hs.step == 2:  # initiator: "-> s, se" with our proof
            self._queue_handshake(hs.write_message(self._proof))
        self.handshake_hash = hs.h
        self._send_cs, self._recv_cs = hs.split()
        self._hs = None
        self.state = State.OPEN
        self.send(self._hello)
        for first in self._first:
            self.send(first)
        self._first = ()

    def _proof(self, h: bytes) -> bytes:
        """Our handshake payload: Ed25519 key and its signature over our static key and ``h``."""
        assert self._hs is not None
        sig = self.identity.sign(IDENTITY_TAG + self._hs.s.public + h)
        return encoding.pack([self.identity.public_key, sig])

    @staticmethod
    def _check_proof(payload: bytes, remote_static: bytes, h: bytes) -> PeerId:
        try:
            key, sig = encoding.expect_list(encoding.unpack(payload, max_bin=64), 2, "proof")
            key = encoding.expect_bytes(key, PUBLIC_KEY_LEN, "proof key")
            sig = encoding.expect_bytes(sig, SIGNATURE_LEN, "proof signature")
            peer = PeerId(key)
            peer.verify(sig, IDENTITY_TAG + remote_static + h)
        except (DecodeError, BadSignature) as exc:
            raise RemoteProtocolError(f"handshake identity proof rejected: {exc}") from None
        return peer

    def _transport_record(self, record: memoryview) -> None:
        """A record that is not all payload of the current frame (those go through
        :meth:`CipherState.decrypt_records_into` in :meth:`_process`): decrypted, then cut
        into frames."""
        cs = self._recv_cs
        assert cs is not None
        if len(record) < TAGLEN:
            raise RemoteProtocolError("record shorter than its tag")
        self._feed_plain(cs.decrypt_with_ad(b"", record))

    def _feed_plain(self, plain: bytes) -> None:
        i, n = 0, len(plain)
        whole = memoryview(plain)
        while i < n:
            if self._frame is None and not self._hdr and n - i >= FRAME_HEADER:
                # A frame that starts here: if it ends in this record too (small control
                # messages always do), decode it where it lies, with no frame buffer.
                length = decode_frame_length(whole[i:i + FRAME_HEADER])
                if length > self.max_frame:
                    raise RemoteProtocolError(f"frame of {length} bytes exceeds this side's limit of {self.max_frame}")
                if n - i - FRAME_HEADER >= length:
                    start = i + FRAME_HEADER
                    i = start + length
                    self._deliver(whole[start:i])
                    continue
            if self._frame is None:
                take = min(FRAME_HEADER - len(self._hdr), n - i)
                self._hdr += plain[i:i + take]
                i += take
                if len(self._hdr) == FRAME_HEADER:
                    length = decode_frame_length(self._hdr)
                    if length > self.max_frame:
                        raise RemoteProtocolError(f"frame of {length} bytes exceeds this side's limit of {self.max_frame}")
                    self._hdr.clear()
                    if length >= POOLED_FRAME and i < n and plain[i] == _DATA:
                        self._fview = FRAME_POOL.take(length, DATA_HEADER)
                    else:
                        self._fview = memoryview(bytearray(length))
                    self._frame = self._fview
                    self._fpos, self._fneed = 0, length
            else:
                take = min(self._fneed, n - i)
                self._fview[self._fpos:self._fpos + take] = plain[i:i + take]
                i += take
                self._fpos += take
                self._fneed -= take
                if not self._fneed:
                    self._finish_frame()

    def _finish_frame(self) -> None:
        view = self._fview
        self._frame = None
        self._fview = memoryview(b"")
        self._deliver(view)

    def _deliver(self, view: memoryview) -> None:
        """Decode one whole frame and queue its message (a Data payload stays a view of it)."""
        msg = decode(view)
        if self.remote_hello is None:
            if not isinstance(msg, Hello):
                raise RemoteProtocolError(f"expected Hello first, got {type(msg).__name__}")
            if msg.peer_id != self.remote_peer:
                raise RemoteProtocolError("Hello names a different peer id than the handshake proved")
            if msg.version != PROTOCOL_VERSION:
                self.close(f"unsupported protocol version {msg.version}")
                raise RemoteProtocolError(f"peer speaks protocol version {msg.version}, not {PROTOCOL_VERSION}")
            self.remote_hello = msg
            return
        if isinstance(msg, Hello):
            raise RemoteProtocolError("second Hello")
        self._events.append(msg)
        if self.stop_on and isinstance(msg, self.stop_on):
            self.stopped = True
