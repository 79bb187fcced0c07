"""What a peer may cost us in messages that change nothing: a token bucket, sans-IO.

A flood of cheap, valid messages (Have for a chunk already known or past the last,
Reject for a request never made, a second Bitfield, Pings, Cancels of nothing) costs
the receiver a decode and a look-up each while it changes nothing. Honest peers send
a few of these (races between a Cancel and the Data already on its way, a Have that
crossed our Bitfield request); a flooder sends them by the thousand. Each side of a
connection keeps one :class:`Budget` per peer and spends a token per message that
changed nothing; a peer that runs it dry is dropped (and, by a download, banned for
:data:`FLOOD_BAN`), so the flood costs the flooder its connection, not the victim its
download.

The bucket reads no clock: every call is given ``now``.
"""

from __future__ import annotations

NOOP_BURST = 2000.0
"""Messages that change nothing a peer may send at once. An honest peer's worst burst is
an end game's cancelled requests answered anyway (what the server was already sending:
its write buffer, 4 MiB, charged per 64 KiB, about 64 tokens) or a partial seeder's Haves
racing its Bitfield (a few): 2,000 is far beyond either, and a flooder at 40,000
messages a second spends it in 50 ms."""
NOOP_RATE = 200.0
"""Messages per second that change nothing, allowed for ever: far above honest chatter
(a Ping now and then, a stray Cancel), far below what could slow a download (each
costs microseconds)."""
FLOOD_BAN = 3600.0
"""Seconds a download bans a peer that ran its budget dry: long enough that the flood
is not dialled again this session, short enough that a misconfigured honest peer is
forgiven."""


class Budget:
    """A token bucket of ``burst`` tokens refilled at ``rate`` per second.

    :meth:`spend` takes one token (or ``cost``) and says whether the peer is still
    within its budget. Once it is not, it stays exhausted (:attr:`exhausted`): the
    owner drops the peer, and a later refill does not undo that.
    """

    __slots__ = ("_at", "_tokens", "burst", "exhausted", "rate", "spent")

    def __init__(self, now: float, *, rate: float = NOOP_RATE, burst: float = NOOP_BURST) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = now
        self.exhausted = False
        """The peer overdrew its budget: drop it."""
        self.spent = 0
        """Messages charged so far (for the reason given when the peer is dropped)."""

    def spend(self, now: float, cost: float = 1.0) -> bool:
        """Charge one message that changed nothing; False once the budget is overdrawn."""
        if self.exhausted:
            return False
        self.spent += 1
        if now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
        self._tokens -= cost
        if self._tokens < 0:
            self.exhausted = True
            return False
        return True

    def reason(self) -> str:
        """Why the peer is dropped, for logs, events and bans."""
        return (f"flooding: {self.spent} messages that changed nothing "
                f"(allowed {self.burst:g} at once, {self.rate:g}/s after)")
