"""Exit code 1 is for bugs alone: everything a person can fix maps to its own code."""

from __future__ import annotations

import errno

import pytest

from p2p import (
    EXIT_INTERNAL,
    EXIT_LOCAL,
    EXIT_NETWORK,
    EXIT_USAGE,
    BadInput,
    DestinationExists,
    DiskFull,
    LocalProtocolError,
    PortInUse,
    StateDirLocked,
    StoreError,
    exit_code_for,
)


@pytest.mark.parametrize(("exc", "code"), [
    (StateDirLocked("a node of /s is already running"), EXIT_LOCAL),
    (StoreError("the database in /s is unusable"), EXIT_LOCAL),
    (DiskFull("no space"), EXIT_LOCAL),
    (DestinationExists("/x already exists"), EXIT_LOCAL),
    (PermissionError(errno.EACCES, "Permission denied", "/ro/x"), EXIT_LOCAL),
    (OSError(errno.EROFS, "Read-only file system", "/ro/x"), EXIT_LOCAL),
    (FileExistsError(errno.EEXIST, "File exists", "/x"), EXIT_LOCAL),
    (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), EXIT_NETWORK),
    (PortInUse("in use", 7473, "tcp"), EXIT_NETWORK),
    (BadInput("bad"), EXIT_USAGE),
    (BaseExceptionGroup("one", [DiskFull("no space")]), EXIT_LOCAL),
    (LocalProtocolError("misuse"), EXIT_INTERNAL),
    (KeyError("a bug"), EXIT_INTERNAL),
    (OSError(errno.EBADF, "Bad file descriptor"), EXIT_INTERNAL),  # our own misuse
])
def test_exit_codes(exc: BaseException, code: int) -> None:
    assert exit_code_for(exc) == code


def test_destination_exists_is_also_bad_input() -> None:
    assert isinstance(DestinationExists("x"), BadInput)
