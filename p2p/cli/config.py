"""``p2p config path | show | set KEY VALUE | unset KEY``: the config file from the command line.

``set`` and ``unset`` check the value with the same rules that reading the file applies
(:mod:`p2p.config`), so a file written here is always one every front end can read.
"""

from __future__ import annotations

import argparse
from typing import Any

from .. import (
    CONFIG_KEYS,
    DAEMON_SECTION,
    RESERVED_KEYS,
    ConfigFile,
    build_settings,
    config_path,
    environment,
    format_address,
    format_rate,
    load_config,
    save_config,
    set_config_value,
    unset_config_value,
)
from .commands import Run


async def cmd_config(run: Run, args: argparse.Namespace) -> int:
    """Dispatch ``p2p config ACTION``."""
    match args.action:
        case "path":
            return _path(run)
        case "show":
            return _show(run, args)
        case "set":
            return _set(run, args.key, args.value)
        case "unset":
            return _unset(run, args.key)
    raise AssertionError(f"unknown config action {args.action!r}")  # argparse checked it


def _path(run: Run) -> int:
    path = config_path(environment())
    exists = path.is_file()
    run.out.result({"path": str(path), "exists": exists}, str(path))
    if not exists:
        run.out.note("(no file there yet: `p2p config set KEY VALUE` creates it)")
    return 0


def _show(run: Run, args: argparse.Namespace) -> int:
    """The settings in force and where each came from; then the daemon's, from the file."""
    shared = args.shared
    env = environment()
    settings = build_settings(state_dir=shared["state_dir"], listen=shared["listen"],
                              bootstrap=shared["bootstrap"], announce=shared["announce_addr"],
                              env=env)
    file = load_config(config_path(env))
    effective: dict[str, Any] = {
        "state_dir": str(settings.state_dir),
        "listen": (_addr(settings.listen) if settings.listen_given
                   else f"every IPv4 and IPv6 address, port {settings.listen[1]}"),
        "bootstrap": [_addr(a) for a in settings.bootstrap],
        "announce": [_addr(a) for a in settings.announce],
        "download_dir": str(settings.download_dir),
        "max_upload_rate": settings.max_upload_rate,  # bytes per second (0: none)
        "max_download_rate": settings.max_download_rate,
        "lan": "on" if settings.lan else "off",
        "hole_punch": "on" if settings.hole_punch else "off",
    }
    sources = {name: settings.sources.get(name, "default") for name in effective}
    daemon = {name.partition(".")[2]: file.get(name) for name in CONFIG_KEYS
              if name.startswith(DAEMON_SECTION + ".") and file.get(name) is not None}
    lines = [f"# {settings.config_file}" + ("" if file.values or _exists(file) else
                                             " (not there yet)")]
    for name, value in effective.items():
        shown = (", ".join(value) or "(none)" if isinstance(value, list)
                 else format_rate(value) if name.startswith("max_") else value)
        lines.append(f"{name:<17} {shown}  ({sources[name]})")
    if daemon:
        lines.append(f"[{DAEMON_SECTION}] (p2p-bootstrap; flags and P2P_BOOTSTRAP_* win)")
        lines += [f"{name:<20} {value}" for name, value in daemon.items()]
    run.out.result({"path": str(settings.config_file), "settings": effective,
                    "sources": sources, "daemon": daemon}, "\n".join(lines))
    return 0


def _exists(file: ConfigFile) -> bool:
    return file.path is not None and file.path.is_file()


def _addr(addr: tuple[str, int]) -> str:
    return format_address(addr)


def _set(run: Run, name: str, text: str) -> int:
    path = config_path(environment())
    updated = set_config_value(load_config(path, replacing=name), name, text)
    save_config(updated, path)
    value = updated.get(name)
    run.out.result({"path": str(path), "key": name, "value": value},
                   f"{name} = {_text(value)}  ({path})")
    return 0


def _unset(run: Run, name: str) -> int:
    path = config_path(environment())
    updated = unset_config_value(load_config(path, replacing=name), name)
    save_config(updated, path)
    run.out.result({"path": str(path), "key": name, "value": None},
                   f"{name} unset ({path}): its environment variable or default applies")
    return 0


def _text(value: object) -> str:
    if isinstance(value, list):
        return ", ".join(value) or "(empty list)"
    return str(value)


def describe_keys() -> str:
    """The keys, for ``p2p config --help``."""
    width = max(len(n) for n in CONFIG_KEYS)
    lines = [f"  {name:<{width}}  {key.help}" for name, key in CONFIG_KEYS.items()]
    lines += [f"  {name:<{width}}  reserved: {why}" for name, why in RESERVED_KEYS.items()]
    return "keys:\n" + "\n".join(lines)
