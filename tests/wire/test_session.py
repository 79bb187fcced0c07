"""Two sessions joined in memory: handshake, every message, and every way a stream can be attacked."""

from __future__ import annotations

import os

import pytest

from p2p.identity import Identity
from p2p.wire.errors import RemoteProtocolError, WrongPeer
from p2p.wire.messages import (
    MAX_CHUNK,
    PROTOCOL_VERSION,
    Bitfield,
    Cancel,
    Data,
    GetBitfield,
    GetManifest,
    Goodbye,
    Have,
    Hello,
    Manifest,
    Message,
    Ping,
    Pong,
    Reject,
    RejectReason,
    Request,
)
from p2p.wire.noise import MAX_MESSAGE
from p2p.wire.session import Session, State

CID = bytes(range(32))


def hello(identity: Identity, version: int = PROTOCOL_VERSION) -> Hello:
    return Hello(version, identity.peer_id, (("192.0.2.1", 4001),), "test/1")


def pair(expected: Identity | None = None) -> tuple[Session, Session, Identity, Identity]:
    a_id, b_id = Identity.generate(), Identity.generate()
    a = Session(a_id, hello(a_id), initiator=True,
                expected_peer=(expected or b_id).peer_id)
    b = Session(b_id, hello(b_id), initiator=False)
    return a, b, a_id, b_id


def shuttle(a: Session, b: Session) -> None:
    """Move bytes both ways until neither side has anything to send."""
    for _ in range(10):
        x, y = a.data_to_send(), b.data_to_send()
        if not x and not y:
            return
        if x:
            assert b.receive_data(x) == []
        if y:
            assert a.receive_data(y) == []


def opened() -> tuple[Session, Session, Identity, Identity]:
    a, b, a_id, b_id = pair()
    shuttle(a, b)
    assert a.state is State.OPEN and b.state is State.OPEN
    return a, b, a_id, b_id


ALL: list[Message] = [
    GetManifest(CID), Manifest(CID, b"signed manifest"), Manifest(CID, None),
    GetBitfield(CID), Bitfield(CID, 10, b"\xff\xc0"), Bitfield(CID, 0, b""), Have(CID, 7),
    Request(CID, 3), Data(CID, 3, b"chunk bytes"), Data(CID, 0, b""),
    Reject(CID, 3, RejectReason.NOT_HELD), Cancel(CID, 3), Ping(2**64 - 1), Pong(0),
    Goodbye("bye"),
]


def test_handshake_proves_identities() -> None:
    a, b, a_id, b_id = opened()
    assert a.remote_peer == b_id.peer_id and b.remote_peer == a_id.peer_id
    assert a.remote_hello == hello(b_id) and b.remote_hello == hello(a_id)
    assert a.handshake_hash == b.handshake_hash


@pytest.mark.parametrize("one_at_a_time", [False, True])
def test_every_message_round_trips(one_at_a_time: bool) -> None:
    a, b, _, _ = opened()
    for msg in ALL:
        a.send(msg)
    data = a.data_to_send()
    got: list[Message] = []
    if one_at_a_time:
        for i in range(len(data)):
            got += b.receive_data(data[i:i + 1])
    else:
        got = b.receive_data(data)
    assert got == ALL


def test_large_data_spans_many_records() -> None:
    a, b, _, _ = opened()
    payload = os.urandom(MAX_CHUNK)
    a.send(Data(CID, 1, payload))
    b.send(Data(CID, 2, memoryview(payload)[:1_000_001]))
    (got,) = b.receive_data(a.data_to_send())
    assert isinstance(got, Data) and got.payload == payload
    (back,) = a.receive_data(b.data_to_send())
    assert isinstance(back, Data) and bytes(back.payload) == payload[:1_000_001]


def test_smallest_receive_buffer_never_runs_out_of_room() -> None:
    """Reads that never end on a record boundary: the partial record moves to the front in time."""
    a_id, b_id = Identity.generate(), Identity.generate()
    a = Session(a_id, hello(a_id), initiator=True)
    b = Session(b_id, hello(b_id), initiator=False, recv_buffer=2 * (MAX_MESSAGE + 2))
    shuttle(a, b)
    payload = os.urandom(1_000_000)
    a.send(Data(CID, 1, payload))
    a.send(Ping(3))
    data = bytes(a.data_to_send())
    got: list[Message] = []
    step = 1021  # prime: the reads straddle record boundaries (records are 65537 bytes)
    for pos in range(0, len(data), step):
        # Room for a whole record before every read; with less, a record could never complete.
        assert len(b.get_buffer()) >= MAX_MESSAGE + 2
        got += b.receive_data(data[pos:pos + step])
    assert got == [Data(CID, 1, payload), Ping(3)]


def test_initiator_first_messages_travel_with_message_3_before_the_remote_hello() -> None:
    """The dialler's first requests go in the flight of Noise message 3, right after its
    Hello: the responder has them as soon as it opens, one round trip earlier."""
    a_id, b_id = Identity.generate(), Identity.generate()
    first = [GetManifest(CID), GetBitfield(CID), Request(CID, 0)]
    a = Session(a_id, hello(a_id), initiator=True, first=first)
    b = Session(b_id, hello(b_id), initiator=False, first=[Ping(1)])  # ignored: not a dialler
    assert b.receive_data(a.data_to_send()) == []  # -> e
    assert a.receive_data(b.data_to_send()) == []  # <- e, ee, s, es: a opens, b's Hello not yet here
    assert a.state is State.OPEN and a.remote_hello is None
    flight = a.data_to_send()  # -> s, se, then a's Hello and its first messages
    assert b.receive_data(flight) == first
    assert b.remote_hello == hello(a_id)
    assert a.receive_data(b.data_to_send()) == []  # b's Hello, and no Ping from the responder
    assert a.remote_hello == hello(b_id)
    assert a.data_to_send() == b""  # sent once


def test_wrong_expected_peer_aborts() -> None:
    a, b, _, _ = pair(expected=Identity.generate())
    b.receive_data(a.data_to_send())
    with pytest.raises(WrongPeer):
        a.receive_data(b.data_to_send())
    assert a.state is State.CLOSED
    assert a.data_to_send() == b""  # message 3 (our identity) was never produced


def _records(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 2], "big")
        out.append(data[pos:pos + 2 + n])
        pos += 2 + n
    return out


def _three_records() -> tuple[Session, list[bytes]]:
    a, b, _, _ = opened()
    sent = b""
    for i in range(3):
        a.send(Ping(i))
        sent += bytes(a.data_to_send())  # taken one at a time: a record each
    return b, _records(sent)


def test_small_frames_are_gathered_into_shared_records_in_order() -> None:
    """Small frames sent before the bytes are taken share records (as many as they fill); a
    large Data frame between them keeps its place and its own header record."""
    a, b, _, _ = opened()
    small = [Data(CID, i, os.urandom(4096)) for i in range(40)]  # 165 KiB of small frames
    big = Data(CID, 99, os.urandom(100_000))
    sent = [*small[:20], Ping(1), big, *small[20:]]
    for message in sent:
        a.send(message)
    wire = bytes(a.data_to_send())
    recs = _records(wire)
    assert len(recs) == 2 + 3 + 2  # 20 small + a Ping; big: header + 2 payload records; 20 small
    assert b.receive_data(wire) == sent


def test_tampering_is_detected() -> None:
    b, recs = _three_records()
    bad = bytearray(recs[0])
    bad[5] ^= 1
    with pytest.raises(RemoteProtocolError):
        b.receive_data(bytes(bad))


def test_replay_is_detected() -> None:
    b, recs = _three_records()
    assert b.receive_data(recs[0]) == [Ping(0)]
    with pytest.raises(RemoteProtocolError):
        b.receive_data(recs[0])


def test_reordering_is_detected() -> None:
    b, recs = _three_records()
    with pytest.raises(RemoteProtocolError):
        b.receive_data(recs[1] + recs[0])


def _chunk_records() -> tuple[Session, list[bytes], bytes]:
    """The records of one 300 KiB Data frame: its header record, then five payload records,
    which the receiver decrypts in one run straight into the frame."""
    a, b, _, _ = opened()
    payload = os.urandom(300_000)
    a.send(Data(CID, 7, payload))
    recs = _records(bytes(a.data_to_send()))
    assert len(recs) == 6
    return b, recs, payload


def test_a_chunk_received_in_one_piece_or_record_by_record_is_the_same() -> None:
    b, recs, payload = _chunk_records()
    (msg,) = b.receive_data(b"".join(recs))
    assert msg == Data(CID, 7, payload)
    b, recs, payload = _chunk_records()
    got = [m for rec in recs for m in b.receive_data(rec)]
    assert got == [Data(CID, 7, payload)]


@pytest.mark.parametrize("attack", ["tamper", "swap", "replay", "drop"])
def test_an_attack_on_a_chunk_s_payload_records_is_detected(attack: str) -> None:
    b, recs, _ = _chunk_records()
    head, body = recs[0], recs[1:]
    if attack == "tamper":
        bad = bytearray(body[2])
        bad[100] ^= 1
        body[2] = bytes(bad)
    elif attack == "swap":
        body[1], body[2] = body[2], body[1]
    elif attack == "replay":
        body.insert(2, body[1])
    else:
        del body[1]
    with pytest.raises(RemoteProtocolError):
        b.receive_data(head + b"".join(body))
        b.receive_eof()


def test_truncation_is_detected() -> None:
    b, recs = _three_records()
    assert b.receive_data(recs[0] + recs[1][:-3]) == [Ping(0)]
    with pytest.raises(RemoteProtocolError):
        b.receive_eof()


def test_truncated_frame_is_detected() -> None:
    a, b, _, _ = opened()
    a.send(Data(CID, 0, os.urandom(200_000)))
    recs = _records(bytes(a.data_to_send()))
    b.receive_data(b"".join(recs[:-1]))
    with pytest.raises(RemoteProtocolError):
        b.receive_eof()


def test_tampered_handshake_fails() -> None:
    a, b, _, _ = pair()
    b.receive_data(a.data_to_send())
    msg2 = bytearray(b.data_to_send())
    msg2[-1] ^= 0x80
    with pytest.raises(RemoteProtocolError):
        a.receive_data(bytes(msg2))


def test_first_message_must_be_hello() -> None:
    a_id, b_id = Identity.generate(), Identity.generate()
    a = Session(a_id, hello(a_id), initiator=True)
    b = Session(b_id, hello(b_id), initiator=False)
    b.receive_data(a.data_to_send())
    a.receive_data(b.data_to_send())
    data = bytes(a.data_to_send())
    recs = _records(data)
    a.send(Ping(1))
    ping = bytes(a.data_to_send())
    # The third record (a's Hello) is dropped: the Ping then fails authentication, since
    # its nonce is one ahead. Nonces make "skip the Hello" impossible without the key.
    with pytest.raises(RemoteProtocolError):
        b.receive_data(recs[0] + ping)


def test_other_version_gets_goodbye() -> None:
    a_id, b_id = Identity.generate(), Identity.generate()
    a = Session(a_id, hello(a_id, version=PROTOCOL_VERSION + 1), initiator=True)
    b = Session(b_id, hello(b_id), initiator=False)
    b.receive_data(a.data_to_send())
    a.receive_data(b.data_to_send())
    with pytest.raises(RemoteProtocolError):
        b.receive_data(a.data_to_send())
    assert a.receive_data(b.data_to_send()) == [Goodbye(f"unsupported protocol version {PROTOCOL_VERSION + 1}")]
