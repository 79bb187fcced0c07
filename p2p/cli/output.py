"""Where the command line writes: results on stdout (text or JSON lines), the rest on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

from rich.console import Console


def to_json(obj: object) -> str:
    """One compact JSON line; paths, ids and other objects become their text form."""
    return json.dumps(obj, default=str, separators=(",", ":"))


class Output:
    """Results go to stdout (one JSON object per line with ``--json``); progress and notes to stderr.

    Keeping stdout for results alone lets scripts read ``p2p share --json | head -1``
    while a person still sees progress bars on the terminal.
    """

    def __init__(self, *, json_mode: bool, verbosity: int, stdout: TextIO | None = None,
                 stderr: TextIO | None = None) -> None:
        self.json = json_mode
        self.verbosity = verbosity
        self._stdout = stdout or sys.stdout
        self.err = Console(file=stderr or sys.stderr, highlight=False, soft_wrap=True)
        self.out = Console(file=self._stdout, highlight=False, soft_wrap=True)

    @property
    def live(self) -> bool:
        """Whether animated progress (bars, live tables) should be drawn on stderr."""
        return self.err.is_terminal and self.verbosity >= 0

    def result(self, obj: Mapping[str, Any], text: str | None = None) -> None:
        """A command's result: a JSON line with ``--json``, else ``text`` (if any), flushed at once."""
        if self.json:
            self.emit(obj)
        elif text is not None:
            self.out.print(text, markup=False)
            self._stdout.flush()

    def emit(self, obj: Mapping[str, Any]) -> None:
        """One JSON line on stdout, flushed (a running process's readers see it at once)."""
        self._stdout.write(to_json(obj) + "\n")
        self._stdout.flush()

    def emit_all(self, objs: Iterable[Mapping[str, Any]], *, batch: int = 4096) -> None:
        """One JSON line per object, written ``batch`` lines at a time: a listing of a million
        files is not a million flushes."""
        lines: list[str] = []
        for obj in objs:
            lines.append(to_json(obj))
            if len(lines) >= batch:
                self._stdout.write("\n".join(lines) + "\n")
                lines.clear()
        if lines:
            self._stdout.write("\n".join(lines) + "\n")
        self._stdout.flush()

    def note(self, text: str, *, level: int = 0) -> None:
        """A status line on stderr, shown unless ``-q`` (or unless fewer ``-v`` than ``level``)."""
        if self.verbosity >= level:
            self.err.print(text, markup=False)
