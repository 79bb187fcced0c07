"""Picking files of a folder: ``--include`` / ``--exclude`` globs and explicit path sets.

Pure code: patterns in, a predicate over a manifest's relative paths out. Paths are the
``/``-separated ones ``p2p ls ID`` prints (:attr:`~p2p.content.FileEntry.path`); a single
file's path is its name.

Glob rules (what ``docs/cli.md`` documents):

* a pattern matches a whole relative path, from its first component (``*.txt`` is a
  top-level ``.txt`` file; ``**/*.txt`` is one at any depth);
* ``*`` is any run of characters within one path component, ``?`` one character, and
  ``[abc]``, ``[a-z]``, ``[!abc]`` a character class as :mod:`fnmatch` has them; none of them
  ever matches ``/``;
* ``**`` as a whole component is any number of components, none included: ``a/**/b``
  matches ``a/b`` and ``a/x/y/b``, and ``a/**`` everything under ``a``;
* a pattern that matches a folder matches everything in it (``docs`` and ``docs/`` both pick
  every file under ``docs``), as rsync and restic users expect.

Include then exclude: with no include every file is a candidate, else only those an
include matches; an exclude always wins. An explicit set of paths (the terminal app's
ticked files) is a third filter on top.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..errors import BadInput
from .manifest import Manifest

__all__ = ["Glob", "Selection", "compile_glob"]

MAX_PATTERN_BYTES = 4096
"""Longest pattern accepted: a path may be PATH_MAX (4096) bytes long, so no useful pattern is
longer, and a bound keeps the compiled expression small."""


class Glob:
    """One compiled pattern. :meth:`matches` tells whether it picks a relative path."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        # "(?:/.*)?": the path, or a folder it lies in (a component holds no "/"), in one match
        # instead of one per folder (and no loop over the path's characters).
        self._regex = re.compile(_translate(pattern) + "(?:/.*)?", re.DOTALL)

    def matches(self, path: str) -> bool:
        """Whether the pattern matches ``path`` or one of the folders it lies in."""
        return self._regex.fullmatch(path) is not None

    def __repr__(self) -> str:
        return f"Glob({self.pattern!r})"


def compile_glob(pattern: str) -> Glob:
    """Compile ``pattern``; raises :class:`~p2p.errors.BadInput` saying what is wrong with it."""
    return Glob(pattern)


def _translate(pattern: str) -> str:
    """The regular expression of ``pattern`` (see the module for the rules)."""
    if not pattern:
        raise BadInput("an empty pattern matches nothing; give a glob such as '*.txt' or 'docs/**'")
    if len(pattern.encode()) > MAX_PATTERN_BYTES:
        raise BadInput(f"pattern is longer than {MAX_PATTERN_BYTES} bytes")
    if pattern.startswith("/"):
        raise BadInput(f"bad pattern {pattern!r}: patterns match paths relative to the shared "
                       "folder (as `p2p ls ID` prints them); drop the leading '/'")
    if "\\" in pattern:
        raise BadInput(f"bad pattern {pattern!r}: paths are '/'-separated and have no '\\'")
    components = pattern.rstrip("/").split("/")
    if any(c == "" for c in components):
        raise BadInput(f"bad pattern {pattern!r}: empty path component ('//')")
    out: list[str] = []
    for pos, component in enumerate(components):
        last = pos == len(components) - 1
        if component == "**":
            # Zero or more whole components, each followed by "/" (or, last, anything below).
            out.append("(?:.*)?" if last else "(?:[^/]*/)*")
            continue
        if "**" in component:
            raise BadInput(f"bad pattern {pattern!r}: '**' must be a whole path component "
                           "(as in 'a/**/b'); within a component use '*'")
        out.append(_component(pattern, component) + ("" if last else "/"))
    return "".join(out)


def _component(pattern: str, text: str) -> str:
    """One component's expression: ``*``, ``?`` and classes never cross ``/``.

    As :mod:`fnmatch` since Python 3.11, a ``*`` followed by more of the component takes the
    first place where the rest up to the next ``*`` matches, in an atomic group: that place
    is always a right one, and without the group ``*_*_*_*.jpg`` against a name of 255
    underscores (a publisher chooses the names) backtracks through some 255^4 tries.
    """
    pieces: list[str | None] = []  # None: a "*"
    i = 0
    while i < len(text):
        c = text[i]
        if c == "*":
            pieces.append(None)  # never two in a row: "**" within a component is refused
        elif c == "?":
            pieces.append("[^/]")
        elif c == "[":
            end, cls = _char_class(pattern, text, i)
            pieces.append(cls)
            i = end
        else:
            pieces.append(re.escape(c))
        i += 1
    runs: list[list[str]] = [[]]  # the runs between stars
    for piece in pieces:
        if piece is None:
            runs.append([])
        else:
            runs[-1].append(piece)
    head, *tails = ["".join(run) for run in runs]
    if not tails:
        return head
    *middle, last = tails  # the last run ends the component: a greedy star before it
    return head + "".join(f"(?>[^/]*?{run})" for run in middle) + "[^/]*" + last


def _char_class(pattern: str, text: str, start: int) -> tuple[int, str]:
    """The class opening at ``text[start]`` (``[``): (index of its ``]``, its expression).

    As :mod:`fnmatch`: ``!`` first negates, a ``]`` right after the opening (or after ``!``)
    is a literal. Unlike fnmatch, an unclosed ``[`` is an error, not a literal: a typo
    should not silently match nothing.
    """
    i = start + 1
    negate = i < len(text) and text[i] == "!"
    if negate:
        i += 1
    body_start = i
    if i < len(text) and text[i] == "]":
        i += 1
    while i < len(text) and text[i] != "]":
        i += 1
    if i >= len(text):
        raise BadInput(f"bad pattern {pattern!r}: '[' opens a character class that is never "
                       "closed with ']' (write '[[]' for a literal '[')")
    body = text[body_start:i]
    ranges = re.findall(r".-.|.", body, flags=re.DOTALL)
    for item in ranges:
        if len(item) == 3 and item[0] > item[2]:
            raise BadInput(f"bad pattern {pattern!r}: range {item!r} is backwards")
    escaped = "".join(re.escape(r[0]) + "-" + re.escape(r[2]) if len(r) == 3 else re.escape(r)
                      for r in ranges)
    # A class never matches "/": negated, "/" is added to what it refuses; otherwise "/"
    # listed in it is left out (a path component holds none).
    if negate:
        return i, f"[^/{escaped}]"
    return i, f"(?!/)[{escaped}]"


@dataclass(frozen=True)
class Selection:
    """Which files of a manifest a download wants.

    Built by the front end (``--include``/``--exclude``, ticked files) and carried in
    :class:`~p2p.swarm.download.FetchOptions`. The empty selection (no patterns, no paths)
    wants everything.
    """

    include: tuple[str, ...] = ()
    """Globs; with none, every file is a candidate."""
    exclude: tuple[str, ...] = ()
    """Globs; a file any of them matches is left out, whatever else picked it."""
    paths: frozenset[str] | None = None
    """Exactly these relative paths (the terminal app's ticks); None: no such filter."""
    _include: tuple[Glob, ...] = field(init=False, repr=False, compare=False)
    _exclude: tuple[Glob, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Compiled once, and checked here: a bad pattern fails before anything starts.
        object.__setattr__(self, "_include", tuple(compile_glob(p) for p in self.include))
        object.__setattr__(self, "_exclude", tuple(compile_glob(p) for p in self.exclude))

    @classmethod
    def of_paths(cls, paths: Iterable[str]) -> Selection:
        """Exactly ``paths`` (relative, as the manifest names them)."""
        return cls(paths=frozenset(paths))

    @property
    def everything(self) -> bool:
        """No filter at all: every file is wanted."""
        return not self.include and not self.exclude and self.paths is None

    def matches(self, path: str) -> bool:
        """Whether the file at relative ``path`` is wanted."""
        if self.paths is not None and path not in self.paths:
            return False
        if self._include and not any(g.matches(path) for g in self._include):
            return False
        return not any(g.matches(path) for g in self._exclude)

    def entries(self, manifest: Manifest) -> list[int]:
        """Indexes of the manifest's entries this selection wants, in manifest order."""
        return [i for i, e in enumerate(manifest.entries) if self.matches(e.path)]

    def check(self, manifest: Manifest) -> list[int]:
        """:meth:`entries`, raising :class:`~p2p.errors.BadInput` when it picks nothing, or
        when an include pattern (or a ticked path) matches no file at all: a typo is said,
        not fetched around."""
        paths = [e.path for e in manifest.entries]
        for glob in self._include:
            if not any(glob.matches(p) for p in paths):
                raise BadInput(f"--include {glob.pattern!r} matches no file of {manifest.name} "
                               "(see `p2p ls ID` for its paths)")
        if self.paths is not None:
            unknown = sorted(self.paths - set(paths))
            if unknown:
                raise BadInput(f"{manifest.name} has no file {unknown[0]!r}")
        picked = self.entries(manifest)
        if not picked and manifest.entries:
            raise BadInput(f"the selection ({self.describe()}) matches no file of "
                           f"{manifest.name}: every file it picks is excluded")
        return picked

    def describe(self) -> str:
        """The selection in one line, for messages."""
        parts = [f"--include {p}" for p in self.include] + [f"--exclude {p}" for p in self.exclude]
        if self.paths is not None:
            parts.append(f"{len(self.paths)} ticked files")
        return " ".join(parts) or "every file"
