"""Bandwidth limits: token buckets on the bytes a connection really moves.

A :class:`RateLimit` is the sans-IO part: a token bucket of ``rate`` bytes per second
whose balance may go below zero (bytes are charged when they move, and a socket read
cannot be taken back), plus the queue of parties waiting for the balance to come back.
It reads no clock: every call is given ``now``. :class:`Throttle` is its asyncio shell
(one timer on the event loop); :class:`Bandwidth` is a node's pair of them, one for
each direction, shared by every connection of the node.

How a connection uses one (:mod:`p2p.wire.transport`):

* writing: before it hands a piece of ciphertext to the socket it asks
  :meth:`Throttle.allows`; while the balance is below zero it waits
  (:meth:`Throttle.wait`), else it writes and charges the piece (:meth:`Throttle.charge`);
* reading: it charges what a read brought; a read that took the balance below zero
  pauses the socket until the balance is back (TCP flow control then slows the peer).

Fairness: whoever takes the balance below zero waits, and when the balance is back
every waiter is woken together, each moving one :attr:`RateLimit.quantum` of bytes
(over as many queued pieces as that takes) before it waits again. Each connection moving
through one limit thus gets the same bytes per round, whatever the order they came in and
whatever the sizes of its pieces: two transfers under one limit share it evenly (per
connection) instead of the first starving the second.

The burst: the balance never grows above :attr:`RateLimit.burst`, one second of the
rate (:data:`BURST_SECONDS`), so an idle link cannot save up more than that.

A rate of 0 is no limit: the connection then does not touch the bucket at all (one
attribute test per 128 KiB piece or per socket read).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["BURST_SECONDS", "MAX_QUANTUM", "MIN_QUANTUM", "Bandwidth", "RateLimit", "Throttle"]

BURST_SECONDS = 1.0
"""How much of the rate an idle limit lets through at once: one second's worth. A
transfer that starts after a pause may go faster than the rate for about a second, never
longer."""
MAX_QUANTUM = 128 * 1024
"""Most bytes one connection moves per turn through a limit (a write piece, a read): the
wire's write piece, so a fast limited link costs as many system calls as an unlimited one."""
MIN_QUANTUM = 4 * 1024
"""Fewest bytes per turn, whatever the rate: smaller turns would cost a wake-up per few
hundred bytes for nothing (the rate holds on average either way)."""
QUANTUM_SECONDS = 0.02
"""A turn is at most this much of the rate (at 1 MiB/s, 20 KiB): with several connections
waiting, each gets its turn often enough that none stalls for long, and the bytes in one
turn stay a small fraction of the one-second burst."""


class RateLimit:
    """A token bucket of ``rate`` bytes per second, at most :attr:`burst` saved up, that may
    be overdrawn, and the FIFO of waiters for it (sans-IO: every call takes ``now``).

    ``rate`` 0 is no limit: :meth:`allows` is always true and :meth:`due` hands back
    every waiter at once.
    """

    __slots__ = ("_at", "_tokens", "_waiting", "burst", "last", "rate", "spent", "started",
                 "waits")

    def __init__(self, now: float, rate: float = 0.0) -> None:
        self.rate = 0.0
        self.burst = 0.0
        self._tokens = 0.0
        self._at = now
        self._waiting: collections.OrderedDict[Hashable, None] = collections.OrderedDict()
        self.spent = 0
        """Bytes charged so far, at any rate (the accounting tests and ``p2p limit`` read)."""
        self.started: float | None = None
        """When the first byte was charged under a limit (None: never limited)."""
        self.last: float | None = None
        """When bytes were last charged under a limit."""
        self.waits = 0
        """How many times a party had to wait (0: the limit never held anything back)."""
        self.set_rate(now, rate)

    @property
    def quantum(self) -> int:
        """Most bytes to move in one turn (:data:`QUANTUM_SECONDS` of the rate, clamped)."""
        if self.rate <= 0:
            return MAX_QUANTUM
        return int(min(MAX_QUANTUM, max(MIN_QUANTUM, self.rate * QUANTUM_SECONDS)))

    def set_rate(self, now: float, rate: float) -> None:
        """Change the rate from ``now`` on (0: no limit). What was saved up at the old rate is
        kept, up to the new burst; a debt is kept too (those bytes did move)."""
        if not rate >= 0 or rate == float("inf"):
            raise ValueError(f"a rate is a finite number of bytes per second >= 0, got {rate!r}")
        self._refill(now)
        self.rate = float(rate)
        self.burst = self.rate * BURST_SECONDS
        if self.rate == 0:
            self._tokens = 0.0
        else:
            self._tokens = min(self._tokens, self.burst)

    def _refill(self, now: float) -> None:
        if now > self._at:
            if self.rate > 0:
                self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now

    def balance(self, now: float) -> float:
        """Bytes that may move now (negative: owed)."""
        self._refill(now)
        return self._tokens

    def allows(self, now: float) -> bool:
        """Whether bytes may move now: no limit, or a balance of zero or more."""
        return self.rate <= 0 or self.balance(now) >= 0

    def spend(self, now: float, nbytes: int) -> bool:
        """Charge ``nbytes`` that moved (or are about to); False when the balance is now below
        zero (the caller waits before it moves more)."""
        self.spent += nbytes
        if self.rate <= 0:
            return True
        if self.started is None:
            self.started = now
        self.last = now
        self._refill(now)
        self._tokens -= nbytes
        return self._tokens >= 0

    def wait(self, waiter: Hashable) -> None:
        """Queue ``waiter`` for the next turn (once: waiting again keeps its place)."""
        if waiter not in self._waiting:
            self._waiting[waiter] = None
            self.waits += 1

    def discard(self, waiter: Hashable) -> None:
        """Forget ``waiter`` (its connection is gone)."""
        self._waiting.pop(waiter, None)

    def clear(self) -> None:
        """Forget every waiter."""
        self._waiting.clear()

    @property
    def waiting(self) -> int:
        """Parties waiting for a turn."""
        return len(self._waiting)

    def due(self, now: float) -> list[Any]:
        """The waiters whose turn it is now, in the order they came (every one of them, once
        the balance is back to zero or more); they leave the queue."""
        if not self._waiting or not self.allows(now):
            return []
        woken = list(self._waiting)
        self._waiting.clear()
        return woken

    def next_deadline(self, now: float) -> float | None:
        """When the waiters' turn comes (None: nobody waits, or it is now)."""
        if not self._waiting or self.rate <= 0:
            return None
        owed = -self.balance(now)
        return None if owed <= 0 else now + owed / self.rate


class Throttle:
    """A :class:`RateLimit` on the event loop: waiters are callbacks, called when their turn
    comes (by one timer, armed only while someone waits).

    ``clock`` gives the time in seconds (default: the running loop's clock). A callback is
    called at most once per :meth:`wait`; a party that still has bytes to move waits again.
    """

    def __init__(self, rate: float = 0.0, *, clock: Callable[[], float] | None = None,
                 name: str = "") -> None:
        self._clock = clock
        self.name = name
        self.limit = RateLimit(self._now(), rate)
        self._timer: asyncio.TimerHandle | None = None

    def _now(self) -> float:
        if self._clock is not None:
            return self._clock()
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:  # built before the loop runs (a config object): any origin will do
            return 0.0

    @property
    def rate(self) -> float:
        """Bytes per second; 0 is no limit."""
        return self.limit.rate

    @property
    def quantum(self) -> int:
        """Most bytes to move in one turn."""
        return self.limit.quantum

    def set_rate(self, rate: float) -> None:
        """Change the rate now (0: no limit); waiters whose turn it now is are woken."""
        self.limit.set_rate(self._now(), rate)
        self._schedule()

    def allows(self) -> bool:
        """Whether bytes may move now."""
        return self.limit.rate <= 0 or self.limit.allows(self._now())

    def charge(self, nbytes: int) -> bool:
        """Charge ``nbytes`` that moved; False: the balance is below zero, wait before more."""
        return self.limit.spend(self._now(), nbytes)

    def wait(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from the event loop) when the next turn comes."""
        self.limit.wait(callback)
        self._schedule()

    def discard(self, callback: Callable[[], None]) -> None:
        """Forget a waiting callback (its connection is gone)."""
        self.limit.discard(callback)

    def _schedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.limit.waiting:
            return
        loop = asyncio.get_running_loop()
        now = self._now()
        deadline = self.limit.next_deadline(now)
        delay = 0.0 if deadline is None else deadline - now
        self._timer = loop.call_at(loop.time() + delay, self._turn)

    def _turn(self) -> None:
        self._timer = None
        for callback in self.limit.due(self._now()):
            callback()
        self._schedule()

    def close(self) -> None:
        """Stop the timer; waiters are forgotten (their connections are closing)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.limit.clear()

    def to_json(self) -> dict[str, Any]:
        """The limit as ``p2p limit --json`` shows it."""
        return {"rate": self.limit.rate, "burst": self.limit.burst, "bytes": self.limit.spent,
                "waiting": self.limit.waiting}


class Bandwidth:
    """A node's limits: one :class:`Throttle` for what it sends, one for what it receives,
    over every peer connection (handshakes and encryption overhead included)."""

    def __init__(self, up: float = 0.0, down: float = 0.0, *,
                 clock: Callable[[], float] | None = None) -> None:
        self.up = Throttle(up, clock=clock, name="upload")
        """Bytes sent to peers."""
        self.down = Throttle(down, clock=clock, name="download")
        """Bytes received from peers."""

    def close(self) -> None:
        """Stop both timers."""
        self.up.close()
        self.down.close()
