"""Path safety: relative paths from an untrusted manifest, and writing under a destination.

A directory manifest names files by relative path. Those names come from a
stranger, so :func:`check_relative_path` is the one gate they pass through, and
:func:`open_under` the one way files are created under a destination: it walks
the path one component at a time with ``O_NOFOLLOW``, so a symlink planted
inside the destination (by an earlier, hostile download, say) is refused
rather than followed.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from ..errors import UnsafePath

MAX_COMPONENT_BYTES = 255  # the common file-system limit for one name
MAX_PATH_BYTES = 4096  # PATH_MAX on Linux
MAX_DEPTH = 64

_WINDOWS_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"COM{i}" for i in range(10)] + [f"LPT{i}" for i in range(10)]
    + ["COM\u00b9", "COM\u00b2", "COM\u00b3", "LPT\u00b9", "LPT\u00b2", "LPT\u00b3"]
)
# Control characters, and characters Windows forbids in names (':' also covers
# drive letters "C:" and alternate data streams "a:b").
_FORBIDDEN = re.compile(r'[\x00-\x1f\x7f<>:"|?*\\]')


def check_relative_path(path: str) -> tuple[str, ...]:
    """Accept ``path`` (``/``-separated, relative) only if it cannot escape a destination folder.

    Returns its components. Raises :class:`UnsafePath` naming the problem for:
    an empty path, an absolute path, empty, ``.`` or ``..`` components, NUL or
    other control characters, backslashes, ``:`` (drive letters, streams),
    Windows device names (``CON``, ``nul.txt``, ``COM1``...), names ending in a
    dot or space (Windows strips them, so two names could collide), and
    over-long names or paths.
    """
    if not isinstance(path, str) or not path:
        raise UnsafePath("empty path in manifest")
    # Whole-path checks first, each one call: a listing of a million paths passes this gate in
    # seconds, not in a loop over every character.
    try:
        raw = path.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafePath("path with unpaired surrogates in manifest") from None
    if len(raw) > MAX_PATH_BYTES:
        raise UnsafePath(f"path longer than {MAX_PATH_BYTES} bytes in manifest")
    if path.startswith("/"):
        raise UnsafePath(f"absolute path in manifest: {path[:80]!r}")
    if _FORBIDDEN.search(path):  # "/" is not forbidden: one search covers every component
        raise UnsafePath(f"path with a forbidden character in manifest: {path[:80]!r}")
    parts = tuple(path.split("/"))
    if len(parts) > MAX_DEPTH:
        raise UnsafePath(f"path deeper than {MAX_DEPTH} levels in manifest")
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafePath(f"path with an empty, '.' or '..' component in manifest: {path[:80]!r}")
        # A name of at most MAX_COMPONENT_BYTES // 4 characters fits whatever they are.
        if len(part) > MAX_COMPONENT_BYTES // 4 and len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise UnsafePath(f"name longer than {MAX_COMPONENT_BYTES} bytes in manifest")
        if part[-1] in ". ":
            raise UnsafePath(f"name ending in a dot or space in manifest: {path[:80]!r}")
        if part.split(".", 1)[0].rstrip(" ").upper() in _WINDOWS_DEVICES:
            raise UnsafePath(f"device name in manifest: {path[:80]!r}")
    return parts


def open_under(root: Path, relpath: str, flags: int, mode: int = 0o644, *, root_fd: int | None = None,
               folders: dict[str, int] | None = None) -> int:
    """Open ``root/relpath`` with ``flags``, creating parent folders, never following a symlink.

    ``relpath`` is checked with :func:`check_relative_path`. Every component
    (folders and the file) is opened relative to its parent with
    ``O_NOFOLLOW``, so a symlink anywhere below ``root`` raises
    :class:`UnsafePath`. ``root`` itself is trusted (the person chose it);
    ``root_fd``, a directory descriptor of ``root`` the caller keeps open, saves
    opening it again (a download opens many files under one folder).
    ``folders``, the caller's descriptors of folders below ``root`` by relative path
    (``"a/b"``), saves walking to the file's folder again: it is taken from there when
    present, else put there once opened (walked as above); the caller closes them.
    Returns a file descriptor the caller closes.
    """
    parts = check_relative_path(relpath)
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    parent = "/".join(parts[:-1])
    cached = folders.get(parent) if folders is not None and parent else None
    dirfd = cached if cached is not None else \
        os.open(root, os.O_RDONLY | os.O_DIRECTORY) if root_fd is None else root_fd
    try:
        for part in parts[:-1] if cached is None else ():
            try:
                try:
                    nextfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | nofollow, dir_fd=dirfd)
                except FileNotFoundError:  # made on first use: one call per existing folder
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=dirfd)
                    nextfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | nofollow, dir_fd=dirfd)
            except OSError as exc:
                if exc.errno in (getattr(os, "ELOOP", 40), getattr(os, "ENOTDIR", 20)):
                    raise UnsafePath(f"{part!r} under {root} is a link or not a folder; refusing to write through it") from None
                raise
            if dirfd != root_fd:
                os.close(dirfd)
            dirfd = nextfd
        if folders is not None and parent and cached is None:
            folders[parent] = cached = dirfd  # the caller's now
        try:
            return os.open(parts[-1], flags | nofollow, mode, dir_fd=dirfd)
        except OSError as exc:
            if exc.errno == getattr(os, "ELOOP", 40):
                raise UnsafePath(f"{relpath!r} under {root} is a symlink; refusing to write through it") from None
            raise
    finally:
        if dirfd != root_fd and dirfd != cached:
            os.close(dirfd)
