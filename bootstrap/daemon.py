"""``p2p-bootstrap``: a DHT-only node that gives new peers a first contact, run unattended.

Lifecycle: parse settings -> load (or create) the identity -> open the DHT (which restores
and re-verifies the saved routing table) -> serve metrics if asked -> print the start-up
line(s) on stdout -> wait for SIGTERM/SIGINT -> save the table and close everything.
A second signal during shutdown exits at once.

Exit codes (decided in :func:`main`, the only place errors become exit codes):
0 clean shutdown; 2 bad flag or environment variable; 5 network (a port in use, cannot
bind); 1 anything else (an unusable state directory, an unexpected error).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from p2p.dht import DHT, StateFileError
from p2p.dht.state import load_routing_table
from p2p.errors import BadInput, NetworkError, P2PError, StoreError
from p2p.identity import Identity, load_or_create

from . import logs
from .config import PROG, Address, DaemonConfig, UsageError, parse
from .metrics import MetricsServer, build_registry

log = logging.getLogger("bootstrap")

SHUTDOWN_BUDGET = 1.5
"""Seconds shutdown may take (save the table, close the socket) before we stop waiting:
systemd and the tests expect an exit within 2 s of SIGTERM."""
STATUS_INTERVAL = 600.0
"""Seconds between status lines in the log (contacts, RPCs, rejected packets)."""

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NETWORK = 5


class StateDirUnusable(StoreError):
    """The state directory cannot be created, read or written (check its owner and mode)."""


@dataclass(frozen=True)
class Ready:
    """What the daemon announces once it is listening (the first stdout line)."""

    peer_id: str
    node_id: str
    listen: Address
    """The bound UDP address."""
    contact: Address
    """The address to give peers as ``--bootstrap`` (the listen address, or this host's
    primary address when listening on a wildcard)."""
    metrics: Address | None
    restored_contacts: int
    saved_contacts: int


def format_address(addr: Address) -> str:
    """``host:port``, with brackets around an IPv6 host."""
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def contact_address(listen: Address) -> Address:
    """The address peers should use: the listen address unless it is a wildcard, then the
    address this host's default route leaves from (no packet is sent to find it)."""
    host, port = listen
    ip = ipaddress.ip_address(host)
    if not ip.is_unspecified:
        return listen
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    probe = "2001:db8::1" if ip.version == 6 else "192.0.2.1"
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((probe, 9))
            return str(s.getsockname()[0]), port
    except OSError:
        return ("::1" if ip.version == 6 else "127.0.0.1"), port


def print_ready(ready: Ready, fmt: str) -> None:
    """Write the start-up line(s) to stdout and flush: scripts and tests wait for them."""
    listen, contact = format_address(ready.listen), format_address(ready.contact)
    metrics = format_address(ready.metrics) if ready.metrics else None
    if fmt == "json":
        doc = {"event": "listening", "peer_id": ready.peer_id, "node_id": ready.node_id,
               "listen": listen, "bootstrap": contact, "metrics": metrics,
               "restored_contacts": ready.restored_contacts,
               "saved_contacts": ready.saved_contacts}
        lines = [json.dumps(doc)]
    else:
        lines = [f"{PROG} {ready.peer_id} listening on {listen} (use --bootstrap {contact})"]
        if metrics:
            lines.append(f"{PROG} metrics on http://{metrics}/metrics (health: /healthz)")
    sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()


def load_identity(config: DaemonConfig) -> Identity:
    """The daemon's stable identity from its state directory (created on first run)."""
    try:
        identity = load_or_create(config.state_dir)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StateDirUnusable(f"cannot use state directory {config.state_dir}: {reason}") from exc
    if not os.access(config.state_dir, os.W_OK | os.X_OK):
        raise StateDirUnusable(f"state directory {config.state_dir} is not writable")
    return identity


def count_saved_contacts(config: DaemonConfig) -> int:
    """Contacts in the saved routing table (0 if there is none or it is unreadable)."""
    try:
        _node_id, contacts = load_routing_table(config.state_path)
    except FileNotFoundError:
        return 0
    except (StateFileError, OSError) as exc:
        log.warning("saved routing table ignored: %s", exc)
        return 0
    return len(contacts)


class Daemon:
    """One running bootstrap node: the DHT plus the optional metrics server."""

    def __init__(self, config: DaemonConfig, identity: Identity, dht: DHT, saved: int) -> None:
        self.config = config
        self.identity = identity
        self.dht = dht
        self.metrics: MetricsServer | None = None
        self.saved_contacts = saved
        # Saved contacts that answered re-verification in DHT.open.
        self.restored_contacts = int(dht.stats()["restored_contacts"])

    def healthy(self) -> tuple[bool, dict[str, Any]]:
        """(socket open?, details) for ``/healthz``."""
        transport = self.dht.protocol.transport
        ok = (transport is not None and not transport.is_closing()
              and not self.dht.protocol.closed.is_set())
        s = self.dht.stats()
        return ok, {"peer_id": str(self.identity.peer_id),
                    "listen": format_address((self.config.listen[0], self.dht.port)),
                    "contacts": s["contacts"], "records": s["records"],
                    "uptime": round(s["uptime"], 3)}

    async def open_metrics(self) -> None:
        """Serve /metrics and /healthz if configured."""
        if self.config.metrics is None:
            return
        registry = build_registry(self.dht.stats, {"peer_id": str(self.identity.peer_id)},
                                  lambda: self.restored_contacts)
        host, port = self.config.metrics
        self.metrics = await MetricsServer.open(host, port, registry, self.healthy)

    def ready(self) -> Ready:
        """The start-up announcement."""
        listen = (self.config.listen[0], self.dht.port)
        return Ready(peer_id=str(self.identity.peer_id), node_id=self.dht.node_id.hex(),
                     listen=listen, contact=contact_address(listen),
                     metrics=self.metrics.address if self.metrics else None,
                     restored_contacts=self.restored_contacts,
                     saved_contacts=self.saved_contacts)

    def log_status(self) -> None:
        """One status line for the operator's journal."""
        s = self.dht.stats()
        log.info("status: %d contacts, %d RPCs answered, %d packets rejected, %d records",
                 s["contacts"], sum(s["rpcs_received"].values()), sum(s["rejected"].values()),
                 sum(s["records"].values()),
                 extra={"fields": {"contacts": s["contacts"], "rpcs_received": s["rpcs_received"],
                                   "rejected": s["rejected"], "records": s["records"]}})

    async def aclose(self) -> None:
        """Stop the metrics server, save the routing table, close the socket."""
        if self.metrics is not None:
            await self.metrics.aclose()
        await self.dht.aclose()  # saves the table (state_path is set)


async def _until(stop: asyncio.Event, work: Any) -> Any:
    """Run ``work`` unless ``stop`` is set first; then cancel it and return None."""
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
    if task.cancelled() or not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None
    return task.result()


async def run(config: DaemonConfig, on_ready: Callable[[Ready], None] | None = None) -> int:
    """Run the daemon until SIGTERM or SIGINT. Returns the exit code of a clean stop.

    Raises :class:`P2PError` (or ``OSError``) when it cannot start; :func:`main` maps those.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            # The operator insists: no more saving or waiting.
            os._exit(128 + signum)
        log.info("%s received: saving state and shutting down", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        identity = load_identity(config)
        saved = count_saved_contacts(config)
        dht = await _until(stop, DHT.open(identity, config.dht_config()))
        if dht is None:
            return EXIT_OK
        daemon = Daemon(config, identity, dht, saved)
        try:
            await daemon.open_metrics()
            ready = daemon.ready()
            print_ready(ready, config.log_format)
            if on_ready is not None:
                on_ready(ready)
            log.info("peer %s listening on %s", ready.peer_id, format_address(ready.listen))
            if saved:
                log.info("restored %d contacts (%d saved)", daemon.restored_contacts, saved,
                         extra={"fields": {"restored_contacts": daemon.restored_contacts,
                                           "saved_contacts": saved}})
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(STATUS_INTERVAL):
                        await stop.wait()
                if not stop.is_set():
                    daemon.log_status()
        finally:
            try:
                async with asyncio.timeout(SHUTDOWN_BUDGET):
                    await daemon.aclose()
            except TimeoutError:
                log.warning("shutdown took longer than %.1f s; exiting anyway", SHUTDOWN_BUDGET)
        log.info("routing table saved to %s; bye", config.state_path)
        return EXIT_OK
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def exit_code(exc: BaseException) -> int:
    """The one place an error becomes an exit code."""
    if isinstance(exc, BadInput):
        return EXIT_USAGE
    if isinstance(exc, NetworkError):
        return EXIT_NETWORK
    return EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of ``p2p-bootstrap``. Returns the process exit code."""
    try:
        config = parse(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        print(f"{PROG}: error: {exc} (see {PROG} --help)", file=sys.stderr)
        return EXIT_USAGE
    logs.configure(config.log_level, config.log_format)
    try:
        return asyncio.run(run(config))
    except (P2PError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:  # Ctrl-C before the loop installed its handler
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
