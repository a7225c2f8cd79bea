"""The API's TCP port: whether it is free, who holds it, and a free one to use instead."""

from __future__ import annotations

import errno
import socket

DEFAULT_PORT = 8765


def port_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:`port` (so a daemon could bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def a_free_port() -> int:
    """A port nothing listens on now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_or_free(port: int = DEFAULT_PORT) -> int:
    """`port` if it is free, else one that is."""
    return port if port_free(port) else a_free_port()
