"""Bind the service's HTTP port with ``TCP_NODELAY`` and run uwsgi on it (scripts/start-uwsgi.sh).

uwsgi's HTTP router relays an answer to the client in writes of ``http-buffer-size`` (32 KiB,
uwsgi.ini) and never sets ``TCP_NODELAY`` on the connections it accepts. So Nagle's algorithm
held back the second write of every answer over 32 KiB until the client acknowledged the first,
and a client delays that ACK by up to 40 ms (Linux; 200 ms elsewhere): a 1,000-request
``/api/recommend/batch`` or a 5,000-record ``/api/predict/batch`` took ~45-50 ms instead of
~6-8 ms on loopback (docs/performance.md, "Sixteenth machine").

Linux copies ``TCP_NODELAY`` from a listening socket to every connection accepted on it, and the
router takes a listening socket it inherits as ``http = fd://3``. This module binds the port
(``MOVIEREC_HOST``, default all IPv4 interfaces as uwsgi's ``:port`` did; ``MOVIEREC_PORT``,
default 8000) with the option set, leaves it open as file descriptor 3 and replaces itself with
the command it was given::

    python -m app.listener uwsgi --ini uwsgi.ini

A uwsgi reload (SIGHUP) re-executes the master and closes the descriptors it did not open
itself, but those marked ``safe-fd`` (uwsgi.ini: ``safe-fd = 3``): the port survives it.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from collections.abc import Mapping, Sequence

HTTP_FD = 3  # uwsgi.ini: http = fd://3
DEFAULT_HOST = "0.0.0.0"  # noqa: S104  # nosec B104 - uwsgi's ":8000" bound every interface too
DEFAULT_PORT = 8000
MAX_PORT = 65535  # every entry point refuses a port above it: the socket layer would keep its low 16 bits
BACKLOG = socket.SOMAXCONN  # the kernel caps it at net.core.somaxconn
PORT_IN_USE_HINT = " (another process listens there: stop it, or choose another port)"


class ListenerError(RuntimeError):
    """The port cannot be bound as configured (one line for the operator, no traceback)."""


def address_from_env(environ: Mapping[str, str] = os.environ) -> tuple[str, int]:
    """``(host, port)`` from ``MOVIEREC_HOST`` and ``MOVIEREC_PORT``; a bad port is refused."""
    host = environ.get("MOVIEREC_HOST", "").strip() or DEFAULT_HOST
    raw = environ.get("MOVIEREC_PORT", "").strip() or str(DEFAULT_PORT)
    try:
        port = int(raw)
    except ValueError:
        raise ListenerError(f"MOVIEREC_PORT must be a port number, got {raw!r}") from None
    if not 0 < port <= MAX_PORT:
        raise ListenerError(f"MOVIEREC_PORT must be between 1 and {MAX_PORT}, got {port}")
    return host, port


def bind(host: str, port: int, host_option: str = "MOVIEREC_HOST") -> socket.socket:
    """A listening TCP socket on ``host:port`` whose accepted connections have ``TCP_NODELAY``.

    ``host_option``: what gave the host, named when it is no address (``--host`` of the
    development server, which binds once to check before werkzeug binds for good)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ListenerError(f"{host_option} {host!r} is not an address to listen on: {exc}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uwsgi binds its sockets
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        hint = PORT_IN_USE_HINT if exc.errno == errno.EADDRINUSE else ""
        raise ListenerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}{hint}") from None
    return sock


def hand_over(sock: socket.socket, fd: int = HTTP_FD) -> int:
    """Put ``sock`` on descriptor ``fd``, inherited by the programs this process executes."""
    if sock.fileno() != fd:
        os.dup2(sock.fileno(), fd, inheritable=True)
        sock.close()
    else:
        os.set_inheritable(fd, True)
        sock.detach()  # the descriptor stays open when the object goes
    return fd


def main(argv: Sequence[str] | None = None) -> int:
    command = list(sys.argv[1:] if argv is None else argv)
    if not command:
        print("usage: python -m app.listener COMMAND [ARG ...]", file=sys.stderr)
        return 2
    try:
        hand_over(bind(*address_from_env()))
    except ListenerError as exc:
        print(f"movierec: {exc}", file=sys.stderr)
        return 1
    os.execvp(command[0], command)  # noqa: S606  # nosec B606 - the start script's command, not input


if __name__ == "__main__":
    sys.exit(main())
