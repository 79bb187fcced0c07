"""One coroutine per command: build a node from the settings, call it, render the result.

Commands raise the library's typed errors; the one exit-code map in :mod:`p2p.cli.app`
turns them into exit codes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import math
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import (
    BadInput,
    ContentId,
    DHTSummary,
    LeftOut,
    Library,
    Node,
    NodeConfig,
    NotFound,
    PeerId,
    Reachability,
    Selection,
    Settings,
    VerifyReport,
    format_address,
    human_bytes,
    human_seconds,
    make_ticket,
    parse_address,
    parse_id_or_ticket,
    plural,
)
from . import control, limit
from .output import Output
from .progress import FetchView, UploadView, following, hashing_bar


@dataclass
class Run:
    """What one invocation knows about itself while it runs."""

    settings: Settings
    out: Output
    serving: bool = False
    """Set once the command only serves: a signal then ends it cleanly (exit 0)."""
    dht_warned: bool = False
    """A warning that the DHT is out of reach was shown (once is enough)."""


@contextlib.asynccontextmanager
async def running_node(run: Run, config: NodeConfig, *, endpoint: bool = False,
                       serves: bool = True, resume: bool = False) -> AsyncIterator[Node]:
    """A started node (with the control socket when ``endpoint``), closed on exit.

    ``serves=False`` for short-lived commands, whose DHT announcements do not matter.
    ``resume``: resume the downloads its last run left running (long-running nodes).
    A node with no DHT contacts still starts (it serves, and tickets reach it);
    :func:`_warn_alone` says so. Only one node runs per state directory: while one does,
    commands go through it (:mod:`p2p.cli.control`), and starting another here raises
    :class:`~p2p.StateDirLocked` (exit 6).
    """
    node = Node(dataclasses.replace(config, announce_shares=serves, resume_downloads=resume))
    await node.start()  # closes what it opened if it fails
    try:
        if endpoint:
            async with control.control_endpoint(node):
                try:
                    yield node
                finally:
                    # Stopped by the node: its downloads are 'interrupted' (resumed at the
                    # next start), and its clients told so, before the socket closes.
                    await node.aclose()
        else:
            yield node
    finally:
        await node.aclose()


def _warn_alone(run: Run, node: Node) -> None:
    """Say so when no DHT node is known: then only a ticket leads others to this peer."""
    if not run.dht_warned and node.dht_summary().contacts == 0:
        run.dht_warned = True
        why = ("none of the bootstrap nodes answered" if run.settings.bootstrap
               else "no --bootstrap")
        run.out.note(f"p2p: note: no DHT node known ({why}): others can reach this "
                     "peer through its tickets only")


def _warn_bootstrap(run: Run, node: Node, *, by_id: bool = False) -> None:
    """Say so when the bootstrap nodes did not answer. ``by_id``: what follows can only work
    through the DHT, so it fails with that very message (exit 5): no warning first."""
    if node.bootstrap_failure is not None:
        if not by_id:
            run.out.note(f"p2p: warning: {node.bootstrap_failure}; going on without the DHT "
                         "(tickets and --peer addresses still work)")
    elif node.bootstrap_error:
        run.out.note(f"p2p: warning: could not join the DHT through the bootstrap nodes: "
                     f"{node.bootstrap_error}")


def _by_id(target: str, peers: list[tuple[str, int]]) -> bool:
    """Whether a fetch or listing of ``target`` can find its peers only through the DHT."""
    _, ticket = parse_id_or_ticket(target)
    return not peers and (ticket is None or not ticket.addresses)


async def serve_until_signalled(run: Run, node: Node) -> None:
    """Serve (showing uploads) until SIGINT or SIGTERM cancels this task."""
    run.serving = True
    view = UploadView(run.out)
    with node.events.subscribed() as sub:
        try:
            async with following(sub, view.handle):
                await asyncio.Event().wait()
        finally:
            if view.chunks and not run.out.json:
                run.out.note("uploaded " + view.summary())


def _content_id(text: str, state_dir: Path) -> ContentId:
    """A full content id, a ticket, or an unambiguous prefix of an id in the local library."""
    with Library.open(state_dir) as library:
        return library.resolve(text)


# -- id -----------------------------------------------------------------------------------


async def cmd_id(run: Run, args: argparse.Namespace) -> int:
    """Peer id, public key, listen and announced addresses."""
    s = run.settings
    peer_id, public_key = await asyncio.to_thread(Node.identity_of, s.state_dir)
    info: dict[str, Any] = {
        "peer_id": str(peer_id), "public_key": public_key.hex(),
        "state_dir": str(s.state_dir), "listen": format_address(s.listen),
        "announce": [format_address(a) for a in s.announce], "running": False,
    }
    with contextlib.suppress(control.NoRunningNode):
        live = await control.query(s.state_dir, {"cmd": "id"})
        info.update(running=True, listen=live["listen"], addresses=live["addresses"])
    lines = [f"peer id     {info['peer_id']}", f"public key  {info['public_key']}",
             f"listen      {_listen_text(s, info)}" + ("" if info["running"] else " (not running)")]
    if info.get("addresses"):
        lines.append(f"reachable   {', '.join(info['addresses'])}")
    if info["announce"]:
        lines.append(f"announce    {', '.join(info['announce'])}")
    run.out.result(info, "\n".join(lines))
    return 0


def _listen_text(s: Settings, info: dict[str, Any]) -> str:
    if info["running"] or s.listen_given:
        return str(info["listen"])
    return f"every IPv4 and IPv6 address, port {s.listen[1]}"


# -- share / serve ---------------------------------------------------------------------------


async def cmd_share(run: Run, args: argparse.Namespace) -> int:
    """Hash, sign, store and announce PATH, then serve until signalled."""
    path = Path(args.path).expanduser()
    if not path.exists():
        raise BadInput(f"{path}: no such file or folder")
    total = _tree_size(path)
    state = run.settings.state_dir
    limit.through_running_node(run, every=True)
    try:
        with hashing_bar(run.out, f"hashing {path.name}", total) as progress:
            hashed = 0

            def on_line(line: dict[str, Any]) -> None:
                nonlocal hashed
                if isinstance(line.get("hashed"), int):
                    progress(line["hashed"] - hashed)
                    hashed = line["hashed"]

            info = await control.query(state, {"cmd": "share", "path": os.path.abspath(path)},
                                       on_line)
    except control.NoRunningNode:
        pass
    else:
        run.out.result(info, f"content id  {info['content_id']}\nticket      {info['ticket']}")
        run.out.note(f"shared {info['name']} ({human_bytes(info['size'])}, "
                     f"{plural(info['chunks'], 'chunk')}) in {info['hash_seconds']:.1f} s; the "
                     f"running node of {state} serves it on {', '.join(info['listening'])}")
        _warn_left_out(run, info)
        if info.get("bootstrap_error"):
            run.out.note(f"p2p: warning: the running node has no DHT: {info['bootstrap_error']}; "
                         "only the ticket leads others to it")
        return 0
    config = run.settings.node_config(long_running=not args.no_serve)
    async with running_node(run, config, endpoint=not args.no_serve,
                            serves=not args.no_serve, resume=not args.no_serve) as node:
        _warn_bootstrap(run, node)
        started = time.monotonic()
        with hashing_bar(run.out, f"hashing {path.name}", total) as progress:
            result = await node.share(path, progress)
        seconds = time.monotonic() - started
        manifest = result.manifest
        info = control.share_info(node, result, seconds, serving=not args.no_serve)
        if args.no_serve:
            info = _unserved_share(info, result.content_id, manifest.publisher)
        run.out.result(info, f"content id  {info['content_id']}\nticket      {info['ticket']}")
        run.out.note(f"shared {manifest.name} ({human_bytes(manifest.total_size)}, "
                     f"{plural(manifest.chunk_count, 'chunk')}) in {seconds:.1f} s")
        _warn_left_out(run, info)
        if args.no_serve:
            run.out.note(f"p2p: note: not served now (--no-serve): `p2p serve` for {state} "
                         "serves and announces it; this ticket names no address, so a fetch "
                         "of it finds the content through the DHT while that node runs")
            return 0
        _warn_alone(run, node)
        listening = ", ".join(format_address(a) for a in node.listen_addresses())
        run.out.note(f"serving on {listening} as {node.peer_id.short()}; "
                     "Ctrl-C to stop")
        await serve_until_signalled(run, node)
    return 0


def _warn_left_out(run: Run, info: dict[str, Any]) -> None:
    """The warning of a folder share that left things out (``info["left_out"]``, the same
    through a running node and from a node of its own)."""
    left_out = LeftOut.from_json(info.get("left_out") or {})
    if left_out.total:
        run.out.note(f"p2p: warning: left out {left_out.describe()} (a folder share "
                     "holds readable regular files only; see `p2p share --help`)")


def _unserved_share(info: dict[str, Any], content_id: ContentId, publisher: PeerId) -> dict[str, Any]:
    """What ``share --no-serve`` with no node running reports: nothing serves the content
    once this process exits, so its ticket carries no address (an address would send
    fetchers to a port nobody listens on) and nothing is announced."""
    return {**info, "ticket": str(make_ticket(content_id, publisher, [])), "serving": False,
            "announced": False, "addresses": [], "listen": None, "listening": []}


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


async def cmd_serve(run: Run, args: argparse.Namespace) -> int:
    """Seed everything in the store until signalled (with an empty store: a DHT bootstrap node)."""
    config = run.settings.node_config(long_running=True)
    if getattr(args, "relay", False):
        config = dataclasses.replace(config, relay=True)
    async with running_node(run, config, endpoint=True, resume=True) as node:
        _warn_bootstrap(run, node)
        shares = node.library.shares()
        resumed = [str(cid) for cid in node.resumed]
        info = {"peer_id": str(node.peer_id), "listen": format_address(node.listen_address()),
                "listening": [format_address(a) for a in node.listen_addresses()],
                "addresses": [format_address(a) for a in node.addresses()],
                "shares": len(shares), "resumed": resumed, "relay": node.relay is not None}
        run.out.result(info, f"serving {plural(len(shares), 'share')} as {node.peer_id} "
                             f"on {', '.join(format_address(a) for a in node.listen_addresses())}; "
                             "Ctrl-C to stop")
        if node.relay is not None:
            run.out.note("relaying for peers others cannot reach (their reservations and "
                         "circuits come in on the TCP port)")
        if resumed:
            run.out.note(f"resuming {plural(len(resumed), 'download')} its last run left "
                         "running (`p2p ls` shows them, `p2p pause ID` stops one)")
        if shares:
            _warn_alone(run, node)
            await _warn_unhealthy(run, node)
        await serve_until_signalled(run, node)
    return 0


async def _warn_unhealthy(run: Run, node: Node) -> None:
    """At ``serve`` start, one warning per share whose files moved, changed or vanished
    (checked in a thread: a ``stat`` per file). Such a share stays in the library; the
    first request for a chunk of a changed file withdraws it (see ``p2p ls``)."""
    rows = await asyncio.to_thread(control.library_rows, node.library, set(), checked=True)
    for row in rows["shares"]:
        if row["status"] != "ok":
            run.out.note(f"p2p: warning: {row['status']}: {row['name']} ({row['path']}): "
                         f"{row['note']}; `p2p share PATH` shares it as it is now, "
                         "`p2p unshare ID` forgets it")


# -- fetch ------------------------------------------------------------------------------


async def cmd_fetch(run: Run, args: argparse.Namespace) -> int:
    """Download by id or ticket with a progress bar; print the verified path."""
    content_id, _ticket = parse_id_or_ticket(args.target)
    publisher, peers = _finding(args)
    selection = _selection(args)
    if args.output == "-":
        return await _fetch_to_stdout(run, args, content_id, publisher, peers)
    if args.file is not None:
        raise BadInput("--file picks the file to stream with -o -; to fetch some files of a "
                       "folder, use --include PATH")
    dest = Path(args.output).expanduser() if args.output else None
    if dest is not None and args.output.endswith(("/", os.sep)) and not dest.is_dir():
        # `-o DIR/` names a folder to fetch into (DIR/NAME), made if it is not there yet
        try:
            dest.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise BadInput(f"-o {args.output}: {dest} exists and is not a folder") from None
    rename = bool(getattr(args, "rename", False))
    state = run.settings.state_dir
    request = {"cmd": "fetch", "target": args.target,
               "dest": os.path.abspath(dest) if dest is not None else None,
               "download_dir": os.path.abspath(run.settings.download_dir),
               "publisher": str(publisher) if publisher else None,
               "peers": [format_address(p) for p in peers], "timeout": args.timeout,
               "include": list(args.include), "exclude": list(args.exclude), "rename": rename}
    request.update(limit.through_running_node(run))
    try:
        with FetchView(run.out, content_id) as view:
            record = await control.query(state, request, _events_to(view))
    except control.NoRunningNode:
        pass
    else:
        _report_fetch(run, record, selection)
        if args.seed:
            run.out.note(f"the running node of {state} seeds it")
        return 0
    config = run.settings.node_config(long_running=args.seed)
    # A fetch holds the state directory for as long as it runs: it serves the control
    # socket so that other commands (and the terminal app) go through it meanwhile.
    async with running_node(run, config, endpoint=True) as node:
        _warn_bootstrap(run, node, by_id=_by_id(args.target, peers))
        with node.events.subscribed() as sub, FetchView(run.out, content_id) as view:
            async with following(sub, view.handle):
                result = await node.fetch(args.target, dest, publisher=publisher, peers=peers,
                                          timeout=args.timeout, selection=selection, rename=rename)
        _report_fetch(run, result.to_json(), selection)
        if args.seed:
            run.out.note("seeding; Ctrl-C to stop" if result.complete else
                         "seeding the library; these files are not served (only whole content "
                         "is); Ctrl-C to stop")
            await serve_until_signalled(run, node)
    return 0


def _events_to(view: FetchView) -> Any:
    """Feeds the node events a running node streams during a fetch to ``view``."""

    def on_line(line: dict[str, Any]) -> None:
        event = control.decode_event(line)
        if event is not None:
            view.handle(event)

    return on_line


def _report_fetch(run: Run, record: dict[str, Any], selection: Selection) -> None:
    """The result of a fetch (its ``completed`` record), and a line on how it came."""
    run.out.result(record, str(record["path"]))
    if run.out.json:
        return
    size, seconds, resumed = int(record["bytes"]), float(record["seconds"]), int(record["resumed_chunks"])
    if not record["fetched_chunks"] and not record["peers"]:
        run.out.note(f"held here already: {human_bytes(size)} verified, nothing downloaded")
    else:
        rate = size / seconds if seconds > 0 else 0.0
        paths = collections.Counter(dict(record.get("paths") or {}).values())
        how = ", ".join(f"{n} {path}" for path, n in sorted(paths.items()))
        run.out.note(f"verified {human_bytes(size)} in {seconds:.1f} s ({human_bytes(rate)}/s) from "
                     f"{plural(int(record['peers']), 'peer')}" + (f" ({how})" if how else "")
                     + (f"; {plural(resumed, 'chunk')} already here" if resumed else ""))
    if not record.get("complete", True):
        run.out.note(f"{plural(int(record.get('files') or 0), 'file')} selected ({selection.describe()}); "
                     "the rest was not fetched (the same fetch without --include/--exclude "
                     "completes it, reusing these)")


def _selection(args: argparse.Namespace) -> Selection:
    """``--include``/``--exclude`` of ``fetch`` (bad patterns are refused here, exit 2)."""
    selection = Selection(tuple(args.include), tuple(args.exclude))
    if not selection.everything and (args.output == "-" or args.file is not None):
        raise BadInput("-o - streams one file (--file PATH picks it in a folder); "
                       "--include/--exclude cannot go with it")
    return selection


def _finding(args: argparse.Namespace) -> tuple[PeerId | None, list[tuple[str, int]]]:
    """``--from`` and ``--peer`` of ``fetch`` and ``ls ID``, checked with ``--timeout``."""
    publisher = PeerId.parse(args.from_) if args.from_ else None
    peers = [parse_address(p, what="peer address") for p in args.peer]
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise BadInput("--timeout must be a number of seconds above 0")
    return publisher, peers


async def _fetch_to_stdout(run: Run, args: argparse.Namespace, content_id: ContentId,
                           publisher: PeerId | None, peers: list[tuple[str, int]]) -> int:
    """``fetch ID -o -``: the file's (``--file``: that file of a folder's) verified bytes to
    stdout in order, as they arrive (the chunks are fetched in file order); status to stderr only. The file is also kept, in the
    state directory's ``streamed`` folder (in the library, served like any download). A
    reader that goes away (``| head``) pauses the download."""
    if args.seed:
        raise BadInput("-o - streams to stdout; --seed cannot go with it")
    out = sys.stdout.buffer
    loop = asyncio.get_running_loop()

    def write_all(data: bytes | memoryview) -> None:
        out.write(data)
        out.flush()

    async def write(data: bytes | memoryview) -> None:
        await loop.run_in_executor(None, write_all, data)  # a slow reader blocks no event

    config = run.settings.node_config(long_running=False)
    keep = run.settings.state_dir / "streamed"  # the copy kept: not in the current folder
    keep.mkdir(parents=True, exist_ok=True)
    status = Output(json_mode=run.out.json, verbosity=run.out.verbosity, stdout=sys.stderr,
                    stderr=sys.stderr)
    request = {"cmd": "fetch", "target": args.target, "dest": os.path.abspath(keep),
               "publisher": str(publisher) if publisher else None,
               "peers": [format_address(p) for p in peers], "timeout": args.timeout,
               "file": args.file, "sequential": True}
    try:
        with FetchView(status, content_id) as view:
            record = await control.query(run.settings.state_dir, request, _events_to(view))
    except control.NoRunningNode:
        pass
    else:
        # Through a running node the file is written out once it is whole (and verified).
        path = Path(str(record["path"]))
        kept = path / args.file if args.file is not None and path.is_dir() else path
        try:
            with kept.open("rb") as f:
                while data := await loop.run_in_executor(None, f.read, 1 << 20):
                    await write(data)
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        run.out.note(f"streamed {human_bytes(kept.stat().st_size)}; the file is also at {kept}")
        return 0
    async with running_node(run, config, endpoint=True) as node:
        _warn_bootstrap(run, node, by_id=_by_id(args.target, peers))
        # stdout carries the file alone: progress (and --json records) go to stderr.
        try:
            with node.events.subscribed() as sub, FetchView(status, content_id) as view:
                async with following(sub, view.handle):
                    result = await node.stream(args.target, write, keep, publisher=publisher,
                                               peers=peers, timeout=args.timeout, file=args.file)
        except BrokenPipeError:
            # Nobody reads any more: stop quietly, progress kept (the same command resumes).
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            run.out.note("stdout closed; the download is paused (the same command resumes it)")
            return 0
    kept = result.path / args.file if args.file is not None and result.path.is_dir() else result.path
    run.out.note(f"streamed {human_bytes(result.size)} in {result.seconds:.1f} s; "
                 f"the file is also at {kept}")
    return 0


# -- library ---------------------------------------------------------------------------------


async def cmd_ls(run: Run, args: argparse.Namespace) -> int:
    """Shares and downloads with state and progress, straight from the store (no network);
    with a target, the files of that content (:func:`_ls_remote`)."""
    if args.target is not None:
        return await _ls_remote(run, args)
    state = run.settings.state_dir
    try:
        rows = await control.query(state, {"cmd": "ls"})
    except control.NoRunningNode:
        # No node answers: a recorded 'active' download is not running (its node was
        # killed), unless a node without a control socket (a plain `p2p fetch`) runs it.
        holder = control.running(state)
        rows = await asyncio.to_thread(_offline_rows, state, None if holder else set())
    shares, downloads = rows["shares"], rows["downloads"]
    lines = []
    if shares:
        lines.append("SHARED")
        for row in shares:
            status = row.get("status", "ok")
            lines.append(f"  {row['content_id']}  {human_bytes(row['size']):>10}  "
                         f"{row['origin']:<10}  {status:<7}  {row['path']}"
                         + (f"  ({row['note']})" if row.get("note") else ""))
    if downloads:
        lines.append("DOWNLOADS")
        for row in downloads:
            pct = 100 * row["done_chunks"] / row["chunks"] if row["chunks"] else 100.0
            shown = "     -" if row["state"] == "gone" else f"{pct:5.1f}%"
            lines.append(f"  {row['content_id']}  {human_bytes(row['size']):>10}  "
                         f"{row['state']:<11} {shown}  {row['path']}"
                         + (f"  ({row['error']})" if row["error"] else ""))
    run.out.result({"shares": shares, "downloads": downloads},
                   "\n".join(lines) if lines else "nothing shared or downloaded yet")
    return 0


def _offline_rows(state: Path, running: set[ContentId] | None) -> dict[str, Any]:
    """``p2p ls`` with no node to ask: the library read here, each share's files checked
    (blocking: called in a thread)."""
    with Library.open(state) as library:
        return control.library_rows(library, running, checked=True)


async def _ls_remote(run: Run, args: argparse.Namespace) -> int:
    """The files of ID-or-TICKET from its verified manifest: ``SIZE  PATH`` per line, or one
    JSON object per file (``path``, ``size``, ``content_id``)."""
    publisher, peers = _finding(args)
    request = {"cmd": "listing", "target": args.target,
               "publisher": str(publisher) if publisher else None,
               "peers": [format_address(p) for p in peers], "timeout": args.timeout}
    try:
        listed = await control.query(run.settings.state_dir, request)
    except control.NoRunningNode:
        config = run.settings.node_config(long_running=False)
        async with running_node(run, config, serves=False) as node:
            _warn_bootstrap(run, node, by_id=_by_id(args.target, peers))
            manifest = await node.listing(args.target, publisher=publisher, peers=peers,
                                          timeout=args.timeout)
        listed = {"name": manifest.name, "kind": manifest.kind, "size": manifest.total_size,
                  "publisher": str(manifest.publisher),
                  "entries": [{"path": e.path, "size": e.info.size, "content_id": str(e.content_id)}
                              for e in manifest.entries]}
    entries = listed["entries"]
    if run.out.json:
        run.out.emit_all(entries)
    else:
        run.out.result({}, "\n".join(f"{human_bytes(e['size']):>10}  {e['path']}"
                                      for e in entries) or "(no files)")
        run.out.note(f"{plural(len(entries), 'file')}, {human_bytes(listed['size'])} "
                     f"in {listed['name']} ({listed['kind']}), published by {listed['publisher']}")
    return 0


async def cmd_verify(run: Run, args: argparse.Namespace) -> int:
    """Re-hash the local copy of some content; exit 4 if any chunk is bad."""
    content_id = _content_id(args.id, run.settings.state_dir)
    request = {"cmd": "verify", "content_id": str(content_id)}
    try:
        report = VerifyReport.from_json(await control.query(run.settings.state_dir, request))
    except control.NoRunningNode:
        async with running_node(run, run.settings.node_config(long_running=False), serves=False) as node:
            report = await node.verify(content_id)
    run.out.result(report.to_json(), report.summary())
    problem = report.problem()
    if problem is not None:
        raise problem
    return 0


async def cmd_unshare(run: Run, args: argparse.Namespace) -> int:
    """Stop serving some content (through the running node if there is one)."""
    content_id = _content_id(args.id, run.settings.state_dir)
    try:
        result = await control.query(run.settings.state_dir,
                                     {"cmd": "unshare", "content_id": str(content_id)})
        removed = bool(result["removed"])
    except control.NoRunningNode:
        async with running_node(run, run.settings.node_config(long_running=False), serves=False) as node:
            removed = node.unshare(content_id)
    if not removed:
        raise NotFound(f"{content_id} is not shared by this node")
    run.out.result({"content_id": str(content_id), "removed": True},
                   f"no longer sharing {content_id}")
    return 0


# -- live node state --------------------------------------------------------------------------


async def cmd_peers(run: Run, args: argparse.Namespace) -> int:
    """Connected peers of the running node, with rates and strikes."""
    rows = await control.query(run.settings.state_dir, {"cmd": "peers"})
    lan = await control.query(run.settings.state_dir, {"cmd": "lan"})
    lines = [f"{'PEER':<10} {'ADDRESS':<22} DIR {'IN':>10} {'OUT':>10} {'RATE IN':>12} "
             f"{'RATE OUT':>12} STRIKES PATH"]
    for r in rows:
        path = str(r.get("path", "direct"))
        if r.get("via"):
            path += f" via {str(r['via'])[4:12]}"  # the relay's peer id, as PEER shows ids
        if r.get("source") == "lan":
            path += " (lan)"
        lines.append(f"{r['peer_id'][4:12]:<10} {r['address']:<22} {r['direction']:<3} "
                     f"{human_bytes(r['bytes_in']):>10} {human_bytes(r['bytes_out']):>10} "
                     f"{human_bytes(r['rate_in']) + '/s':>12} {human_bytes(r['rate_out']) + '/s':>12} "
                     f"{r['strikes']:<7} {path}")
    text = "\n".join(lines) if rows else "no peers connected"
    found = lan["peers"]
    text += f"\n\nLAN discovery: {lan['status']}"
    if found:
        text += "\n" + "\n".join(
            f"{p['peer_id'][4:12]:<10} {', '.join(p['addresses']):<22} lan "
            + ("DHT contact" if p["dht_contact"] else "not a DHT contact (a client, or no answer)")
            for p in found)
    elif lan["status"] == "running":
        text += " (no peer found on this network yet)"
    run.out.result({"peers": rows, "lan": found, "lan_status": lan["status"]}, text)
    return 0


async def cmd_dht(run: Run, args: argparse.Namespace) -> int:
    """Routing-table summary of the running node, or of a short-lived node that bootstraps now."""
    try:
        summary = DHTSummary.from_json(await control.query(run.settings.state_dir, {"cmd": "dht"}))
        source = "running node"
    except control.NoRunningNode:
        async with running_node(run, run.settings.node_config(long_running=False), serves=False) as node:
            _warn_bootstrap(run, node)
            summary = node.dht_summary()
        source = "fresh node (no node running for this state directory)"
    buckets = [(i, n) for i, n in enumerate(summary.buckets) if n]
    lines = [f"source      {source}",
             f"contacts    {summary.contacts} in {plural(len(buckets), 'non-empty bucket')}",
             f"addresses   {', '.join(format_address(a) for a in summary.addresses)}",
             f"bootstrap   {', '.join(format_address(a) for a in summary.bootstrap) or '(none)'}"]
    if summary.bootstrap_error:
        lines.append(f"bootstrap error: {summary.bootstrap_error}")
    lines.append("records     " + (", ".join(plural(n, f"{kind} record")
                                             for kind, n in summary.records.items()) or "none"))
    lines.append(f"uptime      {human_seconds(summary.uptime)}")
    if buckets:
        lines += ["", f"{'BUCKET':>6}  {'CONTACTS':>8}"] + [f"{i:>6}  {n:>8}" for i, n in buckets]
    run.out.result({**summary.to_json(), "source": source}, "\n".join(lines))
    return 0


async def cmd_netcheck(run: Run, args: argparse.Namespace) -> int:
    """Whether others can reach this peer (public, NAT and its kind, firewall-only, unknown),
    asked of the running node, or of a short-lived node on the configured port."""
    try:
        found = await control.query(run.settings.state_dir, {"cmd": "netcheck"})
        verdict = Reachability.from_json(found)
        source = "checked by the running node of this state directory"
    except control.NoRunningNode:
        config = dataclasses.replace(run.settings.node_config(long_running=True),
                                     dht_mode="client")
        async with running_node(run, config, serves=False) as node:
            _warn_bootstrap(run, node)
            verdict = await node.netcheck()
            source = f"checked by a short-lived node on port {node.port}"
    obj = verdict.to_json()
    obj["evidence"] = [source, *obj["evidence"]]
    nat = verdict.nat
    present = {True: "yes", False: "no", None: "unknown"}[nat.get("present")]
    lines = [f"reachability  {verdict.reachability}",
             f"nat           {present}" + (f" (we appear as {nat['external']})"
                                           if nat.get("external") else ""),
             f"mapping       {nat.get('mapping', 'unknown')}",
             f"filtering     {nat.get('filtering', 'unknown')}",
             "evidence:"] + [f"  - {line}" for line in obj["evidence"]]
    run.out.result(obj, "\n".join(lines))
    return 0


# -- channels -----------------------------------------------------------------------------------


def _need_bootstrap(run: Run, what: str) -> None:
    if not run.settings.bootstrap:
        raise BadInput(f"{what} needs a DHT: give --bootstrap HOST:PORT (or set P2P_BOOTSTRAP)")


async def cmd_publish(run: Run, args: argparse.Namespace) -> int:
    """Point this peer's channel NAME at a content id."""
    content_id = _content_id(args.id, run.settings.state_dir)
    if not args.name or "/" in args.name:
        raise BadInput(f"bad channel name {args.name!r}: it must be non-empty and contain no '/'")
    try:
        record = await control.query(run.settings.state_dir, {
            "cmd": "publish", "name": args.name, "content_id": str(content_id)})
    except control.NoRunningNode:
        _need_bootstrap(run, "publish")
        async with running_node(run, run.settings.node_config(long_running=False), serves=False) as node:
            _warn_bootstrap(run, node, by_id=True)
            published = await node.publish(args.name, content_id)
        record = {"publisher": str(published.publisher), "name": published.name,
                  "content_id": str(ContentId(published.content_id)), "seq": published.seq}
    ref = f"{record['publisher']}/{args.name}"
    run.out.result({**record, "ref": ref}, f"{ref} -> {record['content_id']} (seq {record['seq']})")
    return 0


async def cmd_resolve(run: Run, args: argparse.Namespace) -> int:
    """The content id PUBLISHER/NAME currently points at."""
    publisher_text, sep, name = args.ref.partition("/")
    if not sep or not name:
        raise BadInput(f"expected PUBLISHER/NAME (a peer id as `p2p id` prints it), got {args.ref!r}")
    publisher = PeerId.parse(publisher_text)
    try:
        record = await control.query(run.settings.state_dir, {
            "cmd": "resolve", "publisher": str(publisher), "name": name})
    except control.NoRunningNode:
        _need_bootstrap(run, "resolve")
        async with running_node(run, run.settings.node_config(long_running=False), serves=False) as node:
            _warn_bootstrap(run, node, by_id=True)
            found = await node.resolve(publisher, name)
        record = {"publisher": str(found.publisher), "name": found.name,
                  "content_id": str(ContentId(found.content_id)), "seq": found.seq}
    run.out.result(record, str(record["content_id"]))
    return 0


# -- managing downloads -------------------------------------------------------------------------


async def cmd_rm(run: Run, args: argparse.Namespace) -> int:
    """Stop a download and forget it, keeping its partial data (``--delete``: deleting it)."""
    content_id = _content_id(args.id, run.settings.state_dir)
    try:
        result = await control.query(run.settings.state_dir, {
            "cmd": "rm", "content_id": str(content_id), "delete": bool(args.delete)})
    except control.NoRunningNode:
        async with running_node(run, run.settings.node_config(long_running=False), serves=False) as node:
            result = (await node.remove(content_id, delete=bool(args.delete))).to_json()
    name, partial = result["name"], result["partial"]
    if result["state"] == "complete":
        text = f"removed {name} from the library (no longer served); the file stays at {result['dest']}"
    elif partial is None:
        text = f"removed the download of {name}; it had no partial data"
    elif result["deleted"]:
        text = f"removed the download of {name}; deleted its partial data {partial}"
    else:
        text = (f"removed the download of {name}; its partial data is kept at {partial} "
                "(`p2p fetch ID` to the same place checks it and reuses it; `p2p rm --delete ID` "
                "would have deleted it)")
    run.out.result(result, text)
    return 0


async def cmd_pause(run: Run, args: argparse.Namespace) -> int:
    """Pause a download (progress kept); it stays paused until ``p2p resume``."""
    content_id = _content_id(args.id, run.settings.state_dir)
    try:
        result = await control.query(run.settings.state_dir, {"cmd": "pause", "content_id": str(content_id)})
    except control.NoRunningNode:
        async with running_node(run, run.settings.node_config(long_running=False), serves=False) as node:
            result = {"content_id": str(content_id), "was": await node.hold(content_id)}
    was = result["was"]
    run.out.result(result, f"paused {content_id} (it was {was}); `p2p resume ID` goes on with it")
    return 0


async def cmd_resume(run: Run, args: argparse.Namespace) -> int:
    """Resume a paused or stopped download on the running node (in the background)."""
    content_id = _content_id(args.id, run.settings.state_dir)
    try:
        result = await control.query(run.settings.state_dir, {"cmd": "resume", "content_id": str(content_id)})
    except control.NoRunningNode:
        # No node to run it: mark it for the next one (`p2p serve`), which resumes it at start.
        async with running_node(run, run.settings.node_config(long_running=False), serves=False) as node:
            was = node.mark_resumable(content_id)
        result = {"content_id": str(content_id), "was": was, "running": False}
        run.out.result(result, f"no node is running for {run.settings.state_dir}: {content_id} "
                               "resumes when one starts (`p2p serve`); `p2p fetch ID` fetches "
                               "it now in the foreground")
        return 0
    text = (f"{content_id} is already downloading" if result["was"] == "active" else
            f"resuming {content_id} on the running node (`p2p ls` shows its progress)")
    run.out.result({**result, "running": True}, text)
    return 0
