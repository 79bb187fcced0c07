"""The one map from how a front end ended to its exit code, used by all three of them.

``p2p``, ``p2p-tui`` and ``p2p-bootstrap`` exit with the same code for the same
error: a not-found is 3 and a failed integrity check is 4 whichever program met
it. The codes are documented in README.md and docs/cli.md.
"""

from __future__ import annotations

import errno
import signal

from .errors import LocalProtocolError, P2PError

__all__ = [
    "EXIT_BUSY",
    "EXIT_INTEGRITY",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_LOCAL",
    "EXIT_NETWORK",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_USAGE",
    "describe",
    "exit_code_for",
]

EXIT_OK = 0
EXIT_INTERNAL = 1
"""A bug, and nothing else: every problem a person can fix has its own code."""
EXIT_USAGE = 2
"""Bad usage or malformed input."""
EXIT_NOT_FOUND = 3
EXIT_INTEGRITY = 4
EXIT_NETWORK = 5
EXIT_LOCAL = 6
"""Something on this machine is in the way: a node already running on the state directory, an
unusable state directory, a destination that exists or cannot be written, a full disk."""
_LOCAL_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.EEXIST, errno.ENOSPC,
                           errno.EDQUOT, errno.ENOTDIR, errno.EISDIR, errno.ENOENT, errno.EMFILE,
                           errno.ENFILE, errno.ENAMETOOLONG, errno.EFBIG, errno.ELOOP})
"""Errors of the file system that reach a front end unwrapped: the machine, not a bug."""
EXIT_BUSY = EXIT_LOCAL
"""The same code, named for a node already running on the state directory."""
EXIT_INTERRUPTED = 128 + signal.SIGINT
"""Ctrl-C (130); other signals give 128 + their number."""


def exit_code_for(exc: BaseException) -> int:
    """The exit code for ``exc``: its :attr:`P2PError.exit_code`, 130 for Ctrl-C, else 1.

    A group holding one exception (what a task group raises) maps like that exception.
    """
    match exc:
        case BaseExceptionGroup() if len(exc.exceptions) == 1:
            return exit_code_for(exc.exceptions[0])
        case KeyboardInterrupt():
            return EXIT_INTERRUPTED
        case LocalProtocolError():
            return EXIT_INTERNAL
        case P2PError():
            return exc.exit_code
        case ConnectionError() | TimeoutError():
            return EXIT_NETWORK
        case OSError(errno=code) if code in _LOCAL_ERRNOS:
            return EXIT_LOCAL
        case _:
            return EXIT_INTERNAL


def describe(exc: BaseException) -> str:
    """The one plain line a person reads for ``exc``."""
    match exc:
        case BaseExceptionGroup() if len(exc.exceptions) == 1:
            return describe(exc.exceptions[0])
        case P2PError():
            return str(exc) or type(exc).__name__
        case OSError(filename=name, strerror=reason) if reason:
            return f"{name}: {reason}" if name else str(reason)
        case _:
            return f"internal error: {type(exc).__name__}: {exc}"
