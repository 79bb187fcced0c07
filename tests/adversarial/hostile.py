"""Attackers for the adversarial suite, written from docs/PROTOCOL.md only.

Nothing here imports ``p2p``: every byte an attacker sends is made by this module from
what the document specifies, so a frame the code under test would never produce (or a
mistake in the code shared by both ends) is still something the attacker can send. What
is built here, with the section of docs/PROTOCOL.md it follows:

* canonical msgpack ("Frames", "Content formats"): the ``msgpack`` package's smallest
  forms with ``use_bin_type``; :func:`pack_uint_wide` writes a deliberately widened integer;
* ``Noise_XX_25519_AESGCM_SHA256`` with prologue ``b"p2p-wire/1"`` (Noise spec rev. 34):
  :class:`CipherState`, :class:`SymmetricState`, :class:`HandshakeXX` on ``cryptography``'s
  X25519, AES-GCM and HMAC-SHA256;
* the identity proof, the ``len:u16`` record framing, frames ``length:u32 || type:u8 ||
  body``, the Hello exchange ("The conversation", "Frames"): :func:`dial`, :func:`accept`,
  :class:`Session`;
* chunking, content ids, manifests, tickets and text forms ("Content formats");
* the DHT datagram, the RPCs, node ids, discovery keys and records ("DHT"):
  :class:`DHTSocket`, :func:`provider_record`, :func:`identify_answer`.

Everything is asyncio and bounded by its caller's ``asyncio.timeout()``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import os
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

# -- canonical msgpack ----------------------------------------------------------------------


def pack(value: Any) -> bytes:
    """Canonical msgpack: the smallest form of every value, bytes as bin, text as str."""
    return bytes(msgpack.packb(value, use_bin_type=True))


def unpack(data: bytes) -> Any:
    """Decode one msgpack value (lists as lists, bin as bytes, str as str)."""
    return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=False)


def pack_uint_wide(n: int) -> bytes:
    """``n`` as a uint8 (``cc nn``): a non-canonical form for any ``n`` below 128."""
    return bytes([0xCC, n])


# -- identities ----------------------------------------------------------------------------


def _raw_public(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


class Identity:
    """An Ed25519 key: the peer id is its 32-byte public key."""

    def __init__(self, key: Ed25519PrivateKey | None = None) -> None:
        self.key = key or Ed25519PrivateKey.generate()
        self.public_key = _raw_public(self.key.public_key())

    def sign(self, message: bytes) -> bytes:
        return self.key.sign(message)

    @property
    def node_id(self) -> bytes:
        return node_id_for(self.public_key)


def verify(public_key: bytes, signature: bytes, message: bytes) -> None:
    """Raise ``cryptography``'s InvalidSignature unless ``signature`` verifies."""
    Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)


# -- text forms (Content formats: Content ids, Ticket) ----------------------------------------


def b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").lower()


def unb32(text: str) -> bytes:
    text = text.upper()
    return base64.b32decode(text + "=" * (-len(text) % 8))


def content_id_text(cid: bytes) -> str:
    return "p2pc1" + b32(cid)


def parse_content_id(text: str) -> bytes:
    assert text.startswith("p2pc1"), text
    return unb32(text[5:])


def peer_id_text(public_key: bytes) -> str:
    return "p2pk" + b32(public_key)


def parse_peer_id(text: str) -> bytes:
    assert text.startswith("p2pk"), text
    return unb32(text[4:])


def ticket_text(cid: bytes, publisher: bytes, addrs: Sequence[tuple[str, int]]) -> str:
    """``p2pt1`` + base32 of ``[content_id, publisher_key, [[packed ip, port], ...]]``."""
    packed = [[ipaddress.ip_address(h).packed, p] for h, p in addrs]
    return "p2pt1" + b32(pack([cid, publisher, packed]))


def parse_ticket(text: str) -> tuple[bytes, bytes, list[tuple[str, int]]]:
    assert text.startswith("p2pt1"), text
    cid, publisher, addrs = unpack(unb32(text[5:]))
    return cid, publisher, [(str(ipaddress.ip_address(ip)), port) for ip, port in addrs]


# -- content: chunking, ids, manifests -----------------------------------------------------------

KiB, MiB = 1 << 10, 1 << 20
MANIFEST_TAG = b"p2p manifest v1\x00"


def chunk_size_for(size: int) -> int:
    """Chunking rule 1-3: about 1,024 chunks, clamped to [64 KiB, 1 MiB], doubled past 65,536."""
    target = max(1, -(-size // 1024))
    chunk = 1 << (target - 1).bit_length()
    chunk = min(max(chunk, 64 * KiB), MiB)
    while -(-size // chunk) > 65536 and chunk < 16 * MiB:
        chunk *= 2
    return chunk


@dataclass
class FileContent:
    """One file as the document chunks, hashes and identifies it."""

    path: Path
    size: int
    chunk_size: int
    hashes: list[bytes]

    @classmethod
    def of(cls, path: Path) -> FileContent:
        size = path.stat().st_size
        chunk = chunk_size_for(size)
        hashes = []
        with path.open("rb") as f:
            while piece := f.read(chunk):
                hashes.append(blake3.blake3(piece).digest())
        return cls(path, size, chunk, hashes)

    @property
    def count(self) -> int:
        return len(self.hashes)

    @property
    def content_id(self) -> bytes:
        """BLAKE3 of ``pack([1, "file", size, chunk_size, hashes])``."""
        return blake3.blake3(pack([1, "file", self.size, self.chunk_size,
                                   b"".join(self.hashes)])).digest()

    def chunk(self, index: int) -> bytes:
        with self.path.open("rb") as f:
            f.seek(index * self.chunk_size)
            return f.read(self.chunk_size)

    def manifest(self, publisher: Identity, name: str | None = None) -> bytes:
        """A manifest of this one file, signed by ``publisher``."""
        name = name or self.path.name
        entries = [[name, self.size, self.chunk_size, b"".join(self.hashes)]]
        body = [1, "file", name, entries, publisher.public_key]
        return pack([*body, publisher.sign(MANIFEST_TAG + pack(body))])


def read_manifest(data: bytes) -> dict[str, Any]:
    """The fields of a manifest, its signature checked (raises if it does not verify)."""
    version, kind, name, entries, publisher, sig = unpack(data)
    verify(publisher, sig, MANIFEST_TAG + pack([version, kind, name, entries, publisher]))
    return {"kind": kind, "name": name, "entries": entries, "publisher": publisher}


# -- Noise_XX_25519_AESGCM_SHA256 (Noise spec rev. 34) --------------------------------------------

PROTOCOL_NAME = b"Noise_XX_25519_AESGCM_SHA256"
PROLOGUE = b"p2p-wire/1"
IDENTITY_TAG = b"p2p-wire/1 noise static key + handshake hash:"
HASHLEN = 32
DHLEN = 32
MAX_MESSAGE = 65535
MAX_PLAINTEXT = MAX_MESSAGE - 16


def _hash(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def hkdf(chaining_key: bytes, ikm: bytes, outputs: int) -> tuple[bytes, ...]:
    """Noise section 4.3 HKDF with HMAC-SHA256."""
    temp = _hmac(chaining_key, ikm)
    out1 = _hmac(temp, b"\x01")
    out2 = _hmac(temp, out1 + b"\x02")
    if outputs == 2:
        return out1, out2
    return out1, out2, _hmac(temp, out2 + b"\x03")


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    return private.exchange(X25519PublicKey.from_public_bytes(public))


class CipherState:
    """Noise section 5.1, AES-256-GCM with the nonce ``0^32 || n:u64be`` (section 12.4)."""

    def __init__(self, key: bytes | None = None) -> None:
        self.k = key
        self.n = 0
        self._aead = AESGCM(key) if key is not None else None

    def _nonce(self) -> bytes:
        assert self.n < 2**64 - 1, "nonce exhausted"
        return b"\0\0\0\0" + self.n.to_bytes(8, "big")

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self._aead is None:
            return plaintext
        out = self._aead.encrypt(self._nonce(), plaintext, ad)
        self.n += 1
        return out

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self._aead is None:
            return ciphertext
        out = self._aead.decrypt(self._nonce(), ciphertext, ad)
        self.n += 1
        return out


class SymmetricState:
    """Noise section 5.2."""

    def __init__(self, protocol_name: bytes) -> None:
        self.h = protocol_name.ljust(HASHLEN, b"\0") if len(protocol_name) <= HASHLEN \
            else _hash(protocol_name)
        self.ck = self.h
        self.cs = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = hkdf(self.ck, ikm, 2)
        self.cs = CipherState(temp_k[:32])

    def mix_hash(self, data: bytes) -> None:
        self.h = _hash(self.h + data)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cs.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cs.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        k1, k2 = hkdf(self.ck, b"", 2)
        return CipherState(k1[:32]), CipherState(k2[:32])


Payload = bytes | Callable[[bytes], bytes]
"""A handshake payload, or a function of the handshake hash at the moment it is encrypted."""


class HandshakeXX:
    """Noise section 5.3 for the XX pattern (section 7.5): ``-> e``, ``<- e, ee, s, es``,
    ``-> s, se``. A payload may be a function of ``h``: the identity proof signs it."""

    def __init__(self, initiator: bool, prologue: bytes = PROLOGUE) -> None:
        self.initiator = initiator
        self.ss = SymmetricState(PROTOCOL_NAME)
        self.ss.mix_hash(prologue)
        self.s = X25519PrivateKey.generate()
        self.s_pub = _raw_public(self.s.public_key())
        self.e: X25519PrivateKey | None = None
        self.re: bytes | None = None
        self.rs: bytes | None = None
        self.step = 0

    def _payload(self, payload: Payload) -> bytes:
        data = payload(self.ss.h) if callable(payload) else payload
        return self.ss.encrypt_and_hash(data)

    def _new_e(self) -> bytes:
        self.e = X25519PrivateKey.generate()
        pub = _raw_public(self.e.public_key())
        self.ss.mix_hash(pub)
        return pub

    def write_message(self, payload: Payload = b"") -> bytes:
        step, self.step = self.step, self.step + 1
        if step == 0 and self.initiator:                        # -> e
            return self._new_e() + self._payload(payload)
        if step == 1 and not self.initiator:                    # <- e, ee, s, es
            assert self.re is not None
            out = self._new_e()
            assert self.e is not None
            self.ss.mix_key(_dh(self.e, self.re))
            out += self.ss.encrypt_and_hash(self.s_pub)
            self.ss.mix_key(_dh(self.s, self.re))
            return out + self._payload(payload)
        if step == 2 and self.initiator:                        # -> s, se
            assert self.re is not None
            out = self.ss.encrypt_and_hash(self.s_pub)
            self.ss.mix_key(_dh(self.s, self.re))
            return out + self._payload(payload)
        raise AssertionError(f"not our turn to write (step {step})")

    def read_message(self, message: bytes, check: Callable[[bytes, bytes, bytes], None]
                     | None = None) -> bytes:
        """Process one handshake message; ``check(rs, h, payload)`` sees the payload with
        the hash it was encrypted under (the identity proof is checked against both)."""
        step, self.step = self.step, self.step + 1
        if step == 0 and not self.initiator:                    # -> e
            self.re = message[:DHLEN]
            self.ss.mix_hash(self.re)
            h = self.ss.h
            payload = self.ss.decrypt_and_hash(message[DHLEN:])
        elif step == 1 and self.initiator:                      # <- e, ee, s, es
            assert self.e is not None
            self.re = message[:DHLEN]
            self.ss.mix_hash(self.re)
            self.ss.mix_key(_dh(self.e, self.re))
            self.rs = self.ss.decrypt_and_hash(message[DHLEN:DHLEN + DHLEN + 16])
            self.ss.mix_key(_dh(self.e, self.rs))
            h = self.ss.h
            payload = self.ss.decrypt_and_hash(message[DHLEN + DHLEN + 16:])
        elif step == 2 and not self.initiator:                  # -> s, se
            assert self.e is not None
            self.rs = self.ss.decrypt_and_hash(message[:DHLEN + 16])
            self.ss.mix_key(_dh(self.e, self.rs))
            h = self.ss.h
            payload = self.ss.decrypt_and_hash(message[DHLEN + 16:])
        else:
            raise AssertionError(f"not our turn to read (step {step})")
        if check is not None and self.rs is not None:
            check(self.rs, h, payload)
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        """(send, receive) cipher states for this side."""
        c1, c2 = self.ss.split()
        return (c1, c2) if self.initiator else (c2, c1)


def identity_proof(identity: Identity, static_public: bytes) -> Callable[[bytes], bytes]:
    """The payload of handshake messages 2 and 3: ``[ed25519 key, sig]`` over
    ``IDENTITY_TAG || static_x25519_public || h``."""
    return lambda h: pack([identity.public_key,
                           identity.sign(IDENTITY_TAG + static_public + h)])


def check_identity_proof(rs: bytes, h: bytes, payload: bytes) -> bytes:
    """The proven Ed25519 key of a peer (raises if the proof does not verify)."""
    key, sig = unpack(payload)
    verify(key, sig, IDENTITY_TAG + rs + h)
    return bytes(key)


# -- frames and messages ------------------------------------------------------------------------

HELLO, GET_MANIFEST, MANIFEST, GET_BITFIELD, BITFIELD, HAVE, REQUEST, DATA, REJECT, CANCEL, \
    PING, PONG, GOODBYE = range(1, 14)
NOT_HELD, CHANGED, TOO_MANY_IN_FLIGHT, BAD_INDEX, CANCELLED, INTERNAL = range(1, 7)
PROTOCOL_VERSION = 1


def frame(mtype: int, body: bytes) -> bytes:
    """``length:u32 || type:u8 || body``, length = 1 + len(body)."""
    return struct.pack(">IB", 1 + len(body), mtype) + body


def hello(public_key: bytes, addrs: Sequence[tuple[str, int]] = (), agent: str = "hostile/1",
          version: int = PROTOCOL_VERSION) -> bytes:
    return frame(HELLO, pack([version, public_key, [[h, p] for h, p in addrs], agent]))


def get_manifest(cid: bytes) -> bytes:
    return frame(GET_MANIFEST, pack([cid]))


def manifest(cid: bytes, data: bytes | None) -> bytes:
    return frame(MANIFEST, pack([cid, data]))


def get_bitfield(cid: bytes) -> bytes:
    return frame(GET_BITFIELD, pack([cid]))


def bitfield(cid: bytes, count: int, indexes: Sequence[int] | None = None) -> bytes:
    """A Bitfield of ``count`` chunks with ``indexes`` set (all when None), MSB first."""
    bits = bytearray((count + 7) // 8)
    for i in range(count) if indexes is None else indexes:
        bits[i // 8] |= 0x80 >> (i % 8)
    return frame(BITFIELD, pack([cid, count, bytes(bits)]))


def have(cid: bytes, index: int) -> bytes:
    return frame(HAVE, pack([cid, index]))


def request(cid: bytes, index: int) -> bytes:
    return frame(REQUEST, pack([cid, index]))


def data(cid: bytes, index: int, payload: bytes) -> bytes:
    return frame(DATA, cid + struct.pack(">I", index) + payload)


def reject(cid: bytes, index: int, reason: int) -> bytes:
    return frame(REJECT, pack([cid, index, reason]))


def cancel(cid: bytes, index: int) -> bytes:
    return frame(CANCEL, pack([cid, index]))


def ping(nonce: int) -> bytes:
    return frame(PING, pack([nonce]))


def pong(nonce: int) -> bytes:
    return frame(PONG, pack([nonce]))


def goodbye(reason: str) -> bytes:
    return frame(GOODBYE, pack([reason]))


@dataclass
class Message:
    """One received frame: its type and fields (Data: content id, index, payload)."""

    type: int
    fields: list[Any]


def decode_body(mtype: int, body: bytes) -> Message:
    if mtype == DATA:
        return Message(DATA, [body[:32], struct.unpack(">I", body[32:36])[0], body[36:]])
    return Message(mtype, list(unpack(body)))


# -- a session over TCP ---------------------------------------------------------------------------


class Closed(Exception):
    """The far end closed the connection (EOF or reset)."""


class Session:
    """An established, authenticated connection: Hello exchanged, frames in and out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 send: CipherState, receive: CipherState, remote_key: bytes) -> None:
        self.reader = reader
        self.writer = writer
        self._send = send
        self._receive = receive
        self.remote_key = remote_key
        self.remote_hello: list[Any] | None = None
        self._plain = bytearray()
        self.sent_frames = 0

    def seal(self, plaintext: bytes) -> bytes:
        """``plaintext`` as transport records (``len:u16 || AES-GCM``), at most 65519 each."""
        out = bytearray()
        for pos in range(0, max(len(plaintext), 1), MAX_PLAINTEXT):
            record = self._send.encrypt_with_ad(b"", plaintext[pos:pos + MAX_PLAINTEXT])
            out += struct.pack(">H", len(record)) + record
        return bytes(out)

    def write(self, *frames: bytes) -> None:
        """Queue frames (one byte stream, sealed into as few records as fit)."""
        self.sent_frames += len(frames)
        self.writer.write(self.seal(b"".join(frames)))

    async def send(self, *frames: bytes) -> None:
        self.write(*frames)
        await self.writer.drain()

    async def _record(self) -> bytes:
        try:
            head = await self.reader.readexactly(2)
            body = await self.reader.readexactly(struct.unpack(">H", head)[0])
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise Closed(str(exc)) from None
        return self._receive.decrypt_with_ad(b"", body)

    async def receive(self) -> Message:
        """The next frame (raises :class:`Closed` at EOF)."""
        while True:
            if len(self._plain) >= 5:
                length, mtype = struct.unpack_from(">IB", self._plain)
                if len(self._plain) >= 4 + length:
                    body = bytes(self._plain[5:4 + length])
                    del self._plain[:4 + length]
                    return decode_body(mtype, body)
            self._plain += await self._record()

    async def until(self, mtype: int) -> Message:
        """The next frame of ``mtype``, skipping others."""
        while (message := await self.receive()).type != mtype:
            pass
        return message

    async def closed(self) -> None:
        """Return once the far end closed; frames received meanwhile are dropped."""
        with contextlib.suppress(Closed):
            while True:
                await self.receive()

    def abort(self) -> None:
        self.writer.transport.abort()

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


def _u16_message(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


async def _read_u16_message(reader: asyncio.StreamReader) -> bytes:
    try:
        head = await reader.readexactly(2)
        return await reader.readexactly(struct.unpack(">H", head)[0])
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise Closed(str(exc)) from None


async def open_tcp(host: str, port: int, source: str | None = None
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection from ``source`` (any 127/8 address stands in for another host)."""
    return await asyncio.open_connection(
        host, port, local_addr=(source, 0) if source else None, limit=1 << 20)


async def initiate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   identity: Identity, listen: Sequence[tuple[str, int]] = (),
                   hello_frame: bytes | None = None) -> Session:
    """The dialler's side: Noise XX, identity proofs, then the Hello exchange."""
    hs = HandshakeXX(initiator=True)
    writer.write(_u16_message(hs.write_message(b"")))                      # -> e
    proven: list[bytes] = []
    hs.read_message(await _read_u16_message(reader),                       # <- e, ee, s, es
                    lambda rs, h, p: proven.append(check_identity_proof(rs, h, p)))
    writer.write(_u16_message(hs.write_message(identity_proof(identity, hs.s_pub))))  # -> s, se
    send, receive = hs.split()
    session = Session(reader, writer, send, receive, proven[0])
    await session.send(hello_frame or hello(identity.public_key, listen))
    first = await session.receive()
    assert first.type == HELLO, f"first frame is type {first.type}, not Hello"
    session.remote_hello = first.fields
    return session


async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  identity: Identity, listen: Sequence[tuple[str, int]] = ()) -> Session:
    """The listener's side of :func:`initiate`."""
    hs = HandshakeXX(initiator=False)
    hs.read_message(await _read_u16_message(reader))                       # -> e
    writer.write(_u16_message(hs.write_message(identity_proof(identity, hs.s_pub))))
    proven: list[bytes] = []
    hs.read_message(await _read_u16_message(reader),                       # -> s, se
                    lambda rs, h, p: proven.append(check_identity_proof(rs, h, p)))
    send, receive = hs.split()
    session = Session(reader, writer, send, receive, proven[0])
    await session.send(hello(identity.public_key, listen))
    first = await session.receive()
    assert first.type == HELLO, f"first frame is type {first.type}, not Hello"
    session.remote_hello = first.fields
    return session


async def dial(host: str, port: int, identity: Identity | None = None, *,
               source: str | None = None, listen: Sequence[tuple[str, int]] = (),
               hello_frame: bytes | None = None) -> Session:
    """Connect, handshake and exchange Hellos as a fresh (or the given) identity."""
    reader, writer = await open_tcp(host, port, source)
    try:
        return await initiate(reader, writer, identity or Identity(), listen, hello_frame)
    except BaseException:
        writer.transport.abort()
        raise


def first_handshake_message() -> bytes:
    """``-> e`` of a handshake nobody finishes (an ephemeral key and an empty payload)."""
    hs = HandshakeXX(initiator=True)
    return _u16_message(hs.write_message(b""))


# -- a listener for attacker servers -----------------------------------------------------------------

SessionHandler = Callable[[Session], Any]


class Listener:
    """A TCP listener that completes the handshake as ``identity`` and hands each session to
    ``handler``; it counts the connections that arrived (``accepted``)."""

    def __init__(self, identity: Identity | None, handler: SessionHandler | None) -> None:
        self.identity = identity
        self.handler = handler
        self.accepted = 0
        self.sessions: list[Session] = []
        self.arrived = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.errors: list[Exception] = []

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._accept, host, port, limit=1 << 20)
        return host, self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.arrived.set()
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if self.identity is None or self.handler is None:
                with contextlib.suppress(ConnectionError):
                    await reader.read()  # only counting: hold the connection until it ends
                return
            session = await respond(reader, writer, self.identity)
            self.sessions.append(session)
            await self.handler(session)
        except (Closed, ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # aclose(): this task is the top of the connection; it ends here
        except Exception as exc:  # the per-connection edge: aclose() raises it for the test
            self.errors.append(exc)
        finally:
            self._tasks.discard(task)
            writer.transport.abort()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        if self.errors:  # an attacker that broke is a failed test, not a quiet one
            raise ExceptionGroup("attacker connection handlers failed", self.errors)


# -- the DHT --------------------------------------------------------------------------------------

DHT_REQUEST, DHT_RESPONSE = 0x10, 0x11
NODE_ID_CONTEXT = "p2p 2026-11 dht node id v1"
DISCOVERY_CONTEXT = "p2p 2026-11 dht discovery key v1"
IDENTIFY_TAG = b"p2p-dht-identify-v1\x00"
PROVIDER_TAG = b"p2p-dht-provider-v1\x00"
PROVIDER_TTL = 3 * 3600
CLOCK_SKEW = 600
PUT_OK, PUT_INVALID, PUT_STALE, PUT_FULL = range(4)


def node_id_for(public_key: bytes) -> bytes:
    return blake3.blake3(public_key, derive_key_context=NODE_ID_CONTEXT).digest(20)


def discovery_key(cid: bytes) -> bytes:
    return blake3.blake3(cid, derive_key_context=DISCOVERY_CONTEXT).digest(20)


def provider_record(identity: Identity, key: bytes, addrs: Sequence[tuple[str, int]],
                    expires: int) -> bytes:
    """``pack([1, author, [[ip, port], ...], expires, sig])``; the signature covers
    ``PROVIDER_TAG + key + pack([author, [[ip, port], ...], expires])``."""
    body = [identity.public_key, [[h, p] for h, p in addrs], expires]
    return pack([1, *body, identity.sign(PROVIDER_TAG + key + pack(body))])


def latest_provider_expiry(now: float | None = None) -> int:
    """The latest expiry a node accepts (``now + TTL + 600 s``), less a minute of slack."""
    return int(now if now is not None else time.time()) + PROVIDER_TTL + CLOCK_SKEW - 60


def read_provider(raw: bytes, key: bytes) -> tuple[bytes, list[tuple[str, int]]]:
    """(author, addresses) of a provider record; raises unless its signature verifies."""
    kind, author, addrs, expires, sig = unpack(raw)
    assert kind == 1
    verify(author, sig, PROVIDER_TAG + key + pack([author, addrs, expires]))
    return author, [(h, p) for h, p in addrs]


def identify_answer(identity: Identity, nonce: bytes, requester_id: bytes,
                    observed: tuple[str, int]) -> list[Any]:
    """``[pubkey, sig, observed_ip, observed_port]``, signed as the document says (any
    observed address: it is the responder's word)."""
    message = IDENTIFY_TAG + nonce + identity.node_id + requester_id + pack(list(observed))
    return [identity.public_key, identity.sign(message), observed[0], observed[1]]


@dataclass
class Traffic:
    """Bytes and datagrams exchanged with one address."""

    sent: int = 0
    received: int = 0
    datagrams_in: int = 0
    requests_in: list[str] = field(default_factory=list)


class DHTSocket(asyncio.DatagramProtocol):
    """A UDP socket speaking the DHT datagram format from one source address.

    :meth:`request` sends an RPC and awaits its answer; incoming requests go to
    ``answer`` (name, args, source) and are answered with its result, or not at all
    when it returns None (an unproven source that never answers ``identify``). Every
    byte in and out is counted per remote address in :attr:`traffic`.
    """

    def __init__(self, identity: Identity | None = None,
                 answer: Callable[[str, list[Any], tuple[str, int]], Any] | None = None) -> None:
        self.identity = identity or Identity()
        self.answer = answer
        self.transport: asyncio.DatagramTransport | None = None
        self.traffic: dict[tuple[str, int], Traffic] = {}
        self.replies: list[tuple[str, int, int]] = []
        """(rpc name, request bytes, reply bytes) of every answered request."""
        self._pending: dict[bytes, tuple[asyncio.Future[Any], tuple[str, int], str, int]] = {}
        self.requests: list[tuple[str, list[Any], tuple[str, int]]] = []
        """Every request received: (name, args, source)."""
        self._request_arrived = asyncio.Event()

    @classmethod
    async def open(cls, source: str = "127.0.0.1", **kwargs: Any) -> DHTSocket:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_datagram_endpoint(lambda: cls(**kwargs),
                                                       local_addr=(source, 0))
        return proto

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def _traffic(self, addr: tuple[str, int]) -> Traffic:
        return self.traffic.setdefault(addr, Traffic())

    def sendto(self, datagram: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self._traffic(addr).sent += len(datagram)
        self.transport.sendto(datagram, addr)

    def datagram_received(self, datagram: bytes, addr: tuple[str, int]) -> None:
        addr = (addr[0], addr[1])
        t = self._traffic(addr)
        t.received += len(datagram)
        t.datagrams_in += 1
        if len(datagram) < 22:
            return
        kind, msg_id, payload = datagram[0], datagram[1:21], datagram[21:]
        if kind == DHT_RESPONSE:
            pending = self._pending.pop(msg_id, None)
            if pending is not None and pending[1] == addr and not pending[0].done():
                self.replies.append((pending[2], pending[3], len(datagram)))
                pending[0].set_result(unpack(payload))
        elif kind == DHT_REQUEST:
            name, args = unpack(payload)
            t.requests_in.append(name)
            self.requests.append((name, args, addr))
            self._request_arrived.set()
            if self.answer is not None:
                result = self.answer(name, args, addr)
                if result is not None:
                    self.sendto(bytes([DHT_RESPONSE]) + msg_id + pack(result), addr)

    def send_request(self, addr: tuple[str, int], name: str, *args: Any,
                     payload: bytes | None = None) -> asyncio.Future[Any]:
        """Send one request (``payload`` replaces the canonical one); a future for its answer."""
        msg_id = os.urandom(20)
        body = payload if payload is not None else pack([name, [self.identity.node_id, *args]])
        datagram = bytes([DHT_REQUEST]) + msg_id + body
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = (future, addr, name, len(datagram))
        self.sendto(datagram, addr)
        return future

    async def request(self, addr: tuple[str, int], name: str, *args: Any,
                      timeout: float = 2.0, payload: bytes | None = None) -> Any:
        """An RPC's answer; raises TimeoutError when none comes in ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            return await self.send_request(addr, name, *args, payload=payload)

    async def wait_request(self, name: str, source: tuple[str, int] | None = None,
                           ) -> list[Any]:
        """The args of the first request ``name`` received (from ``source``), once it came."""
        while True:
            for got, args, addr in self.requests:
                if got == name and source in (None, addr):
                    return args
            self._request_arrived.clear()
            await self._request_arrived.wait()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def fake_node_answers(identity: Identity, observed: Callable[[tuple[str, int]], tuple[str, int]]
                      ) -> Callable[[str, list[Any], tuple[str, int]], Any]:
    """Answers for a fake DHT node: ``identify`` names ``observed(source)`` as the address it
    saw, ``ping`` gives its id, ``find_node`` and ``get`` know nobody, ``put`` is refused."""

    def answer(name: str, args: list[Any], source: tuple[str, int]) -> Any:
        match name:
            case "identify":
                return identify_answer(identity, args[1], args[0], observed(source))
            case "ping":
                return identity.node_id
            case "find_node":
                return []
            case "get":
                return [[], []]
            case "put":
                return PUT_FULL
        return None

    return answer


# -- small helpers -----------------------------------------------------------------------------------


def loopback_source(network: int, host: int = 1) -> str:
    """An address of 127/8 in a /24 of its own: ``127.N.0.host`` for N in 1..254."""
    assert 1 <= network <= 254
    return f"127.{network}.0.{host}"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (for listeners a test names in a Hello)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# -- attackers ---------------------------------------------------------------------------------------

FLOOD_NONCE = 1 << 40
"""Ping nonces of a flood start here (apart from any other Ping on the connection)."""


class Flood:
    """Sends ``frames(i)`` in batches as fast as the far end takes them, a Ping after each
    batch: a Pong proves the far end processed every frame before that Ping (it answers in
    order), so :attr:`acked` counts the frames it handled, not the ones still in buffers.

    Runs until the far end closes the connection (:attr:`dropped`) or ``limit`` frames are
    acknowledged (then it stops flooding and only answers, via ``on_message``).
    """

    def __init__(self, session: Session, frames: Callable[[int], bytes], *, batch: int = 200,
                 window: int = 4, limit: int = 10**9,
                 on_message: Callable[[Session, Message], None] | None = None) -> None:
        self.session = session
        self.frames = frames
        self.batch = batch
        self.limit = limit
        self.on_message = on_message
        self.sent = 0
        self.acked = 0
        self.dropped = asyncio.Event()
        self.stopped_at_limit = False
        self._window = asyncio.Semaphore(window)
        self._ping_at: dict[int, int] = {}

    async def _read(self) -> None:
        try:
            while True:
                message = await self.session.receive()
                if message.type == PONG and message.fields[0] in self._ping_at:
                    self.acked = max(self.acked, self._ping_at.pop(message.fields[0]))
                    self._window.release()
                elif message.type == PING:
                    self.session.write(pong(message.fields[0]))
                elif self.on_message is not None:
                    self.on_message(self.session, message)
        except (Closed, ConnectionError):
            pass
        finally:
            self.dropped.set()

    async def _write(self) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            while self.acked < self.limit and not self.dropped.is_set():
                await self._window.acquire()
                if self.dropped.is_set():
                    return
                out = [self.frames(self.sent + i) for i in range(self.batch)]
                self.sent += self.batch + 1
                nonce = FLOOD_NONCE + self.sent
                self._ping_at[nonce] = self.sent
                await self.session.send(*out, ping(nonce))
            self.stopped_at_limit = not self.dropped.is_set()

    async def run(self) -> None:
        """Flood until dropped or past ``limit``; then keep answering until dropped."""
        reader = asyncio.create_task(self._read())
        try:
            await self._write()
            await reader
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader


class Provider:
    """Serves one file's content as a provider whose manifest it signed itself.

    ``mode``: ``"honest"`` serves the real chunks, ``"bad"`` serves garbage of the right
    size, ``"silent"`` never answers a Request. ``held`` chunks are claimed (all when None).
    Requests seen per session are counted in :attr:`requests`.
    """

    def __init__(self, content: FileContent, identity: Identity, mode: str = "honest",
                 held: Sequence[int] | None = None) -> None:
        self.content = content
        self.identity = identity
        self.mode = mode
        self.held = held
        self.manifest = content.manifest(identity)
        self.requests: list[int] = []
        self.asked_manifest = asyncio.Event()

    def answer(self, session: Session, message: Message) -> None:
        cid = self.content.content_id
        match message.type:
            case 2:  # GetManifest
                self.asked_manifest.set()
                session.write(manifest(message.fields[0],
                                       self.manifest if message.fields[0] == cid else None))
            case 4:  # GetBitfield
                if message.fields[0] == cid:
                    session.write(bitfield(cid, self.content.count, self.held))
                else:
                    session.write(bitfield(message.fields[0], 0, []))
            case 7:  # Request
                index = message.fields[1]
                self.requests.append(index)
                if self.mode == "silent":
                    return
                if self.held is not None and index not in self.held:
                    session.write(reject(cid, index, NOT_HELD))
                elif self.mode == "bad":
                    session.write(data(cid, index, os.urandom(len(self.content.chunk(index)))))
                else:
                    session.write(data(cid, index, self.content.chunk(index)))
            case 11:  # Ping
                session.write(pong(message.fields[0]))

    async def __call__(self, session: Session) -> None:
        """Listener handler: answer until the far end closes."""
        while True:
            self.answer(session, await session.receive())
            await session.writer.drain()


class FloodingProvider(Provider):
    """A provider (it holds chunk 0 and serves it) that floods every downloader dialling it
    with messages that change nothing: Have for a chunk it already announced and for
    chunks past the last, Reject for chunks nobody asked it for, and its Bitfield again.

    :attr:`floods` holds one :class:`Flood` per session; :attr:`requests_after_drop`
    counts requests on sessions opened after the first flood was dropped (a banned
    flooder gets none).
    """

    def __init__(self, content: FileContent, identity: Identity | None = None,
                 limit: int = 10**9) -> None:
        super().__init__(content, identity or Identity(), held=[0])
        self.limit = limit
        self.floods: list[Flood] = []
        self.first_drop = asyncio.Event()
        self.requests_after_drop = 0
        self.connected = asyncio.Event()

    def flood_frame(self, i: int) -> bytes:
        cid, count = self.content.content_id, self.content.count
        match i % 4:
            case 0:
                return have(cid, 0)                        # already known
            case 1:
                return have(cid, count + i % 1000)         # past the last chunk
            case 2:
                return reject(cid, 1 + i % (count - 1), NOT_HELD)  # never requested from us
            case _:
                return bitfield(cid, count, self.held)     # the same bitfield again

    async def __call__(self, session: Session) -> None:
        after_drop = self.first_drop.is_set()

        def on_message(s: Session, message: Message) -> None:
            if after_drop and message.type in (GET_MANIFEST, GET_BITFIELD, REQUEST):
                self.requests_after_drop += 1
            self.answer(s, message)

        # Answer the opening GetManifest and GetBitfield first: then every later
        # Bitfield is a repeat and every Have of chunk 0 old news.
        while (first := await session.receive()).type != GET_BITFIELD:
            on_message(session, first)
        on_message(session, first)
        flood = Flood(session, self.flood_frame, limit=self.limit, on_message=on_message)
        self.floods.append(flood)
        self.connected.set()
        try:
            await flood.run()
        finally:
            if flood.acked < self.limit:
                self.first_drop.set()


def server_flood_frame(cid: bytes) -> Callable[[int], bytes]:
    """Pings, Cancels of nothing and GetBitfields, for a flood of a chunk server."""

    def make(i: int) -> bytes:
        match i % 3:
            case 0:
                return ping(i)
            case 1:
                return cancel(cid, i % 1000)
            case _:
                return get_bitfield(cid)

    return make


class SlotHolder:
    """Holds connections to a chunk server from many source addresses, re-opening each one
    as it is dropped: ``half_open`` in all that only connect (every other one also sends
    ``-> e``) and ``idle`` in all that finish the handshake and Hello and then stay silent,
    dealt round-robin over ``sources``.

    A refused or evicted connection is re-opened after ``pause`` seconds (the attacker's
    own pacing, so that it does not spin on one core of the machine it shares).
    """

    def __init__(self, target: tuple[str, int], sources: Sequence[str], half_open: int,
                 idle: int, pause: float = 0.05) -> None:
        self.target = target
        self.sources = list(sources)
        self.half_open = half_open
        self.idle = idle
        self.pause = pause
        self.open_now = 0
        self.peak = 0
        self.opened = 0
        self.dropped = 0
        self.sessions = 0
        self._started: set[int] = set()
        self.all_started = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    @property
    def slots(self) -> int:
        return self.half_open + self.idle

    def start(self) -> None:
        kinds = ["e" if i % 2 else "" for i in range(self.half_open)] + ["session"] * self.idle
        for slot, kind in enumerate(kinds):
            source = self.sources[slot % len(self.sources)]
            self._tasks.append(asyncio.create_task(self._hold(slot, source, kind)))

    async def _once(self, slot: int, source: str, kind: str) -> None:
        reader, writer = await open_tcp(*self.target, source=source)
        self.opened += 1
        self.open_now += 1
        self.peak = max(self.peak, self.open_now)
        try:
            if kind == "e":
                writer.write(first_handshake_message())
            elif kind == "session":
                await initiate(reader, writer, Identity())
                self.sessions += 1
            self._mark(slot)
            with contextlib.suppress(ConnectionError):
                while await reader.read(65536):
                    pass
        finally:
            self.open_now -= 1
            self.dropped += 1
            writer.transport.abort()

    def _mark(self, slot: int) -> None:
        self._started.add(slot)
        if len(self._started) == self.slots:
            self.all_started.set()

    async def _hold(self, slot: int, source: str, kind: str) -> None:
        while not self._stopping:
            try:
                await self._once(slot, source, kind)
            except (OSError, asyncio.IncompleteReadError, Closed):  # refused, evicted, reset, bad tag
                self._mark(slot)  # it tried: the slot counts as started
            await asyncio.sleep(self.pause)

    async def aclose(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task


async def proven_contacts(target: tuple[str, int], networks: Sequence[int]) -> list[DHTSocket]:
    """Fake DHT nodes, one per ``127.N.0.1``, that ping ``target`` and answer its
    ``identify`` truthfully: contacts it admits. Returns once each one was asked and answered
    (and one more round trip later, so the answer has been handled)."""
    socks = []
    for n in networks:
        identity = Identity()
        socks.append(await DHTSocket.open(loopback_source(n), identity=identity,
                                          answer=fake_node_answers(identity, lambda s: s)))
    await asyncio.gather(*(s.request(target, "ping") for s in socks))
    await asyncio.gather(*(s.wait_request("identify", target) for s in socks))
    await asyncio.gather(*(s.request(target, "ping") for s in socks))
    return socks


AMPLIFICATION_PROBES = ("ping", "identify", "find_node", "get providers", "get peer",
                        "get channel", "put", "put invalid", "find_node with no token",
                        "get with no token", "get with a made-up token")


async def amplification_probe(target: tuple[str, int], key: bytes, source: str = "127.8.0.1",
                              timeout: float = 1.0) -> DHTSocket:
    """Send each of :data:`AMPLIFICATION_PROBES` once from an unproven ``source`` (a socket
    that never answers ``identify``), in the smallest canonical form; unanswered probes are
    fine. The socket's :attr:`DHTSocket.replies` and :attr:`DHTSocket.traffic` say what came
    back; ``key`` should hold many provider records."""
    sock = await DHTSocket.open(source)
    author = Identity()
    record = provider_record(author, key, [(source, 7473)], latest_provider_expiry())
    probes: list[tuple[str, tuple[Any, ...]]] = [
        ("ping", ()), ("identify", (os.urandom(32),)), ("find_node", (key,)),
        ("get", (1, key)), ("get", (2, key)), ("get", (3, key)),
        ("put", (key, record)), ("put", (key, b"\x93\x01\x02\x03")),
        # The address-token shapes (DHT, "Address tokens"): none held, and a guessed one.
        ("find_node", (key, b"")), ("get", (1, key, b"")), ("get", (1, key, os.urandom(8)))]
    for name, args in probes:
        with contextlib.suppress(TimeoutError):
            await sock.request(target, name, *args, timeout=timeout)
    # One more exchange: whatever the node sent us because of the probes (an identify
    # challenge) has arrived by the time this is answered or has timed out.
    with contextlib.suppress(TimeoutError):
        await sock.request(target, "ping", timeout=timeout)
    return sock


def worst_amplification(sock: DHTSocket, target: tuple[str, int]) -> tuple[float, float]:
    """(worst reply/request byte ratio of one RPC, all bytes received / all bytes sent)."""
    worst = max((reply / req for _name, req, reply in sock.replies), default=0.0)
    t = sock.traffic.get(target, Traffic())
    return worst, (t.received / t.sent if t.sent else 0.0)


async def put_crowd(content_id: bytes, records: list[bytes], entry: tuple[str, int]) -> list[int]:
    """Put ``records`` at every live node around the content's discovery key (found with
    find_node from ``entry``); how many each node acknowledged as stored."""
    key = discovery_key(content_id)
    identity = Identity()
    # The attacker's node answers identify truthfully: it is a proven contact like any other.
    sock = await DHTSocket.open("127.9.9.254", identity=identity,
                              answer=fake_node_answers(identity, lambda source: source))
    try:
        contacts = await sock.request(entry, "find_node", key)
        found = {entry} | {(ip, port) for _id, ip, port in contacts}
        # A finished fetch is still in routing tables for a while: ask only live nodes.
        alive = await asyncio.gather(*(sock.request(n, "ping", timeout=1) for n in found),
                                     return_exceptions=True)
        nodes = [n for n, a in zip(found, alive, strict=True) if isinstance(a, bytes)]
        # At most 32 answers on their way at once: a burst of hundreds overflows the
        # attacker's own socket buffer, which would lose acks, not records.
        wave = asyncio.Semaphore(32)

        async def put(node: tuple[str, int], record: bytes) -> int:
            async with wave:
                return int(await sock.request(node, "put", key, record, timeout=3))

        replies = await asyncio.gather(*(put(node, record) for node in nodes for record in records),
                                       return_exceptions=True)
        per_node = len(records)
        return [sum(r == PUT_OK for r in replies[i:i + per_node])
                for i in range(0, len(replies), per_node)]
    finally:
        sock.close()


def _entry_row(path: str, payload: bytes) -> list[Any]:
    """A manifest entry of a file of at most one 64 KiB chunk."""
    assert len(payload) <= 64 * KiB
    return [path, len(payload), 64 * KiB, blake3.blake3(payload).digest() if payload else b""]


def file_id(size: int, chunk_size: int, hashes: bytes) -> bytes:
    """BLAKE3 of ``pack([1, "file", size, chunk_size, hashes])``."""
    return blake3.blake3(pack([1, "file", size, chunk_size, hashes])).digest()


class FolderProvider:
    """Serves a folder of small files (each at most one chunk) in either content format, as
    docs/PROTOCOL.md describes them: ``form="v1"`` one manifest, ``form="listed"`` a root and a
    listing asked in chunks under the listing's file id. ``rows`` replaces the entries (what a
    hostile publisher signs: the id is computed over them, so it matches); chunks are served
    for the honest ``files`` only. Requests seen are kept in :attr:`requests` as (id, index).
    """

    def __init__(self, files: Sequence[tuple[str, bytes]], identity: Identity, form: str,
                 name: str = "folder", rows: list[list[Any]] | None = None) -> None:
        self.identity = identity
        self.files = sorted(files)
        self.rows = rows if rows is not None else [_entry_row(p, b) for p, b in self.files]
        self.chunks = [payload for _, payload in self.files if payload]  # chunk i: i-th non-empty file
        self.requests: list[tuple[bytes, int]] = []
        self.listing_id = b""
        self.listing = b""
        self.listing_chunk = 0
        if form == "v1":
            listing = [[row[0], file_id(row[1], row[2], row[3]), row[1]] for row in self.rows]
            self.content_id = blake3.blake3(pack([1, "dir", listing])).digest()
            body: list[Any] = [1, "dir", name, self.rows, identity.public_key]
        else:
            self.listing = pack(self.rows)
            size = len(self.listing)
            self.listing_chunk = chunk_size_for(size)
            hashes = b"".join(blake3.blake3(self.listing[o:o + self.listing_chunk]).digest()
                              for o in range(0, size, self.listing_chunk))
            self.listing_id = file_id(size, self.listing_chunk, hashes)
            self.content_id = blake3.blake3(pack([2, "dir", self.listing_id])).digest()
            body = [2, "dir", name, [size, self.listing_chunk, hashes], identity.public_key]
        self.manifest = pack([*body, identity.sign(MANIFEST_TAG + pack(body))])

    def answer(self, session: Session, message: Message) -> None:
        cid = self.content_id
        match message.type:
            case 2:  # GetManifest
                asked = message.fields[0]
                session.write(manifest(asked, self.manifest if asked == cid else None))
            case 4:  # GetBitfield
                asked = message.fields[0]
                session.write(bitfield(asked, len(self.chunks) if asked == cid else 0,
                                       None if asked == cid else []))
            case 7:  # Request
                asked, index = message.fields
                self.requests.append((asked, index))
                if asked == self.listing_id and index * self.listing_chunk < len(self.listing):
                    offset = index * self.listing_chunk
                    session.write(data(asked, index, self.listing[offset:offset + self.listing_chunk]))
                elif asked == cid and index < len(self.chunks):
                    session.write(data(cid, index, self.chunks[index]))
                else:
                    session.write(reject(asked, index, NOT_HELD))
            case 11:  # Ping
                session.write(pong(message.fields[0]))

    async def __call__(self, session: Session) -> None:
        """Listener handler: answer until the far end closes."""
        while True:
            self.answer(session, await session.receive())
            await session.writer.drain()
