"""Argument parsing, signal handling and the one map from errors to exit codes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .. import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    BadInput,
    ConfigFile,
    PortInUse,
    __version__,
    build_settings,
    config_path,
    describe,
    environment,
    exit_code_for,
)
from . import commands, demo, limit, ports
from . import config as config_command
from .commands import Run
from .output import Output, to_json

PROG = "p2p"

EXIT_CODES = """\
exit codes:
  0    success (share, serve and fetch --seed also exit 0 when stopped by Ctrl-C or SIGTERM)
  1    internal error: a bug, and nothing else (please report it, with -v output)
  2    bad usage or malformed input (a bad id, ticket, address or option)
  3    content not found (no provider answered within --timeout)
  4    integrity or signature failure (bad chunks, a bad signature, a publisher other than --from)
  5    network failure (cannot bind, nobody reachable, no running node to ask)
  6    local problem (a node already running on this state directory, an unusable
       state directory, a destination that exists or cannot be written, a full disk)
  130  interrupted (Ctrl-C; SIGTERM gives 143); a fetch resumes where it stopped

environment and config file:
  P2P_STATE_DIR, P2P_LISTEN, P2P_BOOTSTRAP (comma-separated), P2P_ANNOUNCE_ADDR
  (comma-separated), P2P_DOWNLOAD_DIR, P2P_MAX_UPLOAD_RATE, P2P_MAX_DOWNLOAD_RATE, P2P_LAN, P2P_HOLE_PUNCH; P2P_CONFIG names the config file (default:
  `p2p config path`). An option on the command line wins over its environment
  variable, which wins over the config file, which wins over the default.
"""

Command = Callable[[Run, argparse.Namespace], Awaitable[int]]


class Interrupted(Exception):
    """The command was stopped by a signal."""

    def __init__(self, signum: int, serving: bool) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.serving = serving


def exit_code(exc: BaseException) -> int:
    """The exit code of this command: a signal that stopped a server is a clean stop (0),
    another signal is 128 + its number; everything else as :func:`p2p.exit_code_for` says."""
    match exc:
        case BaseExceptionGroup() if len(exc.exceptions) == 1:
            return exit_code(exc.exceptions[0])
        case Interrupted(serving=True):
            return EXIT_OK
        case Interrupted(signum=signum):
            return 128 + signum
        case _:
            return exit_code_for(exc)


# -- the parser ------------------------------------------------------------------------------

_SHARED = ("state_dir", "listen", "bootstrap", "announce_addr", "no_lan", "no_hole_punch", "json", "verbose",
           "quiet")


def _add_shared(parser: argparse.ArgumentParser, *, sub: bool) -> None:
    """The settings every command takes; on subcommands they default to 'not given'."""
    group = parser.add_argument_group("settings (before or after the command)")
    prefix = "sub_" if sub else ""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if sub else value

    group.add_argument("--state-dir", dest=prefix + "state_dir", metavar="DIR", default=default(None),
                       help="identity, database and control socket (env P2P_STATE_DIR; "
                            "default: the user data dir for p2p)")
    group.add_argument("--listen", dest=prefix + "listen", metavar="HOST:PORT", default=default(None),
                       help="TCP and UDP address (env P2P_LISTEN; default 0.0.0.0:7473; "
                            "port 0 for any; [V6]:PORT)")
    group.add_argument("--bootstrap", dest=prefix + "bootstrap", metavar="HOST:PORT", action="append",
                       default=default([]),
                       help="a DHT node to join through; repeatable (env P2P_BOOTSTRAP, comma-separated)")
    group.add_argument("--announce-addr", dest=prefix + "announce_addr", metavar="HOST:PORT",
                       action="append", default=default([]),
                       help="address to announce instead of the learned one; repeatable "
                            "(env P2P_ANNOUNCE_ADDR)")
    group.add_argument("--no-lan", dest=prefix + "no_lan", action="store_true",
                       default=default(False),
                       help="do not advertise or look for peers on this network with mDNS "
                            "(env P2P_LAN=off; config key lan)")
    group.add_argument("--no-hole-punch", dest=prefix + "no_hole_punch", action="store_true",
                       default=default(False),
                       help="keep peers reached through a relay relayed: do not try a direct "
                            "connection (env P2P_HOLE_PUNCH=off; config key hole_punch)")
    group.add_argument("--json", dest=prefix + "json", action="store_true", default=default(False),
                       help="machine-readable output: one JSON object per line on stdout")
    group.add_argument("-v", "--verbose", dest=prefix + "verbose", action="count",
                       default=default(0), help="more detail (repeat for more); tracebacks on errors")
    group.add_argument("-q", "--quiet", dest=prefix + "quiet", action="store_true",
                       default=default(False), help="only results and errors")


class UsageExit(SystemExit):
    """argparse refused the command line (exit 2); the message is kept for ``--json``."""

    def __init__(self, message: str) -> None:
        super().__init__(EXIT_USAGE)
        self.message = message


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        # argparse's own errors: usage line, then one plain line, exit 2.
        self.print_usage(sys.stderr)
        print(f"{PROG}: error: {message}", file=sys.stderr)
        raise UsageExit(message)


def _add_finding(p: argparse.ArgumentParser, timeout_help: str) -> None:
    """--from, --peer and --timeout: how ``fetch`` and ``ls ID`` find and trust content."""
    p.add_argument("--from", dest="from_", metavar="PUBLISHER",
                   help="require this publisher (a peer id as `p2p id` prints it)")
    p.add_argument("--peer", action="append", default=[], metavar="HOST:PORT",
                   help="also ask this peer; repeatable")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S", help=timeout_help)


def build_parser() -> argparse.ArgumentParser:
    """The ``p2p`` argument parser."""
    parser = _Parser(
        prog=PROG, description="Peer-to-peer, content-addressed file sharing.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _add_shared(parser, sub=False)
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                 parser_class=_Parser)

    def command(name: str, func: Command, help_text: str, description: str | None = None) -> Any:
        p = subs.add_parser(name, help=help_text, description=description or help_text,
                            epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=func)
        return p

    command("id", commands.cmd_id, "show this peer's id, public key and addresses")

    p = command("share", commands.cmd_share, "share a file or folder, print its id and a ticket, serve it",
                "Hash, sign, store and announce PATH; print its content id and a ticket; then serve "
                "until Ctrl-C or SIGTERM (exit 0). A folder share holds its readable regular files "
                "only: symlinks (not followed), folders with no file below them, files and "
                "folders it may not read, and sockets, FIFOs and devices are left out, and a "
                "warning counts them.")
    p.add_argument("path", metavar="PATH", help="file or folder to share (served in place)")
    p.add_argument("--no-serve", action="store_true", help="add to the library and exit")

    p = command("fetch", commands.cmd_fetch, "download by content id or ticket",
                "Download ID-or-TICKET from every peer that has it, verifying every chunk; print the "
                "path. Interrupted, it resumes where it stopped next time.")
    p.add_argument("target", metavar="ID-or-TICKET", help="a content id (p2pc1...) or a ticket (p2pt1...)")
    p.add_argument("-o", "--output", metavar="DEST",
                   help="destination (default: the name from the manifest, here): a path that "
                        "does not exist is the file or folder itself; an existing folder gets it "
                        "inside, as DEST/NAME. '-' streams a single file's (or --file's) verified "
                        "bytes to stdout, in order, as they arrive (the file is also kept, in the "
                        "state directory's streamed folder)")
    _add_finding(p, "seconds to find the content, and the longest stall with no peer or no "
                    "verified chunk (default 30)")
    p.add_argument("--include", action="append", default=[], metavar="GLOB",
                   help="fetch only the files of a folder this glob matches (paths as `p2p ls ID` "
                        "prints them; * stays within one path component, ** crosses them; a "
                        "folder's name picks all in it); repeatable")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="leave out the files this glob matches (wins over --include); repeatable")
    p.add_argument("--file", metavar="PATH",
                   help="with -o -: stream this file of a folder (its path as `p2p ls ID` prints it)")
    p.add_argument("--seed", action="store_true", help="keep serving after the download, until Ctrl-C")

    p = command("serve", commands.cmd_serve, "seed everything in the store until signalled",
                "Seed everything in the library until Ctrl-C or SIGTERM (exit 0). With an empty "
                "library, this is a DHT bootstrap node. --relay also relays for peers others "
                "cannot reach (a node with a public address; limits: the daemon's defaults).")
    p.add_argument("--relay", action="store_true",
                   help="relay for peers behind NATs (reservations and circuits on the TCP port)")
    p = command("ls", commands.cmd_ls, "list shares and downloads, or the files of remote content",
                "Without ID-or-TICKET: shares and downloads with their state (works offline). With "
                "one: the files of that content, one per line with its size (paths relative to the "
                "shared folder, /-separated), after fetching and verifying only its listing; "
                "--json gives one object per file.")
    p.add_argument("target", metavar="ID-or-TICKET", nargs="?",
                   help="list the files of this content (fetched from its peers if not held here)")
    _add_finding(p, "seconds to find the listing (default 30)")
    command("peers", commands.cmd_peers, "connected peers of the running node, with rates and strikes")
    command("dht", commands.cmd_dht, "routing-table summary",
            "Routing-table summary of the running node of this state directory; with none running, "
            "of a short-lived node that joins through --bootstrap now.")
    command("netcheck", commands.cmd_netcheck, "can others reach this peer? (public, NAT, firewall-only)",
            "Ask DHT nodes to dial this peer back from addresses it never sent to, and where they "
            "see it: prints public, nat (with the NAT's mapping and filtering as far as they "
            "show), firewall-only or unknown, with the evidence. Asks the running node of this "
            "state directory; with none running, a short-lived node on the configured port.")
    p = command("verify", commands.cmd_verify, "re-hash the local copy of some content (exit 4 if bad)")
    p.add_argument("id", metavar="ID", help="content id (or an unambiguous prefix of one held here)")
    p = command("unshare", commands.cmd_unshare, "stop serving some content (files stay)")
    p.add_argument("id", metavar="ID", help="content id (or an unambiguous prefix of one held here)")
    p = command("publish", commands.cmd_publish, "point your channel NAME at a content id (needs --bootstrap)")
    p.add_argument("name", metavar="NAME", help="channel name")
    p.add_argument("id", metavar="ID", help="content id")
    p = command("resolve", commands.cmd_resolve, "the content id a channel points at (needs --bootstrap)")
    p.add_argument("ref", metavar="PUBLISHER/NAME", help="publisher peer id and channel name")

    p = command("demo", demo.cmd_demo, "a swarm on this machine: N seeders, one download, live per-peer view",
                "Start a bootstrap node and N seeders (in a child process) and a downloader on 127.0.0.1, fetch "
                "a generated file from all seeders at once with a live per-peer view, and report.")
    p.add_argument("--peers", type=int, default=demo.DEFAULT_PEERS, metavar="N",
                   help=f"seeders (default {demo.DEFAULT_PEERS})")
    p.add_argument("--size", type=demo.parse_size, default=demo.DEFAULT_SIZE, metavar="SIZE",
                   help="file size, e.g. 64M, 1G, 500K or bytes (default 512M)")

    _add_download_commands(command, subs.choices["fetch"])
    limit.add_commands(command, [subs.choices[name] for name in ("share", "serve", "fetch")])
    p = command("config", config_command.cmd_config, "show or change the config file",
                "The config file (TOML): `path` prints where it is, `show` the settings in force "
                "and where each comes from (flag, env, file, default), `set KEY VALUE` and "
                "`unset KEY` change it (values are checked first).")
    p.epilog = config_command.describe_keys() + "\n\n" + EXIT_CODES
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=_Parser)
    actions.add_parser("path", help="print the config file's path")
    actions.add_parser("show", help="the settings in force and their sources")
    q = actions.add_parser("set", help="set KEY to VALUE (a list key: one HOST:PORT, or several "
                                       "comma-separated; '' empties it)")
    q.add_argument("key", metavar="KEY")
    q.add_argument("value", metavar="VALUE")
    q = actions.add_parser("unset", help="remove KEY (its environment variable or default applies)")
    q.add_argument("key", metavar="KEY")
    for action in actions.choices.values():
        _add_shared(action, sub=True)

    for sub in subs.choices.values():
        _add_shared(sub, sub=True)
    return parser


def _add_download_commands(command: Callable[..., Any], fetch: argparse.ArgumentParser) -> None:
    """``rm``, ``pause``, ``resume`` and ``fetch --rename``: managing downloads (through the
    running node of the state directory when there is one)."""
    fetch.add_argument("--rename", action="store_true",
                       help="when the destination holds something else, save beside it as "
                            "'NAME (1).EXT' instead of refusing (the same content there is "
                            "always checked and kept)")
    id_help = "content id (or an unambiguous prefix of one held here)"
    p = command("rm", commands.cmd_rm, "stop a download and forget it (its partial data is kept)",
                "Stop a download (running or not) and forget it. Its partial data stays where it "
                "is, and a later fetch to the same place reuses what verifies; --delete deletes "
                "it. A complete download stops being served; its files always stay.")
    p.add_argument("id", metavar="ID", help=id_help)
    p.add_argument("--delete", action="store_true", help="delete the partial data too")
    p = command("pause", commands.cmd_pause, "pause a download (it stays paused until resumed)",
                "Pause a download, keeping its verified chunks; a paused download is not resumed "
                "when a node starts, only by `p2p resume ID`.")
    p.add_argument("id", metavar="ID", help=id_help)
    p = command("resume", commands.cmd_resume, "resume a paused or stopped download on the running node",
                "Resume a download on the running node, in the background (`p2p ls` shows its "
                "progress). With no node running, it is marked to resume when one starts.")
    p.add_argument("id", metavar="ID", help=id_help)


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, Run]:
    """Parse ``argv`` and merge options (before or after the command) with the environment."""
    args = build_parser().parse_args(argv)
    merged: dict[str, Any] = {}
    for name in _SHARED:
        main_value = getattr(args, name)
        sub_value = getattr(args, "sub_" + name, None)
        if name in ("bootstrap", "announce_addr"):
            merged[name] = list(main_value) + list(sub_value or [])
        elif name == "verbose":
            merged[name] = main_value + (sub_value or 0)
        else:
            merged[name] = sub_value if sub_value not in (None, False) else main_value
    args.shared = merged
    env = environment()
    # `p2p config` must work on a config file that does not read (it is how one repairs it):
    # it reads the file itself, key by key.
    config = ConfigFile(config_path(env), {}) if args.command == "config" else None
    settings = build_settings(state_dir=merged["state_dir"], listen=merged["listen"],
                              bootstrap=merged["bootstrap"], announce=merged["announce_addr"],
                              json=merged["json"], verbose=merged["verbose"], quiet=merged["quiet"],
                              max_upload_rate=getattr(args, "max_upload_rate", None),
                              max_download_rate=getattr(args, "max_download_rate", None),
                              no_lan=merged["no_lan"],
                              no_hole_punch=merged["no_hole_punch"], env=env, config=config)
    out = Output(json_mode=settings.json, verbosity=settings.verbosity)
    return args, Run(settings, out)


def _setup_logging(verbosity: int) -> None:
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    logging.basicConfig(level=level, format=f"{PROG}: %(levelname)s: %(name)s: %(message)s",
                        stream=sys.stderr)
    if verbosity < 2:
        # The DHT library logs every unanswered RPC; that is noise unless debugging.
        for name in ("kademlia", "rpcudp", "p2p.dht"):
            logging.getLogger(name).setLevel(logging.ERROR)
        # The node's warnings reach the person as events, rendered by the views.
        logging.getLogger("p2p").setLevel(max(level, logging.ERROR if verbosity < 1 else level))


async def _run(func: Command, run: Run, args: argparse.Namespace) -> int:
    """Run the command; SIGINT and SIGTERM cancel it and become :class:`Interrupted`."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    received: list[int] = []

    def on_signal(signum: int) -> None:
        if not received:
            received.append(signum)
            task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        return await func(run, args)
    except asyncio.CancelledError:
        if received:
            raise Interrupted(received[0], run.serving) from None
        raise
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``p2p`` command; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    verbose = "-v" in argv or "--verbose" in argv or any(a.startswith("-vv") for a in argv)
    json_mode = "--json" in argv  # until the settings say so (they may fail to build)
    args = None
    try:
        args, run = parse(argv)
        verbose = run.settings.verbosity > 0
        json_mode = run.settings.json
        _setup_logging(run.settings.verbosity)
        return asyncio.run(_run(args.func, run, args))
    except UsageExit as exc:
        if json_mode:
            _json_error(exc.message, EXIT_USAGE, "usage")
        return EXIT_USAGE
    except SystemExit as exc:  # argparse: --help (0)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except BaseException as exc:
        code = exit_code(exc)
        if isinstance(exc, Interrupted | KeyboardInterrupt):
            if code != EXIT_OK:
                fetching = getattr(args, "func", None) is commands.cmd_fetch
                hint = (" (the download keeps its progress: run the same fetch again to resume)"
                        if fetching else "")
                print(f"{PROG}: interrupted{hint}", file=sys.stderr)
                if json_mode:
                    signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
                    _emit({"event": "interrupted", "signal": signal.Signals(signum).name,
                           "exit_code": code, "resumable": fetching})
            return code
        if verbose and not isinstance(exc, BadInput):
            traceback.print_exception(exc, file=sys.stderr)
        message = message_for(exc)
        print(f"{PROG}: error: {message}", file=sys.stderr)
        if json_mode:
            _json_error(message, code, _kind(exc))
        return code


def message_for(exc: BaseException) -> str:
    """The one line a person reads: :func:`p2p.describe`, and for a port in use who holds it
    and what to do."""
    inner = exc.exceptions[0] if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1 else exc
    text = describe(inner)
    if isinstance(inner, PortInUse) and inner.port:
        text += "; " + ports.advice(inner.port, inner.transport)
    elif isinstance(inner, PortInUse):
        text += "; pick another port with --listen HOST:PORT"
    return text


def _kind(exc: BaseException) -> str:
    """The error's kind for ``--json``: the family a script branches on."""
    inner = exc.exceptions[0] if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1 else exc
    code = exit_code(inner)
    return {EXIT_USAGE: "bad_input", 3: "not_found", 4: "integrity", 5: "network",
            6: "local", EXIT_INTERRUPTED: "interrupted", 143: "interrupted"}.get(code, "internal")


def _json_error(message: str, code: int, kind: str) -> None:
    _emit({"event": "error", "error": message, "kind": kind, "exit_code": code})


def _emit(obj: dict[str, Any]) -> None:
    """One JSON line on stdout, whatever state the command was in (a pipe closed: given up)."""
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.write(to_json(obj) + "\n")
        sys.stdout.flush()
