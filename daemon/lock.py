"""The state dir's lock: one daemon per store, and how the CLI finds and pokes it.

Kept free of heavy imports: `pipewarden status` and `enqueue` use it on every call.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
from pathlib import Path

from pipewarden.errors import PipewardenError

LOCK_FILE = "daemon.lock"  # holds the running daemon's pid while it is locked


class DaemonLock:
    """An exclusive lock on the state dir: one daemon per store, and the CLI can find it."""

    def __init__(self, state_dir: Path):
        self.path = state_dir / LOCK_FILE
        self._handle: int | None = None

    def acquire(self) -> None:
        """Lock the state dir and write this daemon's pid in the lock file. A pid that
        cannot be written (a full disk) raises OSError with the lock kept: call again."""
        if self._handle is None:
            handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(handle)
                pid = running_daemon_pid(self.path.parent)
                raise PipewardenError(
                    f"another pipewarden daemon (pid {pid}) is running on {self.path.parent}"
                    " — stop it first, or use another --state-dir"
                ) from None
            self._handle = handle
        # Over the old pid, then cut to length: on a full disk a file that had a pid keeps
        # its block, where truncating it first would give the block away.
        pid = f"{os.getpid()}\n".encode()
        os.pwrite(self._handle, pid, 0)
        os.ftruncate(self._handle, len(pid))

    def release(self) -> None:
        if self._handle is not None:
            os.close(self._handle)
            self._handle = None


def running_daemon_pid(state_dir: Path) -> int | None:
    """The pid of the daemon holding the state dir's lock, or None if none does."""
    path = state_dir / LOCK_FILE
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.read(handle, 32).decode().strip()
        return int(text) if text.isdigit() else None
    else:
        return None  # we could lock it: nobody holds it
    finally:
        os.close(handle)


def poke_daemon(state_dir: Path) -> bool:
    """Tell a running daemon that new work arrived; False when none runs."""
    pid = running_daemon_pid(state_dir)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGUSR1)
        return True
    return False
