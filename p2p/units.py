"""Numbers as people read them, shared by the command line and the terminal app."""

from __future__ import annotations

import re


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def human_rate(rate: float) -> str:
    """Bytes per second as text ('-' when idle)."""
    return "-" if rate <= 0 else human_bytes(rate) + "/s"


def human_seconds(s: float | None) -> str:
    """A duration or ETA: '1h02m', '1m05s', '12s', or '?' when unknown."""
    if s is None or s != s or s == float("inf"):
        return "?"
    whole = int(s + 0.5)
    if whole >= 3600:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 60}m{whole % 60:02d}s" if whole >= 60 else f"{whole}s"


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 chunk', '2 chunks'."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


_RATE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*(?:/\s*s)?\s*", re.IGNORECASE)
MAX_RATE = 1 << 50
"""The largest rate accepted (1 PiB/s): anything above is a typo, and no link is that fast."""


def parse_rate(text: str, what: str = "rate") -> float:
    """A bandwidth limit as typed -> bytes per second; 0 means no limit.

    ``5MiB/s``, ``500KiB/s``, ``1.5M``, ``64k``, ``1G/s`` or a plain number of bytes per
    second; ``K``, ``M``, ``G``, ``T`` are powers of 1024 (``KB``, ``KiB`` the same), and
    ``/s`` may be left out. ``0``, ``none`` and ``unlimited`` are no limit. Raises
    :class:`~p2p.errors.BadInput` naming ``what`` for anything else.
    """
    from .errors import BadInput  # here: units is imported by everything, errors by it

    value = text.strip() if isinstance(text, str) else str(text)
    if value.lower() in ("none", "unlimited", "off"):
        return 0.0
    match = _RATE.fullmatch(value)
    if match is None:
        raise BadInput(f"{what}: expected a rate such as 5MiB/s, 500KiB/s or 0 (no limit), "
                       f"got {text!r}")
    rate = float(match.group(1)) * 1024 ** " kmgt".index(match.group(2).lower() or " ")
    if rate > MAX_RATE:
        raise BadInput(f"{what}: {text!r} is more than 1 PiB/s; 0 means no limit")
    return float(int(rate))


def format_rate(rate: float) -> str:
    """A limit as text: '5.0 MiB/s', or 'unlimited' for 0."""
    return "unlimited" if rate <= 0 else human_bytes(rate) + "/s"
