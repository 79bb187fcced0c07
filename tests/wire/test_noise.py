"""Known answers for the Noise layer (cacophony vectors, RFC 8439 and GCM test cases), and nonce rules."""

from __future__ import annotations

import pytest

from p2p.wire.errors import LocalProtocolError, RemoteProtocolError
from p2p.wire.noise import CIPHERS, MAX_NONCE, TAGLEN, CipherState, HandshakeXX, KeyPair

# From the cacophony test vectors (tests/vectors/cacophony.txt in the snow and
# noiseprotocol projects), entries "Noise_XX_25519_AESGCM_SHA256" and
# "Noise_XX_25519_ChaChaPoly_SHA256": the same keys and payloads for both.
PROLOGUE = bytes.fromhex("4a6f686e2047616c74")
INIT_STATIC = "e61ef9919cde45dd5f82166404bd08e38bceb5dfdfded0a34c8df7ed542214d1"
INIT_EPHEMERAL = "893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a"
RESP_STATIC = "4a3acbfdb163dec651dfa3194dece676d437029c62a408b4c5ea9114246e4893"
RESP_EPHEMERAL = "bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b"
PAYLOADS = [
    "4c756477696720766f6e204d69736573",
    "4d757272617920526f746862617264",
    "462e20412e20486179656b",
    "4361726c204d656e676572",
    "4a65616e2d426170746973746520536179",
    "457567656e2042f6686d20766f6e2042617765726b",
]
HANDSHAKE_HASH = {
    "AESGCM": "1b7aefb1125762aa21a252890d00af54519638b76437444538f9a52f21e2e0dc",
    "ChaChaPoly": "c8e5f64e846193be2a834104c2a009868d6c9f3bd3c186299888b488b2f1f58e",
}
CIPHERTEXTS = {
    "AESGCM": [
        "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c79444c756477696720766f6e204d69736573",
        "95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f144808843757117acceb05bd7a45733bc22015c97"
        "a9d0cbaf41b80446d5988ff5127235d76b79eade70f473d6a4ef521fdcbeda5340d01e028ba793fc059f2724a83af05f"
        "12dda0448a7621a926b379a92477fd",
        "c90f1cf77eba4e50edb038991565e36c9758943a989229b6051244dc4fbecb6946744b401af2ee1a5881b65fbb87fd07"
        "cb6a328ececc9ce6ce84c399dc332d4fd521fa4bb7f467ce909395",
        "bc3fa77f6aca3e8466d7dc6bea10013e88a6a29add5132b461806c",
        "250b01074cdfe0df2ecf8ccbf1737b15a2ddb5b52fd9a396604e9c793cee3b3bb9",
        "449d4d433b3cdc3d02bf6fc881774b9df54366ebcffb9689bb13f14709822cd7ef42bcdb4d",
    ],
    "ChaChaPoly": [
        "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c79444c756477696720766f6e204d69736573",
        "95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f14480884381cbad1f276e038c48378ffce2b65285"
        "e08d6b68aaa3629a5a8639392490e5b9bd5269c2f1e4f488ed8831161f19b7815528f8982ffe09be9b5c412f8a0db50f"
        "8814c7194e83f23dbd8d162c9326ad",
        "c7195ffacac1307ff99046f219750fc47693e23c3cb08b89c2af808b444850a80ae475b9df0f169ae80a89be0865b57f"
        "58c9fea0d4ec82a286427402f113e4b6ae769a1d95941d49b25030",
        "96763ed773f8e47bb3712f0e29b3060ffc956ffc146cee53d5e1df",
        "3e40f15f6f3a46ae446b253bf8b1d9ffb6ed9b174d272328ff91a7e2e5c79c07f5",
        "eb3f3515110702e047a6c9da4478b6ead94873c11c0f2d710ddb3f09fce024b3a58502ae3f",
    ],
}


def _vector_handshake(cipher: str) -> tuple[HandshakeXX, HandshakeXX]:
    """Both sides of the vector's handshake, run to the end with every message checked."""
    init = HandshakeXX(True, KeyPair.from_bytes(bytes.fromhex(INIT_STATIC)), prologue=PROLOGUE,
                       e=KeyPair.from_bytes(bytes.fromhex(INIT_EPHEMERAL)), cipher=cipher)
    resp = HandshakeXX(False, KeyPair.from_bytes(bytes.fromhex(RESP_STATIC)), prologue=PROLOGUE,
                       e=KeyPair.from_bytes(bytes.fromhex(RESP_EPHEMERAL)), cipher=cipher)
    for i, (payload, ciphertext) in enumerate(zip(PAYLOADS[:3], CIPHERTEXTS[cipher][:3], strict=True)):
        writer, reader = (init, resp) if i % 2 == 0 else (resp, init)
        msg = writer.write_message(bytes.fromhex(payload))
        assert msg.hex() == ciphertext
        assert reader.read_message(msg) == bytes.fromhex(payload)
    return init, resp


@pytest.mark.parametrize("cipher", ["AESGCM", "ChaChaPoly"])
def test_cacophony_known_answer(cipher: str) -> None:
    init, resp = _vector_handshake(cipher)
    # The vector's handshake_hash is h after the last handshake message (GetHandshakeHash).
    assert init.h.hex() == HANDSHAKE_HASH[cipher]
    assert resp.h.hex() == HANDSHAKE_HASH[cipher]
    i_send, i_recv = init.split()
    r_send, r_recv = resp.split()
    # Transport messages alternate, starting with the responder (cacophony convention).
    for i, (payload, ciphertext) in enumerate(zip(PAYLOADS[3:], CIPHERTEXTS[cipher][3:], strict=True)):
        send, recv = (r_send, i_recv) if i % 2 == 0 else (i_send, r_recv)
        ct = send.encrypt_with_ad(b"", bytes.fromhex(payload))
        assert ct.hex() == ciphertext
        assert recv.decrypt_with_ad(b"", ct) == bytes.fromhex(payload)


@pytest.mark.parametrize("cipher", ["AESGCM", "ChaChaPoly"])
def test_cacophony_transport_through_the_zero_copy_path(cipher: str) -> None:
    """The session seals records with encrypt_records_into and opens them with
    decrypt_records_into (a chunk's payload) or decrypt_with_ad (any other): same answers."""
    init, resp = _vector_handshake(cipher)
    i_send, i_recv = init.split()
    r_send, r_recv = resp.split()
    for i, (payload, ciphertext) in enumerate(zip(PAYLOADS[3:], CIPHERTEXTS[cipher][3:], strict=True)):
        send, recv = (r_send, i_recv) if i % 2 == 0 else (i_send, r_recv)
        plain = bytes.fromhex(payload)
        wire = bytearray(2 + len(plain) + TAGLEN)
        assert send.encrypt_records_into(plain, memoryview(wire), 0, len(plain)) == len(wire)
        assert int.from_bytes(wire[:2], "big") == len(plain) + TAGLEN
        assert wire[2:].hex() == ciphertext
        out = bytearray(len(plain))
        if i % 2 == 0:
            assert recv.decrypt_records_into(memoryview(wire), 0, len(wire), memoryview(out),
                                             0, len(plain)) == (len(wire), len(plain))
        else:
            out[:] = recv.decrypt_with_ad(b"", memoryview(wire)[2:])
        assert out == plain


# RFC 8439 section 2.8.2: the AEAD_CHACHA20_POLY1305 example.
RFC8439_KEY = bytes(range(0x80, 0xA0))
RFC8439_NONCE = bytes.fromhex("070000004041424344454647")
RFC8439_AAD = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
RFC8439_PLAINTEXT = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip "
                     b"for the future, sunscreen would be it.")
RFC8439_CIPHERTEXT = bytes.fromhex(
    "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
    "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
    "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
    "3ff4def08e4b7a9de576d26586cec64b6116")
RFC8439_TAG = bytes.fromhex("1ae10b594f09e26a7e902ecbd0600691")

# RFC 8439 appendix A.5: a decryption example whose nonce is Noise-shaped (32 zero bits,
# then a 64-bit little-endian counter), so it goes through CipherState unchanged.
A5_KEY = bytes.fromhex("1c9240a5eb55d38af333888604f6b5f0473917c1402b80099dca5cbc207075c0")
A5_NONCE = bytes.fromhex("000000000102030405060708")
A5_N = 0x0807060504030201  # the counter those last 8 bytes encode, little-endian
A5_AAD = bytes.fromhex("f33388860000000000004e91")
A5_PLAINTEXT = ("Internet-Drafts are draft documents valid for a maximum of six months and may be "
                "updated, replaced, or obsoleted by other documents at any time. It is inappropriate "
                "to use Internet-Drafts as reference material or to cite them other than as "
                "/\u201cwork in progress./\u201d").encode()
A5_CIPHERTEXT = bytes.fromhex(
    "64a0861575861af460f062c79be643bd5e805cfd345cf389f108670ac76c8cb2"
    "4c6cfc18755d43eea09ee94e382d26b0bdb7b73c321b0100d4f03b7f355894cf"
    "332f830e710b97ce98c8a84abd0b948114ad176e008d33bd60f982b1ff37c855"
    "9797a06ef4f0ef61c186324e2b3506383606907b6a7c02b0f9f6157b53c867e4"
    "b9166c767b804d46a59b5216cde7a4e99040c5a40433225ee282a1b0a06c523e"
    "af4534d7f83fa1155b0047718cbc546a0d072b04b3564eea1b422273f548271a"
    "0bb2316053fa76991955ebd63159434ecebb4e466dae5a1073a6727627097a10"
    "49e617d91d361094fa68f0ff77987130305beaba2eda04df997b714d6c6f2c29"
    "a6ad5cb4022b02709b")
A5_TAG = bytes.fromhex("eead9d67890cbb22392336fea1851f38")


def test_chachapoly_rfc8439_aead_example() -> None:
    """Section 2.8.2, through the AEAD that noise.py uses for "ChaChaPoly".

    Its nonce starts with 07000000, which no Noise nonce does (section 12.3: 32 zero bits
    first), so CipherState cannot make it; the A.5 test below checks the nonce encoding.
    """
    aead = CIPHERS["ChaChaPoly"](RFC8439_KEY)
    sealed = aead.encrypt(RFC8439_NONCE, RFC8439_PLAINTEXT, RFC8439_AAD)
    assert sealed == RFC8439_CIPHERTEXT + RFC8439_TAG
    assert aead.decrypt(RFC8439_NONCE, sealed, RFC8439_AAD) == RFC8439_PLAINTEXT


def test_chachapoly_rfc8439_a5_through_cipher_state() -> None:
    """Appendix A.5 through CipherState: key, nonce n encoded as 0^32 || n little-endian, ad."""
    assert bytes(4) + A5_N.to_bytes(8, "little") == A5_NONCE  # what the vector means by n
    cs = CipherState("ChaChaPoly", A5_KEY)
    cs.n = A5_N
    assert cs.decrypt_with_ad(A5_AAD, A5_CIPHERTEXT + A5_TAG) == A5_PLAINTEXT
    assert cs.n == A5_N + 1
    cs.n = A5_N
    assert cs.encrypt_with_ad(A5_AAD, A5_PLAINTEXT) == A5_CIPHERTEXT + A5_TAG
    cs.n = A5_N + 1  # the next nonce: the same record no longer opens
    with pytest.raises(RemoteProtocolError):
        cs.decrypt_with_ad(A5_AAD, A5_CIPHERTEXT + A5_TAG)


def test_aesgcm_known_answer_through_cipher_state() -> None:
    """AES-256-GCM test case 14 of the GCM specification (McGrew and Viega), nonce 0.

    (The cacophony vector above also checks AES-GCM at nonces 0 and 1, which tells a
    big-endian counter from a little-endian one.)
    """
    ciphertext, tag = "cea7403d4d606b6e074ec5d3baf39d18", "d0d1c8a799996bf0265b98b5d48ab919"
    cs = CipherState("AESGCM", bytes(32))
    assert cs.encrypt_with_ad(b"", bytes(16)).hex() == ciphertext + tag


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
