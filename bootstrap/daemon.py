"""``p2p-bootstrap``: a node that gives new peers a first contact, run unattended.

It is an ordinary :class:`p2p.Node` with nothing to share (it listens on TCP and
UDP like any peer, so later relay work has its wire), driven only through the
library's public API. Lifecycle: parse settings -> check the state directory ->
start the node (which restores and re-verifies the saved routing table) -> serve
metrics if asked -> print the start-up line(s) on stdout -> wait for
SIGTERM/SIGINT -> save the table and close everything. A second signal during
shutdown exits at once.

Exit codes come from :func:`p2p.exit_code_for`, the map every front end shares:
0 clean shutdown; 2 bad flag or environment variable; 5 network (a port in use,
cannot bind); 6 an unusable state directory; 1 an unexpected error (a bug).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from p2p import (
    EXIT_OK,
    Address,
    Node,
    P2PError,
    StoreError,
    describe,
    exit_code_for,
    format_address,
)

from . import logs
from .config import PROG, DaemonConfig, UsageError, parse
from .metrics import MetricsServer, build_registry

log = logging.getLogger("bootstrap")

SHUTDOWN_BUDGET = 1.5
"""Seconds shutdown may take (save the table, close the socket) before we stop waiting:
systemd and the tests expect an exit within 2 s of SIGTERM."""
STATUS_INTERVAL = 600.0
"""Seconds between status lines in the log (contacts, RPCs, rejected packets)."""

exit_code = exit_code_for
"""The daemon's exit codes are the command line's (one map for every front end)."""


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
    relay: bool = False
    """Whether the daemon relays (reservations and circuits on its TCP port)."""


def contact_address(node: Node) -> Address:
    """The address peers should use: the first of the node's reachable addresses (its listen
    address, or this host's primary address when listening on a wildcard)."""
    found = node.addresses()
    return found[0] if found else node.listen_address()


def print_ready(ready: Ready, fmt: str) -> None:
    """Write the start-up line(s) to stdout and flush: scripts and tests wait for them."""
    listen, contact = format_address(ready.listen), format_address(ready.contact)
    metrics = format_address(ready.metrics) if ready.metrics else None
    if fmt == "json":
        doc = {"event": "listening", "peer_id": ready.peer_id, "node_id": ready.node_id,
               "listen": listen, "bootstrap": contact, "metrics": metrics, "relay": ready.relay,
               "restored_contacts": ready.restored_contacts,
               "saved_contacts": ready.saved_contacts}
        lines = [json.dumps(doc)]
    else:
        lines = [f"{PROG} {ready.peer_id} listening on {listen} (use --bootstrap {contact})"]
        if metrics:
            lines.append(f"{PROG} metrics on http://{metrics}/metrics (health: /healthz)")
    sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()


def check_state_dir(config: DaemonConfig) -> None:
    """Create the state directory and the identity in it, or say clearly why not."""
    try:
        Node.identity_of(config.state_dir)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StateDirUnusable(f"cannot use state directory {config.state_dir}: {reason}") from exc
    if not os.access(config.state_dir, os.W_OK | os.X_OK):
        raise StateDirUnusable(f"state directory {config.state_dir} is not writable")


class Daemon:
    """One running bootstrap node plus the optional metrics server."""

    def __init__(self, config: DaemonConfig, node: Node) -> None:
        self.config = config
        self.node = node
        self.metrics: MetricsServer | None = None
        summary = node.dht_summary()
        self.saved_contacts = summary.saved_contacts
        self.restored_contacts = summary.restored_contacts
        """Saved contacts that answered re-verification when the node started."""

    def healthy(self) -> tuple[bool, dict[str, Any]]:
        """(sockets open?, details) for ``/healthz``."""
        s = self.node.dht_summary()
        return self.node.listening, {
            "peer_id": str(self.node.peer_id),
            "listen": format_address(self.node.listen_address()),
            "contacts": s.contacts, "records": s.records, "uptime": round(s.uptime, 3)}

    async def open_metrics(self) -> None:
        """Serve /metrics and /healthz if configured."""
        if self.config.metrics is None:
            return
        relay = self.node.relay
        registry = build_registry(lambda: self.node.dht_summary().stats,
                                  {"peer_id": str(self.node.peer_id)},
                                  lambda: self.restored_contacts,
                                  None if relay is None else
                                  (relay.stats, dataclasses.asdict(relay.limits)))
        host, port = self.config.metrics
        self.metrics = await MetricsServer.open(host, port, registry, self.healthy)

    def ready(self) -> Ready:
        """The start-up announcement."""
        return Ready(peer_id=str(self.node.peer_id), node_id=self.node.dht_summary().node_id,
                     listen=self.node.listen_address(), contact=contact_address(self.node),
                     metrics=self.metrics.address if self.metrics else None,
                     restored_contacts=self.restored_contacts,
                     saved_contacts=self.saved_contacts, relay=self.node.relay is not None)

    def log_status(self) -> None:
        """One status line for the operator's journal."""
        s = self.node.dht_summary().stats
        log.info("status: %d contacts, %d RPCs answered, %d packets rejected, %d records",
                 s["contacts"], sum(s["rpcs_received"].values()), sum(s["rejected"].values()),
                 sum(s["records"].values()),
                 extra={"fields": {"contacts": s["contacts"], "rpcs_received": s["rpcs_received"],
                                   "rejected": s["rejected"], "records": s["records"]}})

    async def aclose(self) -> None:
        """Stop the metrics server, then the node (which saves the routing table)."""
        if self.metrics is not None:
            await self.metrics.aclose()
        await self.node.aclose()


async def run(config: DaemonConfig, on_ready: Callable[[Ready], None] | None = None) -> int:
    """Run the daemon until SIGTERM or SIGINT. Returns the exit code of a clean stop.

    Raises :class:`P2PError` (or ``OSError``) when it cannot start; :func:`main` maps those.
    """
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    stop = asyncio.Event()
    starting = True
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            # The operator insists: no more saving or waiting.
            os._exit(128 + signum)
        log.info("%s received: saving state and shutting down", signal.Signals(signum).name)
        stop.set()
        if starting:  # still joining: stop joining (the node closes what it opened)
            main.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        check_state_dir(config)
        node = Node(config.node_config())
        try:
            await node.start()
        except asyncio.CancelledError:
            if not stop.is_set():
                raise
            main.uncancel()
            return EXIT_OK
        starting = False
        daemon = Daemon(config, node)
        try:
            await daemon.open_metrics()
            ready = daemon.ready()
            print_ready(ready, config.log_format)
            if on_ready is not None:
                on_ready(ready)
            log.info("peer %s listening on %s", ready.peer_id, format_address(ready.listen))
            if daemon.saved_contacts:
                log.info("restored %d contacts (%d saved)", daemon.restored_contacts,
                         daemon.saved_contacts,
                         extra={"fields": {"restored_contacts": daemon.restored_contacts,
                                           "saved_contacts": daemon.saved_contacts}})
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


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of ``p2p-bootstrap``. Returns the process exit code."""
    try:
        config = parse(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        print(f"{PROG}: error: {exc} (see {PROG} --help)", file=sys.stderr)
        return exit_code(exc)
    logs.configure(config.log_level, config.log_format)
    try:
        return asyncio.run(run(config))
    except (P2PError, OSError) as exc:
        print(f"{PROG}: error: {describe(exc)}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:  # Ctrl-C before the loop installed its handler
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
