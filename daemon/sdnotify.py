"""Telling systemd how the daemon is: READY, WATCHDOG pings, STATUS, RELOADING, STOPPING.

The protocol is one datagram per message to the socket in $NOTIFY_SOCKET (a path, or
an abstract name starting with '@'). Outside systemd there is no socket and every call
does nothing. Watchdog pings come from a task on the daemon's event loop, so a wedged
loop misses them, and so does a store write that does not end (`stuck`): systemd restarts
the daemon, which is the point.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger("pipewarden.systemd")


class SystemdNotifier:
    def __init__(self, environ: Mapping[str, str] = os.environ):
        address = environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        watchdog_usec = environ.get("WATCHDOG_USEC", "")
        watchdog_pid = environ.get("WATCHDOG_PID", "")
        mine = not watchdog_pid or watchdog_pid == str(os.getpid())
        self.watchdog_s = int(watchdog_usec) / 1e6 if watchdog_usec.isdigit() and mine else None

    @property
    def active(self) -> bool:
        return bool(self.address)

    def send(self, *fields: str) -> None:
        if not self.address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:  # systemd gone or the socket wrong: never fatal
            log.debug("sd_notify failed: %s", exc)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        self.send("RELOADING=1")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping: draining running attempts")

    async def watchdog(
        self, status: Callable[[], str], stuck: Callable[[float], bool] = lambda after: False
    ) -> None:
        """Ping at half the watchdog interval, with a fresh one-line STATUS, until cancelled;
        no ping while `stuck(a quarter of the interval)`."""
        if self.watchdog_s is None or not self.address:
            return
        while True:
            if not stuck(self.watchdog_s / 4):
                self.send("WATCHDOG=1", f"STATUS={status()}")
            await asyncio.sleep(self.watchdog_s / 2)
