"""Prometheus metrics and a health check over a tiny asyncio HTTP server.

The collector reads the node's DHT summary (``Node.dht_summary().stats``) at scrape time (no background task keeps numbers up to
date) and lives in a dedicated :class:`CollectorRegistry`, never the process-global one.
The HTTP server answers ``GET /metrics`` and ``GET /healthz``, one request per connection;
it runs on the daemon's event loop, so nothing is left running after :meth:`aclose`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from p2p import NetworkError

log = logging.getLogger(__name__)

NAMESPACE = "p2p_bootstrap"
MAX_REQUEST_HEAD = 8192
"""Bytes of request line and headers read before the request is refused (we take no bodies)."""
REQUEST_TIMEOUT = 5.0
"""Seconds a client may take to send its request head."""
MAX_CONNECTIONS = 32
"""HTTP connections handled at once; more are closed at once (a scraper needs one)."""

Stats = Callable[[], dict[str, Any]]


class DHTCollector(Collector):
    """Turns one DHT summary snapshot into metric families at each scrape."""

    def __init__(self, stats: Stats, info: dict[str, str], restored: Callable[[], int]) -> None:
        self._stats = stats
        self._info = info
        self._restored = restored

    def collect(self) -> Iterator[Metric]:
        """Called by the registry for every scrape."""
        s = self._stats()
        info = GaugeMetricFamily(f"{NAMESPACE}_info", "Identity of this bootstrap node.",
                                 labels=sorted(self._info))
        info.add_metric([self._info[k] for k in sorted(self._info)], 1.0)
        yield info
        yield GaugeMetricFamily(f"{NAMESPACE}_uptime_seconds",
                                "Seconds since the DHT socket was opened.", value=s["uptime"])
        yield GaugeMetricFamily(f"{NAMESPACE}_routing_table_contacts",
                                "Verified contacts in the routing table.", value=s["contacts"])
        yield GaugeMetricFamily(f"{NAMESPACE}_routing_table_buckets",
                                "Buckets in the routing table.", value=s["buckets"])
        yield GaugeMetricFamily(f"{NAMESPACE}_restored_contacts",
                                "Saved contacts that answered re-verification at start.",
                                value=self._restored())
        records = GaugeMetricFamily(f"{NAMESPACE}_records", "DHT records held, by kind.",
                                    labels=["kind"])
        for kind, n in sorted(s["records"].items()):
            records.add_metric([kind], n)
        yield records
        yield _labelled(CounterMetricFamily, "rpcs_received", "RPCs answered, by type.", "rpc",
                        s["rpcs_received"])
        yield _labelled(CounterMetricFamily, "rpcs_sent", "RPCs sent, by type.", "rpc",
                        s["rpcs_sent"])
        yield _labelled(CounterMetricFamily, "packets_rejected",
                        "Inbound datagrams or records refused, by reason.", "reason",
                        s["rejected"])
        yield _labelled(CounterMetricFamily, "events", "Notable DHT events, by kind.", "event",
                        s["events"])
        yield GaugeMetricFamily(f"{NAMESPACE}_outstanding_requests",
                                "Requests waiting for an answer.", value=s["outstanding"])
        yield CounterMetricFamily(f"{NAMESPACE}_lookups", "Lookups run by this node.",
                                  value=s["lookups"])
        yield CounterMetricFamily(f"{NAMESPACE}_contacts_refused_ip_cap",
                                  "Contacts refused because their IP holds too many.",
                                  value=s["refused_ip_cap"])


class RelayCollector(Collector):
    """The relay's reservations, circuits, refusals, bytes and limits at each scrape."""

    def __init__(self, stats: Stats, limits: dict[str, float]) -> None:
        self._stats = stats
        self._limits = limits

    def collect(self) -> Iterator[Metric]:
        """Called by the registry for every scrape."""
        s = self._stats()
        yield GaugeMetricFamily(f"{NAMESPACE}_relay_reservations",
                                "Relay reservations held.", value=s["reservations"])
        yield GaugeMetricFamily(f"{NAMESPACE}_relay_circuits", "Relay circuits open.",
                                value=s["circuits"])
        yield GaugeMetricFamily(f"{NAMESPACE}_relay_circuits_pending",
                                "Relay circuits waiting for their target to accept.",
                                value=s["pending"])
        yield CounterMetricFamily(f"{NAMESPACE}_relay_circuits_opened",
                                  "Relay circuits opened.", value=s["circuits_opened"])
        yield _labelled(CounterMetricFamily, "relay_circuits_closed",
                        "Relay circuits ended, by why (closed, bytes, duration, failed).",
                        "reason", s["circuits_closed"])
        yield _labelled(CounterMetricFamily, "relay_refused",
                        "Relay requests refused, by code.", "code", s["refused"])
        yield CounterMetricFamily(f"{NAMESPACE}_relay_bytes", "Bytes spliced by the relay.",
                                  value=s["bytes_relayed"])
        limits = GaugeMetricFamily(f"{NAMESPACE}_relay_limit",
                                   "The relay's configured limits (0: none).", labels=["limit"])
        for name, value in sorted(self._limits.items()):
            limits.add_metric([name], value)
        yield limits


def _labelled(cls: type[CounterMetricFamily], name: str, doc: str, label: str,
              values: dict[str, int]) -> Metric:
    family = cls(f"{NAMESPACE}_{name}", doc, labels=[label])
    for key, n in sorted(values.items()):
        family.add_metric([key], n)
    return family


def build_registry(stats: Stats, info: dict[str, str], restored: Callable[[], int],
                   relay: tuple[Stats, dict[str, float]] | None = None) -> CollectorRegistry:
    """A fresh registry holding the DHT collector, the relay's (``relay``: its stats and its
    limits, when the daemon relays) and this process's CPU/memory metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DHTCollector(stats, info, restored))
    if relay is not None:
        registry.register(RelayCollector(*relay))
    ProcessCollector(namespace=NAMESPACE, registry=registry)
    return registry


class MetricsServer:
    """``GET /metrics`` (Prometheus text format) and ``GET /healthz`` (JSON) on one TCP port.

    Open with :meth:`open`; it is listening on return. :meth:`aclose` stops it and every
    connection it is serving; idempotent.
    """

    def __init__(self, registry: CollectorRegistry, health: Callable[[], tuple[bool, dict[str, Any]]]) -> None:
        self._registry = registry
        self._health = health
        self._server: asyncio.Server | None = None
        self._active: set[asyncio.Task[Any]] = set()

    @classmethod
    async def open(cls, host: str, port: int, registry: CollectorRegistry,
                   health: Callable[[], tuple[bool, dict[str, Any]]]) -> MetricsServer:
        """Listen on ``host:port``. Raises :class:`NetworkError` if it cannot bind."""
        self = cls(registry, health)
        try:
            self._server = await asyncio.start_server(self._handle, host, port,
                                                      limit=MAX_REQUEST_HEAD)
        except OSError as exc:
            raise NetworkError(f"cannot bind metrics port {host}:{port}: {exc}") from exc
        return self

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def aclose(self) -> None:
        """Stop listening and end the connections being served. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._active):
            task.cancel()
        if self._active:
            await asyncio.gather(*self._active, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._active) >= MAX_CONNECTIONS:
            writer.close()
            return
        self._active.add(task)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                status, ctype, body = await self._respond(reader)
                head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
                writer.write(head.encode("ascii") + body)
                await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.LimitOverrunError, asyncio.IncompleteReadError):
            pass
        finally:
            self._active.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[str, str, bytes]:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            return "431 Request Header Fields Too Large", "text/plain", b"request head too large\n"
        except asyncio.IncompleteReadError:
            raise
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return "400 Bad Request", "text/plain", b"bad request\n"
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method != b"GET":
            return "405 Method Not Allowed", "text/plain", b"only GET\n"
        if target == b"/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self._registry)
        if target == b"/healthz":
            ok, details = self._health()
            body = json.dumps({"status": "ok" if ok else "down", **details}).encode() + b"\n"
            return ("200 OK" if ok else "503 Service Unavailable"), "application/json", body
        return "404 Not Found", "text/plain", b"not found: try /metrics or /healthz\n"
