"""Errors, typed by who is to blame.

Every error the library raises on purpose derives from :class:`P2PError`. The
front ends translate them to exit codes in exactly one place (the CLI's
exit-code map) using :attr:`P2PError.exit_code`; the library never exits.

The families:

* :class:`BadInput` -- the person (or script) gave us something malformed: an
  id, a ticket, an address, a path. Exit code 2.
* :class:`NotFound` -- the content (or a record) could not be found in time.
  Exit code 3.
* :class:`IntegrityError` -- bytes or signatures did not check out. Exit code 4.
* :class:`NetworkError` -- the world got in the way: cannot bind, nobody
  reachable. Exit code 5. Retrying elsewhere may help.
* :class:`RemoteProtocolError` -- a remote peer broke the protocol (h11's name). The
  node drops that peer (and may strike or ban it); it never reaches a person as-is.
* :class:`LocalProtocolError` -- this program misused a protocol object: a bug.
* :class:`StoreError` -- something on this machine is in the way that the person can
  fix: the state directory is in use by a running node or unusable, a key file has
  unsafe permissions, the destination exists or cannot be written, the disk is full.
  Exit code 6. (Exit code 1 is kept for bugs alone.)
* :class:`AlreadyDownloading` -- this node is downloading that content right now.

:mod:`p2p.exitcodes` is the one map from errors (and from anything else that ends a
front end: interrupts, bugs) to exit codes.
"""

from __future__ import annotations

from collections.abc import Sequence


class P2PError(Exception):
    """Base of every error this library raises on purpose."""

    exit_code: int = 1


# -- the person's input ---------------------------------------------------------


class BadInput(P2PError, ValueError):
    """Input from a person or a script is malformed (a bad id, ticket, address or path)."""

    exit_code = 2


class UnsafePath(BadInput):
    """A relative path from an untrusted manifest could escape the destination folder.

    The whole download is refused: a publisher that names such a path is either
    broken or hostile, and nothing of it is written.
    """

    exit_code = 4


# -- not found ------------------------------------------------------------------


class NotFound(P2PError):
    """The content (or record) was not found: no provider answered within the time allowed.

    Check the id (a ticket names the sharer's addresses and needs no DHT), make sure
    the sharer is still running and reachable, or allow more time (``--timeout``).
    """

    exit_code = 3


# -- integrity --------------------------------------------------------------------


class IntegrityError(P2PError):
    """Bytes, a manifest or a signature failed verification.

    Nothing unverified was written. The peer that sent it is struck; fetching again
    asks other peers.
    """

    exit_code = 4


class ContentIdMismatch(IntegrityError):
    """The manifest's chunk list does not hash to the content id that was asked for."""


class BadSignature(IntegrityError):
    """A signature does not verify under the key it claims."""


class WrongPublisher(IntegrityError):
    """The content is signed by a different publisher than the one required (``--from`` or the
    ticket's). Someone else published these bytes: check who gave you the id or ticket."""


class ContentChanged(IntegrityError):
    """A shared file changed on disk since it was shared; it is no longer served as the old content."""


# -- network ------------------------------------------------------------------------


class NetworkError(P2PError):
    """The network got in the way: cannot bind, cannot connect, nobody reachable.

    Retrying, later or elsewhere, may help; for a port in use, pick another with
    ``--listen HOST:PORT`` (port 0 takes any free one).
    """

    exit_code = 5


class NoRunningNode(NetworkError):
    """No node of this state directory is running (nothing answers on its control socket)."""


class ControlError(P2PError):
    """The running node refused a control request; carries the exit code it chose."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class BootstrapUnreachable(NetworkError):
    """None of the bootstrap nodes given (``--bootstrap``, ``P2P_BOOTSTRAP``, the config file)
    answered: the address is wrong, nothing listens there (a refused port looks the same
    over UDP), or a firewall is in the way. Content can still be fetched by ticket or with
    ``--peer``; finding it by id alone needs a bootstrap node that answers."""

    def __init__(self, failures: Sequence[tuple[str, str]]) -> None:
        self.failures = tuple(failures)
        """(the address as given, why it failed) per bootstrap node."""
        super().__init__("could not reach " + " nor ".join(
            f"the bootstrap node {where} ({why})" for where, why in self.failures))


class PortInUse(NetworkError):
    """Another program (often another node: ``p2p serve``, a ``share``) already listens on
    this port. Stop it, talk to it (commands on its state directory reach the running node),
    or pick another port: ``--listen HOST:0`` takes any free one."""

    def __init__(self, message: str, port: int, transport: str) -> None:
        super().__init__(message)
        self.port = port
        """The port asked for."""
        self.transport = transport
        """``tcp`` or ``udp``: where the port was taken."""


# -- remote peers -------------------------------------------------------------------


class RemoteProtocolError(P2PError):
    """A remote peer sent something the protocol forbids (malformed frame, bad field, tampered record).

    The peer is to blame: the connection to it is closed (and the peer may be struck
    or banned); the node goes on. You only see this if the one peer you asked for
    misbehaved; trying other peers usually helps.
    """

    exit_code = 5


class LocalProtocolError(P2PError, RuntimeError):
    """This program used a protocol object wrongly (for example, sent before the handshake).

    A bug in this program, not in the peer or in your input: please report it
    with the command that led to it.
    """


class DecodeError(RemoteProtocolError, BadInput):
    """Bytes that were supposed to be one of our encodings are malformed or exceed a limit.

    Raised by every decoder. When the bytes came from a peer, the peer is to
    blame; when they came from a person (a ticket), it is bad input.
    """

    exit_code = 2


# -- local state ----------------------------------------------------------------------


class StoreError(P2PError):
    """The local state directory, database or destination cannot be used as asked (its path is
    in the message).

    Check that it exists, is yours and is writable, or point ``--state-dir`` (or ``-o``)
    elsewhere.
    """

    exit_code = 6


class DestinationExists(StoreError, BadInput):
    """Something different is already where the content would go; it is not overwritten.

    Nothing is overwritten and nothing was downloaded: choose another destination with ``-o``,
    ``--rename`` to save it beside as ``NAME (1).EXT``, or move what is there out of the way. (Also a
    :class:`BadInput`, as the destination was the person's choice; its exit code is the
    local problem's, 6.)
    """

    exit_code = 6


class AlreadyDownloading(P2PError):
    """This node is already downloading that content.

    Nothing is wrong: the download in progress goes on. Wait for it (the
    terminal app's Transfers tab shows it) or pause it before fetching again with
    other options.
    """


class StateDirLocked(StoreError):
    """Another process is using this part of the state directory right now (a running node, or
    the same download in another process). Stop it, wait for it, or use another ``--state-dir``.

    Exit code 6: nothing is wrong, only busy; while a node runs, every command talks to it."""

    exit_code = 6


class InsecureKeyFile(StoreError):
    """The identity key file can be read by other users; refusing to use it (as ssh does)."""


class DiskFull(StoreError):
    """The disk (or the file-size limit) is full. Verified progress is kept; free space and run again."""
