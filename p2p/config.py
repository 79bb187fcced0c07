"""The config file: where it is, what keys it may hold, and how it is read and written.

One TOML file, ``config.toml`` in the platform's config folder for ``p2p``
(``$XDG_CONFIG_HOME/p2p`` when that variable is set, else platformdirs' user config
folder, e.g. ``~/.config/p2p``; ``P2P_CONFIG`` names another file). Top-level keys are
the settings of ``p2p`` and ``p2p-tui``; the ``[daemon]`` table holds
``p2p-bootstrap``'s. The settings builder (:mod:`p2p.settings`) puts flags over
environment variables over this file over defaults.

The file holds only the flat subset below (strings, lists of strings, numbers), so
:func:`dump_config` writes it itself rather than pulling in a TOML writer: every string
is a TOML basic string with every character that needs it escaped, and a round-trip
test reads what it wrote back through ``tomllib``. Writing rewrites the whole file in
this canonical form (comments are not kept); the write is atomic (a temporary file
renamed over the old one), so a crash never leaves half a file.

Nothing here reads the process environment or the clock: the environment is passed in.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from .address import parse_address
from .durable import write_atomic
from .errors import BadInput, P2PError
from .units import parse_rate

__all__ = [
    "CONFIG_FILE",
    "CONFIG_KEYS",
    "DAEMON_SECTION",
    "ENV_CONFIG",
    "RESERVED_KEYS",
    "ConfigFile",
    "Key",
    "config_path",
    "dump_config",
    "load_config",
    "save_config",
    "set_config_value",
    "unset_config_value",
]

ENV_CONFIG = "P2P_CONFIG"
"""Names the config file itself (several nodes on one account, a daemon's unit file)."""
ENV_XDG = "XDG_CONFIG_HOME"
CONFIG_FILE = "config.toml"
APP_DIR = "p2p"
DAEMON_SECTION = "daemon"
"""The table of ``p2p-bootstrap``'s keys: a daemon on the same account keeps its own
listen address and state without clashing with the person's node."""
MAX_CONFIG_BYTES = 1024 * 1024
"""A config file is a few hundred bytes; anything this large is not one (a wrong path)."""

ConfigValue = str | int | float | list[str]


# -- values ----------------------------------------------------------------------------------

_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*\.?")


def _address(text: str, what: str) -> str:
    """``HOST:PORT`` as typed: a literal IP (checked) or a host name (resolved when the
    setting is used, not when it is written, so a config can be edited offline)."""
    text = text.strip()
    try:
        parse_address(text, what=what, default_port=0, resolve=False)
    except BadInput:
        host, sep, port = text.rpartition(":")
        if not sep:
            host, port = text, "0"
        if not _HOST_NAME.fullmatch(host):
            raise
        parse_address(f"127.0.0.1:{port}", what=what)  # the port alone: its own message
    return text


def _addresses(value: str | Sequence[str], what: str) -> list[str]:
    """A list of addresses; on the command line one address or several, comma-separated."""
    items = [part.strip() for part in value.split(",")] if isinstance(value, str) else list(value)
    return [_address(item, what) for item in items if item]


def _folder(text: str, what: str) -> str:
    """A folder, stored absolute (``~`` kept as typed): a relative path in a config file
    would mean something different from every folder a command is run in."""
    if not text.strip():
        raise BadInput(f"{what}: expected a folder, got an empty value")
    if text.startswith("~") or os.path.isabs(text):
        return text
    return os.fspath(Path(text).resolve())


def _choice(choices: Sequence[str]) -> Callable[[str, str], str]:
    def check(text: str, what: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise BadInput(f"{what}: expected one of {', '.join(choices)}, got {text!r}")
        return value
    return check


def _count_or_none(text: str, what: str) -> int | str:
    if text.strip().lower() == "none":
        return "none"
    try:
        value = int(text)
    except ValueError:
        raise BadInput(f"{what}: expected a positive integer or 'none', got {text!r}") from None
    if value < 1:
        raise BadInput(f"{what}: expected a positive integer or 'none', got {text!r}")
    return value


def _positive(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadInput(f"{what}: expected a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise BadInput(f"{what}: expected a positive number, got {text!r}")
    return int(value) if value.is_integer() else value


def _rate(text: str, what: str) -> str:
    """A bandwidth limit (``5MiB/s``, ``500KiB/s``, ``0`` for none), stored as typed."""
    parse_rate(text, what)
    return text.strip()


def _switch(text: str, what: str) -> str:
    """On or off (``true``/``false``, ``yes``/``no``, ``1``/``0`` too), stored as ``on``/``off``."""
    value = text.strip().lower()
    if value in ("on", "true", "yes", "1"):
        return "on"
    if value in ("off", "false", "no", "0"):
        return "off"
    raise BadInput(f"{what}: expected on or off, got {text!r}")


def switch_on(text: str, what: str) -> bool:
    """Whether a switch's text (``on``/``off``, ``true``/``false``, ...) says on; raises
    :class:`BadInput` naming ``what`` for anything else."""
    return _switch(text, what) == "on"


def _count(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise BadInput(f"{what}: expected a positive integer, got {text!r}") from None
    if value < 1:
        raise BadInput(f"{what}: expected a positive integer, got {text!r}")
    return value


def _count_or_zero(text: str, what: str) -> int:
    return 0 if text.strip() in ("0", "none") else _count(text, what)


def _size(text: str, what: str) -> str:
    """A byte count (``4GiB``, ``512MiB``, ``0`` for none), stored as typed."""
    parse_rate(text, what)
    return text.strip()


def _positive_or_none(text: str, what: str) -> float | str:
    return "none" if text.strip().lower() == "none" else _positive(text, what)


@dataclass(frozen=True)
class Key:
    """One key the config file may hold."""

    name: str
    """Its name, ``daemon.``-prefixed for the daemon's table (as ``p2p config set`` takes it)."""
    help: str
    """One line for ``p2p config show`` and the docs."""
    parse: Callable[[Any, str], ConfigValue]
    """Checks a value (the command line's text, or the file's value) and returns what is
    stored; raises :class:`BadInput` naming the key."""
    is_list: bool = False

    def check(self, value: object, where: str) -> ConfigValue:
        """A value read from the file at ``where``, checked as :attr:`parse` checks text."""
        what = f"{self.name} in {where}"
        if self.is_list:
            if isinstance(value, str):
                value = [value]
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise BadInput(f"{what}: expected a list of HOST:PORT strings")
            return self.parse(value, what)
        if isinstance(value, bool):
            value = "true" if value else "false"  # a switch's TOML form
        if not isinstance(value, str | int | float):
            raise BadInput(f"{what}: expected a string or a number")
        return self.parse(str(value), what)


CONFIG_KEYS: dict[str, Key] = {key.name: key for key in (
    Key("bootstrap", "DHT nodes to join through (HOST:PORT, a list)", _addresses, is_list=True),
    Key("listen", "TCP and UDP address of long-running commands (HOST:PORT)", _address),
    Key("announce", "addresses to announce instead of the learned ones (a list)", _addresses,
        is_list=True),
    Key("download_dir", "where fetches go when no destination is given", _folder),
    Key("state_dir", "identity, database and control socket", _folder),
    Key("max_upload_rate", "upload limit of long-running commands (5MiB/s, 500KiB/s; 0: none)",
        _rate),
    Key("max_download_rate", "download limit of long-running commands (0: none)", _rate),
    Key("lan", "find peers on this network with mDNS (on or off; default on)", _switch),
    Key("hole_punch", "try a direct connection to relayed peers (on or off; default on)",
        _switch),
    Key("daemon.listen", "p2p-bootstrap's UDP address (a literal IP)", _address),
    Key("daemon.state_dir", "p2p-bootstrap's identity and routing table", _folder),
    Key("daemon.bootstrap", "other nodes p2p-bootstrap joins on start (a list)", _addresses,
        is_list=True),
    Key("daemon.metrics", "where p2p-bootstrap serves /metrics and /healthz (HOST:PORT)",
        _address),
    Key("daemon.log_level", "debug, info, warning or error",
        _choice(("debug", "info", "warning", "error"))),
    Key("daemon.log_format", "text or json", _choice(("text", "json"))),
    Key("daemon.max_contacts_per_ip", "routing-table contacts per IP, or none", _count_or_none),
    Key("daemon.rate_limit_per_ip", "datagrams per second from one IP, or none",
        _positive_or_none),
    Key("daemon.rate_limit_burst", "datagram burst allowed from one IP", _positive),
    Key("daemon.save_interval", "seconds between routing-table saves", _positive),
    Key("daemon.relay", "relay for peers others cannot reach (on or off; default on)", _switch),
    Key("daemon.relay_max_reservations", "relay reservations held at once", _count),
    Key("daemon.relay_max_reservations_per_ip", "relay reservations from one IP", _count),
    Key("daemon.relay_max_circuits", "relay circuits open at once", _count),
    Key("daemon.relay_max_circuits_per_peer", "relay circuits one peer takes part in", _count),
    Key("daemon.relay_max_circuits_per_ip", "relay circuits dialled from one IP", _count),
    Key("daemon.relay_reservation_ttl", "seconds a relay reservation lasts unless refreshed",
        _count),
    Key("daemon.relay_circuit_seconds", "longest a relay circuit lasts, seconds (0: none)",
        _count_or_zero),
    Key("daemon.relay_circuit_bytes", "bytes one relay circuit may carry (4GiB; 0: none)", _size),
    Key("daemon.relay_rate", "bytes per second relayed over all circuits (0: none)", _rate),
)}
"""Every key, by name. A key is here only when something reads it."""

RESERVED_KEYS: dict[str, str] = {}
"""Names kept for settings still to come. Setting one is refused with this reason rather
than stored: a limit that is written down but not held would mislead whoever set it."""


# -- the file ------------------------------------------------------------------------------


def config_path(env: Mapping[str, str]) -> Path:
    """The config file: ``P2P_CONFIG``, else ``$XDG_CONFIG_HOME/p2p/config.toml`` (an absolute
    ``XDG_CONFIG_HOME`` only, as the XDG spec says), else the platform's user config folder."""
    named = env.get(ENV_CONFIG)
    if named:
        return Path(named).expanduser()
    xdg = env.get(ENV_XDG)
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / APP_DIR / CONFIG_FILE
    return Path(platformdirs.user_config_dir(APP_DIR)) / CONFIG_FILE


@dataclass(frozen=True)
class ConfigFile:
    """The checked contents of a config file (empty when there is none)."""

    path: Path | None
    """Where it was read from (None: built in memory, as tests do)."""
    values: Mapping[str, ConfigValue]
    """Checked values by key name (``daemon.``-prefixed for the daemon's table)."""

    @classmethod
    def empty(cls) -> ConfigFile:
        """No file: every setting comes from flags, the environment or defaults."""
        return cls(None, {})

    def get(self, name: str) -> ConfigValue | None:
        """The value of ``name``, or None when the file does not set it."""
        return self.values.get(name)

    def text(self, name: str) -> str | None:
        """A single value as text (numbers too), or None."""
        value = self.values.get(name)
        return None if value is None or isinstance(value, list) else str(value)

    def items(self, name: str) -> list[str]:
        """A list value (empty when not set)."""
        value = self.values.get(name)
        return list(value) if isinstance(value, list) else []


def load_config(path: Path, *, replacing: str | None = None) -> ConfigFile:
    """Read and check ``path``; a file that does not exist is an empty config.

    Raises :class:`BadInput` naming the file and the key for malformed TOML, an unknown
    key (a typo would otherwise be ignored in silence), a reserved key, or a bad value.
    ``replacing`` names a key about to be set or unset: it is left out unchecked, so
    ``p2p config set`` can repair the value that makes the file unreadable.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        return ConfigFile(path, {})
    except OSError as exc:
        raise BadInput(f"cannot read the config file {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise BadInput(f"{path} is larger than {MAX_CONFIG_BYTES} bytes: not a config file")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BadInput(f"{path} is not valid TOML: {exc}") from None
    values: dict[str, ConfigValue] = {}
    for name, value in _flatten(data, path):
        if name == replacing:
            continue
        values[name] = _key(name, f"{path}").check(value, str(path))
    return ConfigFile(path, values)


def _flatten(data: Mapping[str, Any], path: Path) -> list[tuple[str, Any]]:
    found = []
    for name, value in data.items():
        if name == DAEMON_SECTION:
            if not isinstance(value, dict):
                raise BadInput(f"{path}: [{DAEMON_SECTION}] must be a table")
            found += [(f"{DAEMON_SECTION}.{sub}", v) for sub, v in value.items()]
        else:
            found.append((name, value))
    return found


def _key(name: str, where: str) -> Key:
    """The key called ``name``; an unknown or reserved one is refused, saying which are known."""
    if name in RESERVED_KEYS:
        raise BadInput(f"{name} ({where}): {RESERVED_KEYS[name]}; the key is reserved and does "
                       "nothing yet, so it is not accepted")
    key = CONFIG_KEYS.get(name)
    if key is None:
        raise BadInput(f"unknown config key {name!r} ({where}); known keys: {', '.join(CONFIG_KEYS)}")
    return key


def set_config_value(config: ConfigFile, name: str, text: str) -> ConfigFile:
    """``config`` with ``name`` set from the command line's ``text`` (checked; a list key
    takes one address or several, comma-separated, and an empty text clears it)."""
    key = _key(name, "p2p config set")
    value = key.parse(text, name)
    if name in ("listen", f"{DAEMON_SECTION}.listen") and isinstance(value, str):
        # A listen address is this machine's own: a name that does not resolve here now
        # would stop every command that reads the file, so it is refused at once.
        try:
            parse_address(value, what=f"{name} address", default_port=0)
        except P2PError as exc:
            raise BadInput(f"{exc}; give an address of this machine (0.0.0.0:7473, "
                           "127.0.0.1:7473) or a name that resolves to one") from None
    return ConfigFile(config.path, {**config.values, name: value})


def unset_config_value(config: ConfigFile, name: str) -> ConfigFile:
    """``config`` without ``name`` (back to its environment variable or default)."""
    _key(name, "p2p config unset")
    return ConfigFile(config.path, {k: v for k, v in config.values.items() if k != name})


def dump_config(values: Mapping[str, ConfigValue]) -> str:
    """The TOML text of ``values``: top-level keys, then the ``[daemon]`` table, in
    :data:`CONFIG_KEYS` order."""
    top = [f"{n} = {_toml(values[n])}" for n in CONFIG_KEYS if "." not in n and n in values]
    daemon = [f"{n.partition('.')[2]} = {_toml(values[n])}" for n in CONFIG_KEYS
              if n.startswith(DAEMON_SECTION + ".") and n in values]
    lines = ["# p2p settings: `p2p config set KEY VALUE` rewrites this file (comments are not kept).",
             *top]
    if daemon:
        lines += ["", f"[{DAEMON_SECTION}]", *daemon]
    return "\n".join(lines) + "\n"


def _toml(value: ConfigValue) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml_string(v) for v in value) + "]"
    if isinstance(value, bool):  # never stored; refused rather than written as a number
        raise TypeError("booleans are not config values")
    if isinstance(value, int | float):
        return repr(value)
    return _toml_string(value)


def _toml_string(text: str) -> str:
    """A TOML basic string: backslash and quote escaped, every control character as \\uXXXX."""
    out = []
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def save_config(config: ConfigFile, path: Path) -> None:
    """Write ``config`` to ``path`` atomically (:func:`~p2p.durable.write_atomic`: folders made
    as needed, mode 0600, as the file may name private hosts)."""
    write_atomic(path, dump_config(config.values).encode("utf-8"), 0o600)

