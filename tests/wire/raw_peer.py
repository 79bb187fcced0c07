"""The far end of a :class:`~p2p.wire.session.Session`, for tests that need a hostile but authenticated peer.

A real Session only ever encrypts well-formed frames, so garbage fed to it from outside dies at
the AEAD tag and never reaches the frame and message decoders behind decryption. ``RawPeer``
completes a real Noise XX handshake and identity proof with the session under test (as
docs/PROTOCOL.md describes them, built from ``HandshakeXX`` and the session's public
constants), and from then on seals whatever plaintext it is given into properly encrypted
records, cut wherever the test says.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from p2p import encoding
from p2p.identity import Identity
from p2p.wire.messages import PROTOCOL_VERSION, Hello, encode
from p2p.wire.noise import CipherState, HandshakeXX, KeyPair
from p2p.wire.session import IDENTITY_TAG, MAX_PLAINTEXT, PROLOGUE, Session

_U16 = struct.Struct(">H")


def _first_record(data: bytes | bytearray) -> bytes:
    """The first ``len:u16 || message`` record of ``data``, without its length."""
    (n,) = _U16.unpack_from(data)
    assert len(data) >= 2 + n, "the session produced a partial record"
    return bytes(data[2:2 + n])


class RawPeer:
    """Completes the handshake with ``session`` (taking the other role), then seals raw plaintext."""

    def __init__(self, session: Session, *, cipher: str = "AESGCM") -> None:
        self.identity = Identity.generate()
        hs = HandshakeXX(not session.initiator, KeyPair.generate(), prologue=PROLOGUE, cipher=cipher)

        def proof(h: bytes) -> bytes:
            sig = self.identity.sign(IDENTITY_TAG + hs.s.public + h)
            return encoding.pack([self.identity.public_key, sig])

        if hs.initiator:
            assert session.receive_data(self._frame(hs.write_message(b""))) == []   # -> e
            hs.read_message(_first_record(session.data_to_send()))                 # <- e, ee, s, es
            assert session.receive_data(self._frame(hs.write_message(proof))) == []  # -> s, se
        else:
            hs.read_message(_first_record(session.data_to_send()))                 # -> e
            assert session.receive_data(self._frame(hs.write_message(proof))) == []  # <- e, ee, s, es
            hs.read_message(_first_record(session.data_to_send()))                 # -> s, se
        assert session.remote_peer == self.identity.peer_id
        self._send: CipherState = hs.split()[0]
        session.data_to_send()  # the session's Hello: not needed here

    @staticmethod
    def _frame(message: bytes) -> bytes:
        return _U16.pack(len(message)) + message

    def hello(self, version: int = PROTOCOL_VERSION) -> bytes:
        """The plaintext frame of a Hello that names this peer (what a session must send first)."""
        return encode(Hello(version, self.identity.peer_id, (), "raw-peer/1"))

    def record(self, plaintext: bytes) -> bytes:
        """One transport record (``len:u16 || ciphertext``) carrying ``plaintext``, which may be empty."""
        assert len(plaintext) <= MAX_PLAINTEXT
        return self._frame(self._send.encrypt_with_ad(b"", plaintext))

    def seal(self, plaintext: bytes, sizes: Sequence[int] = (MAX_PLAINTEXT,)) -> bytes:
        """``plaintext`` as transport records whose plaintexts have the ``sizes`` given, cycled.

        A size of 0 is an empty record (a tag only); sizes are capped at ``MAX_PLAINTEXT``.
        At least one size must be positive.
        """
        assert any(sizes), "sealing with only empty records would never end"
        out = bytearray()
        pos, i = 0, 0
        while pos < len(plaintext):
            n = min(sizes[i % len(sizes)], MAX_PLAINTEXT)
            i += 1
            out += self.record(plaintext[pos:pos + n])
            pos += n
        return bytes(out)
