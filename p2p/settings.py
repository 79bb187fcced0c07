"""The one settings builder: options over environment variables over the config file over defaults.

The command line, the terminal app and the bootstrap daemon all build their
node's configuration here, so a flag means the same in each of them (host names
resolved, IPv6 in brackets, the DHT's per-IP cap lifted on loopback). The file is
:mod:`p2p.config`'s; :func:`choose` is the precedence rule alone, pure, so a table of
cases tests it without processes.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import platformdirs

from .address import Address, format_address, is_unspecified, parse_address
from .config import ConfigFile, config_path, load_config, switch_on
from .errors import BadInput
from .node import DEFAULT_PORT, DUAL_STACK, NodeConfig
from .units import parse_rate

__all__ = ["ENV_ANNOUNCE", "ENV_BOOTSTRAP", "ENV_DOWNLOAD_DIR", "ENV_HOLE_PUNCH", "ENV_LAN", "ENV_LISTEN",
           "ENV_MAX_DOWNLOAD_RATE", "ENV_MAX_UPLOAD_RATE", "ENV_STATE_DIR", "ENV_VARIABLES", "Settings", "Source", "build_settings", "choose", "environment"]

ENV_STATE_DIR = "P2P_STATE_DIR"
ENV_LISTEN = "P2P_LISTEN"
ENV_BOOTSTRAP = "P2P_BOOTSTRAP"
ENV_ANNOUNCE = "P2P_ANNOUNCE_ADDR"
ENV_DOWNLOAD_DIR = "P2P_DOWNLOAD_DIR"
ENV_MAX_UPLOAD_RATE = "P2P_MAX_UPLOAD_RATE"
ENV_MAX_DOWNLOAD_RATE = "P2P_MAX_DOWNLOAD_RATE"
ENV_LAN = "P2P_LAN"
ENV_HOLE_PUNCH = "P2P_HOLE_PUNCH"
ENV_VARIABLES = {"state_dir": ENV_STATE_DIR, "listen": ENV_LISTEN, "bootstrap": ENV_BOOTSTRAP,
                 "announce": ENV_ANNOUNCE, "download_dir": ENV_DOWNLOAD_DIR,
                 "max_upload_rate": ENV_MAX_UPLOAD_RATE, "max_download_rate": ENV_MAX_DOWNLOAD_RATE,
                 "lan": ENV_LAN, "hole_punch": ENV_HOLE_PUNCH}
"""The environment variable of each setting (list settings take commas)."""
LIST_SETTINGS = frozenset({"bootstrap", "announce"})

Source = Literal["flag", "env", "file", "default"]
"""Where a setting's value came from (``p2p config show`` prints it)."""


def choose(name: str, flag: str | Sequence[str] | None, env: Mapping[str, str],
           file: ConfigFile) -> tuple[str | list[str] | None, Source]:
    """The value of setting ``name`` and where it came from: a flag (given: not None, not
    empty) over its environment variable (set and not empty) over the config file; None
    and ``default`` when none of them sets it."""
    is_list = name in LIST_SETTINGS
    if not is_list:
        return pick_setting(None if flag is None else str(flag), ENV_VARIABLES[name], env,
                            file, name)
    if flag is not None and list(flag):
        return list(flag), "flag"
    raw = env.get(ENV_VARIABLES[name], "")
    if _split(raw):
        return _split(raw), "env"
    if file.get(name) is not None:
        return file.items(name), "file"
    return None, "default"


def pick_setting(flag: str | None, variable: str, env: Mapping[str, str], file: ConfigFile,
                 key: str) -> tuple[str | None, Source]:
    """The one precedence rule of every front end, for a single-valued setting: the flag
    (given and not empty) over the environment variable ``variable`` (set and not empty)
    over the config file's ``key`` (``daemon.listen`` for the daemon's table) over the
    default (None). Returns the text and where it came from."""
    if flag:
        return flag, "flag"
    raw = env.get(variable, "")
    if raw:
        return raw, "env"
    if file.get(key) is not None:
        return file.text(key), "file"
    return None, "default"


@dataclass(frozen=True)
class Settings:
    """What every command needs to build its node and its output."""

    state_dir: Path
    """Identity, database and control socket of this peer."""
    listen: Address
    """Where a long-running command listens (TCP and UDP); unless ``listen_given``, on
    every IPv4 and IPv6 address at this port."""
    listen_given: bool
    """Whether ``--listen``/``P2P_LISTEN`` was set (short-lived commands otherwise pick a free port)."""
    bootstrap: tuple[Address, ...]
    """DHT nodes to join through."""
    announce: tuple[Address, ...]
    """Addresses to announce instead of the learned ones (port forwarding)."""
    download_dir: Path
    """Where fetches go when no destination is given."""
    json: bool = False
    """Machine output (the command line's ``--json``)."""
    verbosity: int = 0
    """-1 with ``-q``, 0 by default, 1 and more with ``-v``."""
    sources: Mapping[str, Source] = field(default_factory=dict)
    """Where each setting came from, by name (missing: ``default``)."""
    config_file: Path | None = None
    """The config file that was read (whether or not it exists)."""
    max_upload_rate: float = 0.0
    """The node's upload limit, bytes per second (0: none)."""
    max_download_rate: float = 0.0
    """The node's download limit, bytes per second (0: none)."""
    lan: bool = True
    """LAN discovery (mDNS): ``--no-lan``, ``P2P_LAN=off`` or ``lan = "off"`` turn it off."""
    hole_punch: bool = True
    """Hole punching over relay circuits: ``--no-hole-punch``, ``P2P_HOLE_PUNCH=off`` or
    ``hole_punch = "off"`` keep relayed peers relayed."""

    def node_config(self, *, long_running: bool, download_dir: Path | None = None) -> NodeConfig:
        """The node configuration; short-lived commands take any free port unless told otherwise."""
        host, port = self.listen
        # A port given for this run (flag, environment) is used as given; the config file's
        # is for the long-running node, which a short command must not collide with.
        if not long_running and self.sources.get("listen", "default") not in ("flag", "env"):
            port = 0
        # Every peer on a loopback address shares one IP: the per-IP DHT cap would hide them.
        loopback = ipaddress.ip_address(host).is_loopback
        # Not told where: every address of both families (dual stack).
        hosts: str | tuple[str, ...] = host if self.listen_given else DUAL_STACK
        return NodeConfig(
            state_dir=self.state_dir, host=hosts, port=port, bootstrap=self.bootstrap,
            announce_addrs=self.announce,
            download_dir=download_dir if download_dir is not None else self.download_dir,
            max_contacts_per_ip=None if loopback else NodeConfig.max_contacts_per_ip,
            # A long-running node is a DHT server once dial-backs prove it reachable; a
            # short-lived one is gone too soon to be anyone's contact.
            dht_mode="auto" if long_running else "client",
            max_upload_rate=self.max_upload_rate, max_download_rate=self.max_download_rate,
            lan_discovery=self.lan, hole_punching=self.hole_punch,
        )


def build_settings(*, state_dir: str | Path | None = None, listen: str | None = None,
                   bootstrap: Sequence[str] = (), announce: Sequence[str] = (),
                   download_dir: str | Path | None = None, json: bool = False, verbose: int = 0,
                   quiet: bool = False, max_upload_rate: str | None = None,
                   max_download_rate: str | None = None, no_lan: bool = False,
                   no_hole_punch: bool = False,
                   env: Mapping[str, str],
                   app_dir: str = "p2p", config: ConfigFile | None = None) -> Settings:
    """Merge options over environment variables over the config file over defaults.

    ``config`` is the config file's contents; None reads the file that ``env`` names
    (:func:`p2p.config.config_path`). ``app_dir`` names the default state directory (the
    daemon keeps its own). Raises :class:`BadInput` for malformed input (a config file's
    too) and :class:`~p2p.errors.NetworkError` for a host name that does not resolve.
    """
    if config is None:
        path: Path | None = config_path(env)
        file = load_config(config_path(env))
    else:
        path, file = config.path, config
    flags: dict[str, str | Sequence[str] | None] = {
        "state_dir": None if state_dir is None else str(state_dir), "listen": listen,
        "bootstrap": bootstrap, "announce": announce,
        "download_dir": None if download_dir is None else str(download_dir),
        "max_upload_rate": max_upload_rate, "max_download_rate": max_download_rate,
        "lan": "off" if no_lan else None, "hole_punch": "off" if no_hole_punch else None}
    chosen = {name: choose(name, flags[name], env, file) for name in ENV_VARIABLES}
    sources = {name: source for name, (_, source) in chosen.items()}

    def text(name: str) -> str | None:
        value = chosen[name][0]
        return value if isinstance(value, str) else None

    def items(name: str) -> list[str]:
        value = chosen[name][0]
        return value if isinstance(value, list) else []

    state = text("state_dir") or platformdirs.user_data_dir(app_dir)
    if Path(state).expanduser().exists() and not Path(state).expanduser().is_dir():
        raise BadInput(f"the state directory {state} is not a folder "
                       f"({_where('state_dir', sources['state_dir'], path)})")
    downloads = text("download_dir") or Path.cwd()
    listen_text = text("listen")
    listen_addr = (parse_address(listen_text, what="listen address", default_port=DEFAULT_PORT)
                   if listen_text else ("0.0.0.0", DEFAULT_PORT))
    boots = tuple(parse_address(b, what="bootstrap address", default_port=DEFAULT_PORT)
                  for b in items("bootstrap"))
    announces = tuple(parse_address(a, what="announce address", default_port=listen_addr[1] or None)
                      for a in items("announce"))
    for host, port in boots + announces:
        if port == 0 or is_unspecified(host):
            raise BadInput(f"{format_address((host, port))} is not an address a peer can be reached at")
    rates = {name: parse_rate(text(name) or "0", _where(name, sources[name], path))
             for name in ("max_upload_rate", "max_download_rate")}
    lan = switch_on(text("lan") or "on", _where("lan", sources["lan"], path))
    hole_punch = switch_on(text("hole_punch") or "on",
                           _where("hole_punch", sources["hole_punch"], path))
    # Absolute, so every path a command prints (`id --json`, `config show`) names one place
    # whatever folder a script later runs in.
    return Settings(state_dir=Path(state).expanduser().absolute(), listen=listen_addr,
                    listen_given=bool(listen_text), bootstrap=boots, announce=announces,
                    download_dir=Path(downloads).expanduser().absolute(), json=json,
                    verbosity=-1 if quiet else verbose, sources=sources, config_file=path,
                    lan=lan, hole_punch=hole_punch, **rates)


def _where(name: str, source: Source, path: Path | None) -> str:
    """How a person set ``name`` (for its error message): the flag, the variable, the key."""
    match source:
        case "flag":
            return "--" + name.replace("_", "-")
        case "env":
            return ENV_VARIABLES[name]
        case _:
            return f"{name} in {path}"


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def environment() -> Mapping[str, str]:
    """The process environment (a seam for tests)."""
    return os.environ
