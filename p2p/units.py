"""Numbers as people read them, shared by the command line and the terminal app."""

from __future__ import annotations


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
