"""Known-answer test of the Noise layer against the cacophony vectors, and nonce rules."""

from __future__ import annotations

import pytest

from p2p.wire.errors import LocalProtocolError, RemoteProtocolError
from p2p.wire.noise import MAX_NONCE, CipherState, HandshakeXX, KeyPair

# From the cacophony test vectors (tests/vectors/cacophony.txt in the snow and
# noiseprotocol projects), entry "Noise_XX_25519_AESGCM_SHA256".
PROLOGUE = bytes.fromhex("4a6f686e2047616c74")
INIT_STATIC = "e61ef9919cde45dd5f82166404bd08e38bceb5dfdfded0a34c8df7ed542214d1"
INIT_EPHEMERAL = "893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a"
RESP_STATIC = "4a3acbfdb163dec651dfa3194dece676d437029c62a408b4c5ea9114246e4893"
RESP_EPHEMERAL = "bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b"
MESSAGES = [
    ("4c756477696720766f6e204d69736573",
     "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c79444c756477696720766f6e204d69736573"),
    ("4d757272617920526f746862617264",
     "95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f144808843757117acceb05bd7a45733bc22015c97"
     "a9d0cbaf41b80446d5988ff5127235d76b79eade70f473d6a4ef521fdcbeda5340d01e028ba793fc059f2724a83af05f"
     "12dda0448a7621a926b379a92477fd"),
    ("462e20412e20486179656b",
     "c90f1cf77eba4e50edb038991565e36c9758943a989229b6051244dc4fbecb6946744b401af2ee1a5881b65fbb87fd07"
     "cb6a328ececc9ce6ce84c399dc332d4fd521fa4bb7f467ce909395"),
    ("4361726c204d656e676572", "bc3fa77f6aca3e8466d7dc6bea10013e88a6a29add5132b461806c"),
    ("4a65616e2d426170746973746520536179",
     "250b01074cdfe0df2ecf8ccbf1737b15a2ddb5b52fd9a396604e9c793cee3b3bb9"),
    ("457567656e2042f6686d20766f6e2042617765726b",
     "449d4d433b3cdc3d02bf6fc881774b9df54366ebcffb9689bb13f14709822cd7ef42bcdb4d"),
]


def test_cacophony_known_answer() -> None:
    init = HandshakeXX(True, KeyPair.from_bytes(bytes.fromhex(INIT_STATIC)), prologue=PROLOGUE,
                       e=KeyPair.from_bytes(bytes.fromhex(INIT_EPHEMERAL)))
    resp = HandshakeXX(False, KeyPair.from_bytes(bytes.fromhex(RESP_STATIC)), prologue=PROLOGUE,
                       e=KeyPair.from_bytes(bytes.fromhex(RESP_EPHEMERAL)))
    writers = [init, resp, init]
    for i, (payload, ciphertext) in enumerate(MESSAGES[:3]):
        w = writers[i]
        r = resp if w is init else init
        msg = w.write_message(bytes.fromhex(payload))
        assert msg.hex() == ciphertext
        assert r.read_message(msg) == bytes.fromhex(payload)
    # Every ciphertext above uses h as associated data, so matching them checks h too.
    # (The vector file's "handshake_hash" for this entry equals h after message 2,
    # not after message 3, so it is not compared here.)
    assert init.h == resp.h
    i_send, i_recv = init.split()
    r_send, r_recv = resp.split()
    # Transport messages alternate, starting with the responder (cacophony convention).
    for i, (payload, ciphertext) in enumerate(MESSAGES[3:]):
        send, recv = (r_send, i_recv) if i % 2 == 0 else (i_send, r_recv)
        ct = send.encrypt_with_ad(b"", bytes.fromhex(payload))
        assert ct.hex() == ciphertext
        assert recv.decrypt_with_ad(b"", ct) == bytes.fromhex(payload)


def test_nonce_never_wraps() -> None:
    cs = CipherState("AESGCM", bytes(32))
    cs.n = MAX_NONCE - 1
    cs.encrypt_with_ad(b"", b"x")
    with pytest.raises(LocalProtocolError):
        cs.encrypt_with_ad(b"", b"x")


def test_wrong_key_is_protocol_error() -> None:
    a, b = CipherState("ChaChaPoly", bytes(32)), CipherState("ChaChaPoly", bytes([1]) * 32)
    with pytest.raises(RemoteProtocolError):
        b.decrypt_with_ad(b"", a.encrypt_with_ad(b"", b"hello"))
