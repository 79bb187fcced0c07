"""Pooled buffers on the data path: reused only once nobody holds them, aligned where asked,
and what the sessions put in them stays intact while it is referred to."""

from __future__ import annotations

import os
import threading

from p2p.buffers import PAGE, AlignedPool, BufferPool, is_aligned
from p2p.wire.messages import Data
from p2p.wire.session import POOLED_FRAME

from .test_session import CID, opened


def test_a_buffer_is_handed_out_again_only_once_every_view_of_it_is_gone() -> None:
    pool = BufferPool()
    first = pool.take(100_000)
    kept = first[10:20]  # a slice keeps the buffer as much as the view does
    del first
    second = pool.take(100_000)
    assert second.obj is not kept.obj
    owner = id(kept.obj)  # an id, not a reference: a reference would keep it busy
    del kept
    third = pool.take(100_000)
    assert id(third.obj) == owner
    assert id(pool.take(100_000).obj) != owner  # third still holds it


def test_a_large_buffer_is_not_handed_out_for_a_small_request() -> None:
    pool = BufferPool()
    big = pool.take(1 << 20)
    owner = id(big.obj)
    del big
    small = pool.take(4096)
    assert id(small.obj) != owner and len(small) == 4096


def test_the_pool_keeps_at_most_its_bytes() -> None:
    pool = BufferPool(max_bytes=3 * PAGE)
    held = [pool.take(PAGE) for _ in range(5)]  # all busy: two are not kept
    owners = [id(view.obj) for view in held]
    del held
    again = [pool.take(PAGE) for _ in range(4)]
    reused = [id(view.obj) in owners[:3] for view in again]
    assert reused == [True, True, True, False]  # the three it kept come back, then a new one


def test_aligned_views_start_a_page_at_the_chosen_offset() -> None:
    pool = AlignedPool()
    for size, offset in [(PAGE, 0), (1 << 20, 37), (65_573, 37), (5000, 4095)]:
        view = pool.take(size, offset)
        assert len(view) == size
        assert is_aligned(view[offset:])
        assert offset == 0 or not is_aligned(view)


def test_is_aligned_says_no_for_read_only_and_unaligned_buffers() -> None:
    assert not is_aligned(b"\0" * (2 * PAGE))  # read-only: cannot tell, so not used directly
    view = AlignedPool().take(2 * PAGE)
    assert is_aligned(view) and not is_aligned(view[1:])


def test_pools_never_hand_one_buffer_to_two_threads() -> None:
    pool = BufferPool()
    seen: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()

    def work(tag: int) -> None:
        for i in range(300):
            view = pool.take(PAGE)
            view[:] = bytes([tag]) * PAGE
            with lock:
                seen.append(id(view.obj))
            if bytes(view) != bytes([tag]) * PAGE:  # another thread wrote into it meanwhile
                errors.append(f"thread {tag} round {i}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert len(set(seen)) < len(seen)  # and they were reused


def test_received_chunks_land_page_aligned_and_stay_intact_while_held() -> None:
    a, b, _, _ = opened()
    payloads = [os.urandom(POOLED_FRAME + 4096 * i) for i in range(1, 4)]
    received = []
    for i, payload in enumerate(payloads):
        a.send(Data(CID, i, payload))
        (msg,) = b.receive_data(a.data_to_send())
        assert isinstance(msg, Data)
        received.append(msg)
    for msg, payload in zip(received, payloads, strict=True):
        assert bytes(msg.payload) == payload  # later chunks did not reuse a held buffer
        assert is_aligned(msg.payload)  # so the store can write it with O_DIRECT as it is


def test_sealed_bytes_kept_by_the_transport_are_not_overwritten_by_the_next_chunk() -> None:
    a, b, _, _ = opened()
    chunks = [os.urandom(1 << 20), os.urandom(1 << 20)]
    a.send(Data(CID, 0, chunks[0]))
    first = a.data_to_send()  # held, as a transport that keeps views of what it sends does
    copy = bytes(first)
    a.send(Data(CID, 1, chunks[1]))
    second = a.data_to_send()
    assert bytes(first) == copy
    msgs = b.receive_data(first) + b.receive_data(second)
    assert [bytes(m.payload) for m in msgs if isinstance(m, Data)] == chunks


def test_small_frames_are_not_pooled() -> None:
    a, b, _, _ = opened()
    a.send(Data(CID, 0, b"tiny"))
    (msg,) = b.receive_data(a.data_to_send())
    assert isinstance(msg, Data) and bytes(msg.payload) == b"tiny"
    assert not isinstance(msg.payload.obj, type(AlignedPool().take(PAGE).obj))
