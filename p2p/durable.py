"""Durable writes: what survives an OS crash, written in one place.

Used by the identity key, the DHT routing table and finished downloads.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import re
import tempfile
from collections.abc import Callable
from pathlib import Path


def _syncfs_call() -> Callable[[int], int] | None:
    """libc's ``syncfs``, only where it reports writeback errors (Linux 5.8 and later): before,
    it returned success even when the data never reached the disk."""
    found = re.match(r"(\d+)\.(\d+)", platform.release())
    if platform.system() != "Linux" or found is None or (int(found[1]), int(found[2])) < (5, 8):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int]
    call.restype = ctypes.c_int
    return call


_SYNCFS = _syncfs_call()


def sync_filesystem(fd: int) -> bool:
    """Write out the whole file system ``fd`` is on and wait (``syncfs``). False where the call
    is missing or would not report errors (then sync each file instead). Raises ``OSError`` if
    writing back anything on that file system failed since ``fd`` was opened.

    One call instead of one ``fdatasync`` per file: a batch of small files costs one journal
    commit instead of one each.
    """
    if _SYNCFS is None:
        return False
    if _SYNCFS(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return True


def fsync_dir(path: Path) -> None:
    """``fsync`` a folder, so a file created or renamed in it survives an OS crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | bytearray, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old file or the new one, never
    a mix: write a uniquely named temporary file (created with ``mode``), ``fsync`` it, rename it
    over ``path``, ``fsync`` the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:  # a large write may be taken in parts
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
