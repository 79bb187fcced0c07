"""Bitfields: which chunks of a content are held, one bit per chunk.

The layout is the wire's (the ``Bitfield`` message): bit ``i`` is the bit ``0x80 >> (i % 8)``
of byte ``i // 8`` (most significant bit first), and a bitfield for ``count`` chunks is
:func:`bitfield_size` bytes long with the spare bits of its last byte clear.

Every operation on the bits of a bitfield lives in this module; the rest of the code base
calls these functions instead of shifting and masking bytes itself. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "bit_count",
    "bit_get",
    "bit_indexes",
    "bit_set",
    "bitfield_new",
    "bitfield_of",
    "bitfield_size",
    "bits_beyond",
    "full_bitfield",
]

_SET_IN_BYTE: tuple[tuple[int, ...], ...] = tuple(
    tuple(i for i in range(8) if byte & (0x80 >> i)) for byte in range(256))
"""For each byte value, the positions (0 = most significant) of its set bits."""


def bitfield_size(count: int) -> int:
    """How many bytes a bitfield for ``count`` chunks takes."""
    return (count + 7) // 8


def bitfield_new(count: int) -> bytearray:
    """An all-zero bitfield for ``count`` chunks."""
    return bytearray(bitfield_size(count))


def full_bitfield(count: int) -> bytes:
    """A bitfield with the first ``count`` bits set (and the spare bits clear)."""
    bits = bytearray(b"\xff" * bitfield_size(count))
    if count % 8:
        bits[-1] = (0xFF << (8 - count % 8)) & 0xFF
    return bytes(bits)


def bitfield_of(count: int, indexes: Iterable[int]) -> bytes:
    """A bitfield for ``count`` chunks with bit ``i`` set for each ``i`` in ``indexes``.

    Raises ``IndexError`` for an index outside ``0 <= i < count``.
    """
    bits = bitfield_new(count)
    for index in indexes:
        if not 0 <= index < count:
            raise IndexError(index)
        bit_set(bits, index)
    return bytes(bits)


def bit_get(bits: bytes | bytearray, index: int) -> bool:
    """Whether bit ``index`` is set."""
    return bool(bits[index >> 3] & (0x80 >> (index & 7)))


def bit_set(bits: bytearray, index: int) -> None:
    """Set bit ``index`` (in place)."""
    bits[index >> 3] |= 0x80 >> (index & 7)


def bit_count(bits: bytes | bytearray) -> int:
    """Number of set bits."""
    return int.from_bytes(bits, "big").bit_count()


def bit_indexes(bits: bytes | bytearray, count: int | None = None) -> list[int]:
    """The indexes of the set bits, ascending; only those below ``count`` when it is given.

    Costs one step per byte plus one per set bit, so a map of 100,000 chunks is cheap.
    """
    limit = len(bits) * 8 if count is None else min(count, len(bits) * 8)
    found: list[int] = []
    for byte_index in range(bitfield_size(limit)):
        byte = bits[byte_index]
        if not byte:
            continue
        base = byte_index * 8
        if byte == 0xFF and base + 8 <= limit:
            found.extend(range(base, base + 8))
        else:
            found.extend(base + i for i in _SET_IN_BYTE[byte] if base + i < limit)
    return found


def bits_beyond(bits: bytes | bytearray, count: int) -> bool:
    """Whether any spare bit past the first ``count`` is set in the last byte of ``bits``.

    A well-formed bitfield has them clear; the wire refuses one that does not.
    """
    spare = -count % 8
    return bool(spare and bits and bits[-1] & ((1 << spare) - 1))
