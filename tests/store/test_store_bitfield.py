"""Bitfield operations against an independent reading of the layout (bit i is character i of
the bitfield written out in binary, most significant bit first)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.bitfield import (
    bit_count,
    bit_get,
    bit_indexes,
    bit_set,
    bitfield_new,
    bitfield_of,
    bitfield_size,
    bits_beyond,
    full_bitfield,
)


def oracle(bits: bytes | bytearray) -> set[int]:
    """The set bits, read from the binary text of the whole bitfield."""
    text = "".join(f"{byte:08b}" for byte in bits)
    return {i for i, c in enumerate(text) if c == "1"}


@given(st.integers(0, 300), st.sets(st.integers(0, 299)))
def test_setting_bits_one_by_one_agrees_with_the_layout(count: int, picks: set[int]) -> None:
    chosen = {i for i in picks if i < count}
    bits = bitfield_new(count)
    assert len(bits) == bitfield_size(count) == (count + 7) // 8
    for i in chosen:
        bit_set(bits, i)
    assert oracle(bits) == chosen
    assert bit_count(bits) == len(chosen)
    assert all(bit_get(bits, i) == (i in chosen) for i in range(count))
    assert bit_indexes(bits) == bit_indexes(bits, count) == sorted(chosen)
    assert bitfield_of(count, chosen) == bytes(bits)
    assert not bits_beyond(bits, count)


@given(st.integers(0, 300))
def test_a_full_bitfield_sets_exactly_the_first_count_bits(count: int) -> None:
    bits = full_bitfield(count)
    assert len(bits) == bitfield_size(count)
    assert oracle(bits) == set(range(count))
    assert bit_indexes(bits) == list(range(count))
    assert bit_count(bits) == count
    assert not bits_beyond(bits, count)


@given(st.binary(max_size=40), st.data())
def test_indexes_below_a_count_and_spare_bits(raw: bytes, data: st.DataObject) -> None:
    count = data.draw(st.integers(0, len(raw) * 8 + 10))
    assert bit_indexes(raw, count) == sorted(i for i in oracle(raw) if i < count)
    if bitfield_size(count) == len(raw):
        assert bits_beyond(raw, count) == any(i >= count for i in oracle(raw))


def test_a_map_of_a_hundred_thousand_chunks() -> None:
    count = 100_003
    held = set(range(0, count, 3)) | set(range(40_000, 60_000))
    bits = bitfield_of(count, held)
    assert bit_indexes(bits, count) == sorted(held)
    assert bit_count(bits) == len(held)


def test_an_index_outside_the_count_is_refused() -> None:
    with pytest.raises(IndexError):
        bitfield_of(8, [8])
    with pytest.raises(IndexError):
        bitfield_of(8, [-1])
