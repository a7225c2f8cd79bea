"""The one port helper every bench shares: never a fixed port such as 8765, which
another daemon on this host may be serving (the bench would then talk to it, or fail)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick), for a daemon's API."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
