"""When the DHT's periodic work is due. Pure: no I/O, no clock; time is a parameter."""

from __future__ import annotations

from collections.abc import Mapping

SAVE = "save"
"""Write the routing table to its state file."""
EXPIRE = "expire"
"""Drop expired records held for others."""
REFRESH = "refresh"
"""Look up a random id in every bucket nobody looked up for a refresh interval."""
REANNOUNCE = "reannounce"
"""Announce the provided content and the peer record again."""


class Schedule:
    """Periodic jobs, each due every ``period`` seconds (monotonic), starting one period from now.

    The DHT sleeps until :meth:`next_deadline`, then runs what :meth:`due` returns; a test
    calls :meth:`due` (through ``DHT.handle_timer``) with a fake clock.
    """

    def __init__(self, now: float, periods: Mapping[str, float]) -> None:
        if not periods or min(periods.values()) <= 0:
            raise ValueError("every job needs a period > 0")
        self._periods = dict(periods)
        self._next = {job: now + period for job, period in periods.items()}

    def next_deadline(self) -> float:
        """When the next job is due."""
        return min(self._next.values())

    def due(self, now: float) -> list[str]:
        """The jobs due at ``now``, in the order the periods were given; each is re-armed one
        period after ``now`` (a late run does not cause a burst of catch-up runs)."""
        jobs = [job for job, at in self._next.items() if at <= now]
        for job in jobs:
            self._next[job] = now + self._periods[job]
        return jobs
