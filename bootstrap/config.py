"""The daemon's settings: a frozen dataclass built from flags, environment variables and the
config file's ``[daemon]`` table.

Precedence: a command-line option wins over its environment variable, which wins over the
config file (``p2p config path``; ``P2P_CONFIG`` names another), which wins over the
default. Nothing here opens a socket; only the config file is read.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import platformdirs

from p2p import (
    DAEMON_SECTION,
    DEFAULT_PORT,
    Address,
    BadInput,
    ConfigFile,
    NodeConfig,
    RelayLimits,
    Settings,
    config_path,
    load_config,
    parse_address,
    parse_rate,
    pick_setting,
)

PROG = "p2p-bootstrap"
APP_DIR = "p2p-bootstrap"
STATE_FILE = "routing.json"
"""The routing table inside the state directory (the node's JSON format)."""

DEFAULT_MAX_CONTACTS_PER_IP = NodeConfig.max_contacts_per_ip
DEFAULT_RATE_LIMIT_PER_IP = NodeConfig.dht_rate_limit_per_ip
DEFAULT_RATE_LIMIT_BURST = NodeConfig.dht_rate_limit_burst
DEFAULT_SAVE_INTERVAL = NodeConfig.dht_save_interval
DEFAULT_RELAY_LIMITS = RelayLimits()
RELAY_COUNTS = ("max_reservations", "max_reservations_per_ip", "max_circuits",
                "max_circuits_per_peer", "max_circuits_per_ip", "reservation_ttl")
"""The relay's limits that are positive counts (flags ``--relay-max-circuits`` ...)."""
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")

ENV_PREFIX = "P2P_BOOTSTRAP_"
"""Every option ``--some-name`` can also be given as ``P2P_BOOTSTRAP_SOME_NAME``."""


class UsageError(BadInput):
    """A flag or environment variable is malformed. The message names which one and why."""


@dataclass(frozen=True)
class DaemonConfig:
    """Everything the daemon needs, built by :func:`parse` (CLI) or directly (tests)."""

    listen: Address
    """UDP address the DHT binds (a literal IP; port 0 lets the system choose)."""
    state_dir: Path
    """Identity key and saved routing table live here."""
    metrics: Address | None = None
    """Where ``/metrics`` and ``/healthz`` are served over HTTP; None = not served."""
    bootstrap: tuple[Address, ...] = ()
    """Other bootstrap daemons (or any peers) to join on start; usually empty."""
    log_level: str = "info"
    """One of :data:`LOG_LEVELS`."""
    log_format: str = "text"
    """``text`` for people, ``json`` (one object per line) for log collectors."""
    max_contacts_per_ip: int | None = DEFAULT_MAX_CONTACTS_PER_IP
    """Routing-table contacts per IP address; None lifts the cap (many peers on one host)."""
    rate_limit_per_ip: float | None = DEFAULT_RATE_LIMIT_PER_IP
    """Inbound datagrams per second from one IP; None = unlimited."""
    rate_limit_burst: float = DEFAULT_RATE_LIMIT_BURST
    """Datagrams one IP may send in a burst before the rate applies."""
    save_interval: float = DEFAULT_SAVE_INTERVAL
    """Seconds between routing-table saves while running (it is also saved on shutdown)."""
    observer: Address | None = None
    """A second address or port of this host (UDP) that tells peers where it sees them, and the
    address the second dial-back comes from: with it, peers of a network with this daemon as
    its only bootstrap learn their NAT's kind (docs/PROTOCOL.md, Reachability)."""
    relay: bool = True
    """Relay for peers others cannot reach (reservations and circuits on the TCP port of
    ``listen``; docs/PROTOCOL.md, Relays)."""
    relay_limits: RelayLimits = DEFAULT_RELAY_LIMITS
    """What the relay gives: reservations, circuits, per peer and IP, time, bytes, rate."""

    @property
    def state_path(self) -> Path:
        """The saved routing table."""
        return self.state_dir / STATE_FILE

    def node_config(self) -> NodeConfig:
        """The node this daemon runs: the shared settings builder's, with the daemon's limits.

        Nothing is shared, so nothing is announced; the node only answers the DHT.
        """
        settings = Settings(state_dir=self.state_dir, listen=self.listen, listen_given=True,
                            bootstrap=self.bootstrap, announce=(), download_dir=self.state_dir)
        return dataclasses.replace(
            settings.node_config(long_running=True),
            max_contacts_per_ip=self.max_contacts_per_ip,
            dht_rate_limit_per_ip=self.rate_limit_per_ip,
            dht_rate_limit_burst=self.rate_limit_burst,
            dht_save_interval=self.save_interval,
            agent=f"{PROG}/0.1",
            dht_mode="server",
            dht_observer=self.observer,
            relay=self.relay,
            relay_limits=self.relay_limits,
        )


def _address(text: str, what: str, *, literal: bool = True) -> Address:
    """``HOST:PORT`` or ``[V6]:PORT`` through the one address parser; ``literal`` demands an IP."""
    try:
        return parse_address(text, what=what, resolve=not literal)
    except BadInput as exc:
        raise UsageError(f"{what}: {exc}") from None


def _optional_int(text: str, what: str) -> int | None:
    if text.strip().lower() in ("none", "unlimited", "off"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{what}: expected a positive integer or 'none', got {text!r}") from None
    if value < 1:
        raise UsageError(f"{what}: expected a positive integer or 'none', got {text!r}")
    return value


def _optional_float(text: str, what: str) -> float | None:
    if text.strip().lower() in ("none", "unlimited", "off"):
        return None
    return _positive_float(text, what)


def _positive_float(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{what}: expected a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise UsageError(f"{what}: expected a positive number, got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _parser() -> _Parser:
    p = _Parser(
        prog=PROG,
        description="Headless DHT bootstrap node: a stable first contact for new peers. "
        f"Every option can also be set with an environment variable {ENV_PREFIX}<OPTION> "
        "(e.g. P2P_BOOTSTRAP_LISTEN); the option wins.",
    )
    p.add_argument("--listen", metavar="HOST:PORT",
                   help=f"UDP address to listen on (default 0.0.0.0:{DEFAULT_PORT})")
    p.add_argument("--state-dir", metavar="DIR",
                   help="identity key and routing table (default: the user data dir "
                   f"{platformdirs.user_data_dir(APP_DIR)})")
    p.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus /metrics and /healthz over HTTP here (default: off)")
    p.add_argument("--bootstrap", metavar="HOST:PORT", action="append",
                   help="another node to join on start (repeatable; default: none)")
    p.add_argument("--log-level", choices=LOG_LEVELS, type=str.lower, help="default info")
    p.add_argument("--log-format", choices=LOG_FORMATS, type=str.lower, help="default text")
    p.add_argument("--max-contacts-per-ip", metavar="N|none",
                   help=f"routing-table contacts per IP (default {DEFAULT_MAX_CONTACTS_PER_IP})")
    p.add_argument("--rate-limit-per-ip", metavar="N|none",
                   help="datagrams per second accepted from one IP "
                   f"(default {DEFAULT_RATE_LIMIT_PER_IP:g})")
    p.add_argument("--rate-limit-burst", metavar="N",
                   help=f"datagram burst allowed from one IP (default {DEFAULT_RATE_LIMIT_BURST:g})")
    p.add_argument("--save-interval", metavar="SECONDS",
                   help=f"seconds between routing-table saves (default {DEFAULT_SAVE_INTERVAL:g})")
    p.add_argument("--observer", metavar="HOST:PORT",
                   help="a second address or port (UDP) that tells peers where it sees them; "
                   "dial-backs also come from its address (default: off)")
    relay = p.add_argument_group("relay", "the relay for peers others cannot reach (on by default)")
    relay.add_argument("--no-relay", action="store_true",
                       help="do not relay (also P2P_BOOTSTRAP_RELAY=off, relay = false)")
    limits = DEFAULT_RELAY_LIMITS
    for name, doc in (("max_reservations", "reservations held at once"),
                      ("max_reservations_per_ip", "reservations from one IP (an IPv6 /64)"),
                      ("max_circuits", "circuits open at once"),
                      ("max_circuits_per_peer", "circuits one peer takes part in"),
                      ("max_circuits_per_ip", "circuits dialled from one IP"),
                      ("reservation_ttl", "seconds a reservation lasts unless refreshed")):
        relay.add_argument(f"--relay-{name.replace('_', '-')}", metavar="N",
                           help=f"{doc} (default {getattr(limits, name)})")
    relay.add_argument("--relay-circuit-seconds", metavar="SECONDS",
                       help=f"longest a circuit lasts; 0: no limit (default {limits.circuit_seconds})")
    relay.add_argument("--relay-circuit-bytes", metavar="SIZE",
                       help="bytes one circuit carries, both ways (4GiB, 512MiB; 0: no limit; "
                       "default 4GiB)")
    relay.add_argument("--relay-rate", metavar="RATE",
                       help="bytes per second relayed over every circuit together "
                       "(5MiB/s; default 0: no limit)")
    return p


def _relay_limits(get: Callable[[str], str | None]) -> RelayLimits:
    """The relay's limits from flags, environment and the config file (over the defaults)."""
    changes: dict[str, int | float] = {}
    for name in RELAY_COUNTS:
        text = get(f"relay_{name}")
        if text is not None:
            changes[name] = _count(text, f"--relay-{name.replace('_', '-')}")
    text = get("relay_circuit_seconds")
    if text is not None:
        changes["circuit_seconds"] = _count(text, "--relay-circuit-seconds", zero=True)
    for name, flag_name in (("circuit_bytes", "--relay-circuit-bytes"), ("rate", "--relay-rate")):
        text = get(f"relay_{name}")
        if text is not None:
            try:
                value = parse_rate(text, flag_name)
            except BadInput as exc:
                raise UsageError(str(exc)) from None
            changes[name] = int(value) if name == "circuit_bytes" else value
    return dataclasses.replace(DEFAULT_RELAY_LIMITS, **changes)  # type: ignore[arg-type]


def _count(text: str, what: str, *, zero: bool = False) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{what}: expected a whole number, got {text!r}") from None
    if value < (0 if zero else 1):
        raise UsageError(f"{what}: expected a {'whole number' if zero else 'positive integer'}, "
                         f"got {text!r}")
    return value


def _switch(text: str, what: str) -> bool:
    value = text.strip().lower()
    if value in ("on", "true", "yes", "1"):
        return True
    if value in ("off", "false", "no", "0"):
        return False
    raise UsageError(f"{what}: expected on or off, got {text!r}")


def parse(argv: Sequence[str], environ: Mapping[str, str] | None = None,
          config: ConfigFile | None = None) -> DaemonConfig:
    """Build the configuration from ``argv`` (without the program name), ``environ`` and the
    config file's ``[daemon]`` table (``config``; None reads the file ``environ`` names).

    Raises :class:`UsageError` with a one-line reason.
    """
    env = os.environ if environ is None else environ
    ns = _parser().parse_args(list(argv))
    if config is None:
        try:
            config = load_config(config_path(env))
        except UsageError:
            raise
        except BadInput as exc:
            raise UsageError(str(exc)) from None

    def get(name: str) -> str | None:
        # The front ends' one rule (p2p.pick_setting): flag, then variable, then the file's
        # [daemon] table, then the default.
        flag = getattr(ns, name)
        return pick_setting(None if flag is None else str(flag), ENV_PREFIX + name.upper(),
                            env, config, f"{DAEMON_SECTION}.{name}")[0]

    def flag(name: str) -> str:
        return f"--{name.replace('_', '-')}"

    listen = _address(get("listen") or f"0.0.0.0:{DEFAULT_PORT}", flag("listen"))
    state_dir = Path(get("state_dir") or platformdirs.user_data_dir(APP_DIR)).expanduser()
    metrics_text = get("metrics")
    metrics = _address(metrics_text, flag("metrics")) if metrics_text else None
    boot_items: list[str] = list(ns.bootstrap or [])
    if not boot_items and env.get(ENV_PREFIX + "BOOTSTRAP"):
        boot_items = [s for s in env[ENV_PREFIX + "BOOTSTRAP"].replace(",", " ").split() if s]
    if not boot_items:
        boot_items = config.items(f"{DAEMON_SECTION}.bootstrap")
    bootstrap = tuple(_address(b, flag("bootstrap"), literal=False) for b in boot_items)
    log_level = (get("log_level") or "info").lower()
    if log_level not in LOG_LEVELS:
        raise UsageError(f"--log-level: expected one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    log_format = (get("log_format") or "text").lower()
    if log_format not in LOG_FORMATS:
        raise UsageError(f"--log-format: expected one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    text = get("max_contacts_per_ip")
    max_contacts = (_optional_int(text, flag("max_contacts_per_ip")) if text is not None
                    else DEFAULT_MAX_CONTACTS_PER_IP)
    text = get("rate_limit_per_ip")
    rate = (_optional_float(text, flag("rate_limit_per_ip")) if text is not None
            else DEFAULT_RATE_LIMIT_PER_IP)
    text = get("rate_limit_burst")
    burst = (_positive_float(text, flag("rate_limit_burst")) if text is not None
             else DEFAULT_RATE_LIMIT_BURST)
    if burst < 1:
        raise UsageError(f"--rate-limit-burst: must be >= 1, got {burst:g}")
    text = get("save_interval")
    save_interval = (_positive_float(text, flag("save_interval")) if text is not None
                     else DEFAULT_SAVE_INTERVAL)
    observer_text = ns.observer if ns.observer is not None else env.get(ENV_PREFIX + "OBSERVER")
    observer = _address(observer_text, flag("observer")) if observer_text else None
    relay_text, _ = pick_setting("off" if ns.no_relay else None, ENV_PREFIX + "RELAY", env,
                                 config, f"{DAEMON_SECTION}.relay")
    relay = _switch(relay_text, "--no-relay / relay") if relay_text is not None else True
    return DaemonConfig(
        observer=observer, relay=relay, relay_limits=_relay_limits(get),
        listen=listen, state_dir=state_dir, metrics=metrics, bootstrap=bootstrap,
        log_level=log_level, log_format=log_format, max_contacts_per_ip=max_contacts,
        rate_limit_per_ip=rate, rate_limit_burst=burst, save_interval=save_interval,
    )
