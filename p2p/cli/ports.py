"""Who holds a port: so that "the port is in use" can name the process and say what to do.

Linux only (``/proc``), and only processes whose descriptors we may read, which for a
person who is not root means their own: exactly the case where the advice "stop it" is
theirs to follow. Elsewhere, or when nothing is found, the message gives the general advice
alone. Read on the error path only, never while a command runs.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
_LISTEN_STATE = "0A"
"""TCP_LISTEN in /proc/net/tcp's ``st`` column."""
_OUR_PROGRAMS = ("p2p", "p2p-tui", "p2p-bootstrap")
_OUR_MODULES = ("p2p.cli", "p2p", "tui", "bootstrap")


@dataclass(frozen=True)
class Holder:
    """A process that has the port open."""

    pid: int
    argv: tuple[str, ...]

    @property
    def ours(self) -> bool:
        """Whether it is one of this project's programs (a node: ``p2p serve``, the terminal app...)."""
        if not self.argv:
            return False
        if os.path.basename(self.argv[0]) in _OUR_PROGRAMS:
            return True
        args = list(self.argv)
        return any(a == "-m" and i + 1 < len(args) and args[i + 1] in _OUR_MODULES
                   for i, a in enumerate(args)) or any(
            os.path.basename(a) in _OUR_PROGRAMS for a in args[1:2])

    def command(self) -> str:
        """Its command line, shortened for one line of text."""
        args = list(self.argv)
        if "-m" in args and args.index("-m") + 1 < len(args):
            module = args[args.index("-m") + 1]
            name = {"p2p.cli": "p2p", "p2p": "p2p", "tui": "p2p-tui",
                    "bootstrap": "p2p-bootstrap"}.get(module, module)
            args = [name, *args[args.index("-m") + 2:]]
        elif args:
            args = [os.path.basename(args[0]), *args[1:]]
        text = shlex.join(args)
        return text if len(text) <= 100 else text[:97] + "..."


def port_holders(port: int, transport: str, proc: Path = PROC) -> list[Holder]:
    """The processes that listen on ``port`` (``tcp``) or have it bound (``udp``)."""
    inodes: set[str] = set()
    for table in (transport, transport + "6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            try:
                local_port = int(fields[1].rpartition(":")[2], 16)
            except ValueError:
                continue
            if local_port == port and (transport == "udp" or fields[3] == _LISTEN_STATE):
                inodes.add(fields[9])
    inodes.discard("0")
    if not inodes:
        return []
    wanted = {f"socket:[{inode}]" for inode in inodes}
    holders = []
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return []
    for pid in pids:
        try:
            fds = os.listdir(proc / pid / "fd")
        except OSError:
            continue  # not ours, or gone
        for fd in fds:
            try:
                target = os.readlink(proc / pid / "fd" / fd)
            except OSError:
                continue
            if target in wanted:
                try:
                    raw = (proc / pid / "cmdline").read_bytes()
                except OSError:
                    raw = b""
                argv = tuple(a.decode(errors="replace") for a in raw.split(b"\0") if a)
                holders.append(Holder(int(pid), argv))
                break
    return holders


def advice(port: int, transport: str, proc: Path = PROC) -> str:
    """What to tell a person whose port is taken: who holds it (when we can see) and what to do."""
    holders = [h for h in port_holders(port, transport, proc) if h.pid != os.getpid()]
    todo = "pick another port with --listen HOST:PORT (--listen 0.0.0.0:0 takes any free one)"
    if not holders:
        return todo
    holder = holders[0]
    if holder.ours:
        return (f"it is held by another node of yours, process {holder.pid} "
                f"(`{holder.command()}`): use it (commands with its --state-dir reach it), stop "
                f"it (kill {holder.pid}), or {todo}")
    return f"it is held by process {holder.pid} (`{holder.command()}`): stop it, or {todo}"
