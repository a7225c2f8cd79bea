"""Store faults, each one line that says what happened and what to do.

SQLite reports a full disk, a read-only file and a damaged one as error codes, under
whatever wraps them (Python's sqlite3, Peewee): `fault_of` finds the code and asks the files
what it means (a "disk I/O error" on an immutable file is a read-only store). A store that
vanishes or turns read-only under a running daemon gives no error at all (writes go on into
a file no one will see again, or SIGBUS on its shared memory), so `check_files` looks before
each write pass.

A full, read-only or vanished store is waited out: the daemon keeps what it has in memory,
says so once (`Outage`) and tries again with backoff. A damaged one is not: it is refused,
exit 2, and a person restores a backup. The daemon checks the store (`PRAGMA quick_check`)
when it starts after a stop that was not clean.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pipewarden.errors import StoreError

if TYPE_CHECKING:
    from pipewarden.store import Store

log = logging.getLogger("pipewarden.store")

T = TypeVar("T")

FULL, READ_ONLY, VANISHED, IO_ERROR, DAMAGED, UNREACHABLE = (
    "disk full", "read-only", "vanished", "I/O error", "damaged", "unreachable",
)  # fmt: skip
_FIXES = {
    UNREACHABLE: "start the PostgreSQL server or check the network; retrying",
    FULL: "free space",
    READ_ONLY: "make it writable again",
    VANISHED: "put it back",
    IO_ERROR: "check the disk (dmesg)",
}
RETRY_S = 0.5  # the first retry of a store that cannot take a write; doubles up to the max
RETRY_MAX_S = 10.0
REPEAT_S = 60.0  # a store that keeps failing and recovering is said again at most this often
FULL_DISK_WAL_PAGES = 256  # after a full disk, the WAL is checkpointed every 1 MiB, not 16
FULL_DISK_WAL_BYTES = 1 << 20  # ... and cut back to 1 MiB when it starts over, giving space back
CLEAN_STOP = "stopped_cleanly"  # meta: false while a daemon runs, true once it stopped cleanly
_OWN_SUFFIXES = ("", "-wal", "-shm", "-journal")  # the store's files; "-journal" from old tools
_PASSING_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
_FS_IOC_GETFLAGS = 0x80086601  # Linux, 64-bit: the inode flags that chattr sets
_FS_IMMUTABLE_FL = 0x10


class StoreFault(StoreError):
    """A store that cannot be written (`passing`: waited out) or is damaged (refused)."""

    def __init__(self, path: Path, kind: str, detail: str = "", fix: str = ""):
        self.path, self.kind, self.detail = path, kind, detail
        why = f" ({detail})" if detail else ""
        if kind == DAMAGED:
            line = (
                f"store {path} is damaged{why} — restore a backup (pipewarden backup)"
                " or move it aside"
            )
        else:
            line = f"store {path}: {kind}{why} — {fix or _FIXES[kind]}; nothing was lost"
        super().__init__(line)

    @property
    def passing(self) -> bool:
        return self.kind != DAMAGED

    @property
    def may_have_landed(self) -> bool:
        """A commit that met it may have been made all the same: the connection was lost
        while COMMIT was answered. Any other fault rolls it back."""
        return self.kind == UNREACHABLE

    @property
    def exit_code(self) -> int:
        return 2 if self.kind == DAMAGED else 1


def fault_of(exc: BaseException, path: Path) -> StoreFault | None:
    """The store fault `exc` is or hides (a failed ROLLBACK over a full disk, ...), else None."""
    for error in _chain(exc):
        if isinstance(error, StoreFault):
            return error
        if isinstance(error, OSError) and error.errno in _PASSING_ERRNOS:  # the state dir's
            return os_fault(error, path)  # other files (lock, token) on the same disk
        if _connection_lost(error):
            return StoreFault(path, UNREACHABLE, str(error).strip().splitlines()[0][:200])
        code = getattr(error, "sqlite_errorcode", None)
        if not isinstance(error, sqlite3.Error) or code is None:
            continue
        code &= 0xFF  # the primary code of an extended one (SQLITE_IOERR_WRITE, ...)
        if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            return StoreFault(path, DAMAGED, str(error))
        if code == sqlite3.SQLITE_FULL:
            return StoreFault(path, FULL)
        if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN,
                    sqlite3.SQLITE_PERM):  # fmt: skip
            if found := check_files(path) or disk_full(path):
                return found
            return StoreFault(path, READ_ONLY if code == sqlite3.SQLITE_READONLY else IO_ERROR,
                              str(error))  # fmt: skip
    return None


def _connection_lost(error: BaseException) -> bool:
    """A PostgreSQL server that cannot be reached, or dropped the connection (a restart)."""
    psycopg = sys.modules.get("psycopg")  # loaded only by the PostgreSQL store
    return psycopg is not None and isinstance(error, psycopg.OperationalError)


def os_fault(exc: OSError, path: Path) -> StoreFault | None:
    """The store fault of an OSError met on the store's own files, else None."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFault(path, FULL)
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        where = path if path.exists() else path.parent  # a new store: its folder
        return StoreFault(path, READ_ONLY, _why_not_writable(where))
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, what Peewee wrapped in it (its first argument), and its causes and contexts."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        error = pending.pop(0)
        if id(error) in seen:
            continue
        seen.add(id(error))
        yield error
        wrapped = error.args[0] if error.args else None
        pending += [e for e in (wrapped, error.__cause__, error.__context__)
                    if isinstance(e, BaseException)]  # fmt: skip


def check_files(path: Path, opened: tuple[int, int] | None = None) -> StoreFault | None:
    """A store gone (or another file in its place, when `opened` is its (dev, inode)) or
    one of its files not writable; None when it looks writable. Cheap: a few system calls,
    as the scheduler asks before every pass."""
    base = os.fspath(path)
    try:
        found = os.stat(base)
    except FileNotFoundError:
        gone = "the file is gone" if path.parent.is_dir() else f"{path.parent} is gone"
        return StoreFault(path, VANISHED, gone)
    if opened is not None and (found.st_dev, found.st_ino) != opened:
        return StoreFault(path, VANISHED, "another file is in its place",
                          "restart the daemon to use that one")  # fmt: skip
    for name in (base, f"{base}-wal", f"{base}-shm"):
        if os.access(name, os.W_OK):
            continue
        if os.path.exists(name):
            return StoreFault(path, READ_ONLY, _why_not_writable(Path(name)))
        if name.endswith("-shm") and not os.access(path.parent, os.W_OK):  # cannot be made
            return StoreFault(path, READ_ONLY, _why_not_writable(path.parent))
    return None


def _why_not_writable(file: Path) -> str:
    try:
        descriptor = os.open(file, os.O_RDONLY | os.O_NONBLOCK)
        try:
            flags = fcntl.ioctl(descriptor, _FS_IOC_GETFLAGS, bytes(8))
        finally:
            os.close(descriptor)
        if int.from_bytes(flags[:4], "little") & _FS_IMMUTABLE_FL:
            return f"{file.name} is immutable: chattr -i {file}"
    except OSError:  # not a file system with flags (tmpfs), or not ours to open
        pass
    with contextlib.suppress(OSError):
        if os.statvfs(file).f_flag & os.ST_RDONLY:
            return f"{file.name} is on a read-only mount"
    return f"{file.name} is not writable by this user"


def disk_full(path: Path) -> StoreFault | None:
    with contextlib.suppress(OSError):
        if os.statvfs(path.parent).f_bavail == 0:
            return StoreFault(path, FULL)
    return None


# -- at start: a store left empty, or damaged by an unclean stop ------------------------------
def refuse_emptied(path: Path) -> None:
    """A store file of 0 bytes lost its content (pipewarden never leaves one: a new store
    appears whole), unless the state dir is new, holding nothing else but the daemon's lock."""
    try:
        if path.stat().st_size:
            return
    except FileNotFoundError:
        return
    own = {path.name + suffix for suffix in _OWN_SUFFIXES} | {"daemon.lock"}
    if any(entry.name not in own for entry in path.parent.iterdir()):
        raise StoreFault(path, DAMAGED, "the file is empty")


def quick_check(connection: sqlite3.Connection, path: Path) -> str | None:
    """What `PRAGMA quick_check` finds wrong, in one line; None when the store is sound."""
    try:
        rows = connection.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        if (fault := fault_of(exc, path)) is None or fault.passing:
            raise
        return str(exc)
    problems = [line for (text,) in rows for line in str(text).splitlines()
                if line.strip() and not line.startswith("*** ")]  # fmt: skip
    if problems == ["ok"]:
        return None
    more = f", and {len(problems) - 1} more" if len(problems) > 1 else ""
    return f"quick_check: {problems[0]}{more}"


def check_after_unclean_stop(store: Store) -> bool | None:
    """Unless the last daemon stopped cleanly, refuse a store that fails its quick check;
    then mark it in use, so that a crash from here on is known at the next start.
    Returns the mark as it was: True (a clean stop), False (a crash), None (never set)."""
    previous = store.get_meta(CLEAN_STOP)
    # PostgreSQL checks its own pages.
    if (
        previous is not True
        and store.kind == "sqlite"
        and (problem := quick_check(store.db.connection(), store.path))
    ):
        raise StoreFault(store.path, DAMAGED, problem)
    store.set_meta(CLEAN_STOP, False)
    return previous


def mark_clean_stop(store: Store) -> None:
    """Not marked (the store cannot take it): the next start checks the store, that is all."""
    unless_waiting(store, lambda: store.set_meta(CLEAN_STOP, True))


def unless_waiting(store: Store, write: Callable[[], T]) -> T | None:
    """`write()`, for a write that can wait for the next one: a full, read-only or vanished
    store skips it (None), and the scheduler's loop is what says so. Other errors are raised."""
    if store.unwritable():
        return None
    try:
        return write()
    except Exception as exc:
        fault = fault_of(exc, store.path)
        if fault is None or not fault.passing:
            raise
        return None


def make_room(store: Store) -> bool:
    """On a full disk: checkpoint the WAL, which may hold the space (it grows to 16 MiB
    between checkpoints, and a checkpoint must grow the store by as much), and keep it small
    from now on. True if it was all checkpointed, so that the next write reuses its space."""
    if store.kind != "sqlite":
        return False  # no WAL of ours to checkpoint: the server's disk is its own
    connection = store.db.connection()
    try:
        # Kept for the connections opened from now on too (the writer's thread has its own).
        store.db.pragma("wal_autocheckpoint", FULL_DISK_WAL_PAGES, permanent=True)
        store.db.pragma("journal_size_limit", FULL_DISK_WAL_BYTES, permanent=True)
        _, frames, checkpointed = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    except Exception:  # no room even for that (sqlite3's error, or Peewee's around it)
        return False
    return frames > 0 and checkpointed == frames


# -- waiting a fault out ----------------------------------------------------------------------
class Outage:
    """A store fault being waited out: said once, told to systemd through `tell`, tried again
    with backoff, and said to be over when a write goes through. A store that keeps failing
    and recovering (a disk all but full) is said again at most every REPEAT_S."""

    def __init__(self, path: Path, tell: Callable[[str], None] = lambda status: None):
        self.path = path
        self.fault: StoreFault | None = None
        self.relieve: Callable[[], object] = lambda: None  # on a full disk; make_room once open
        self.retry_in = RETRY_S
        self._tell = tell
        self._said: tuple[str, float] | None = None  # the last line logged, and when
        self._said_this_one = False

    def failed(self, fault: StoreFault) -> float:
        """Note a passing fault; returns how long to wait before trying again."""
        line, now = str(fault), time.monotonic()
        if fault.kind == FULL:
            self.relieve()
        if self.fault is None or line != str(self.fault):
            self.retry_in = RETRY_S
            self._tell(line)
            self._said_this_one = (
                self._said is None or self._said[0] != line or (now - self._said[1] >= REPEAT_S)
            )
            if self._said_this_one:
                log.error("%s", fault)
                self._said = (line, now)
        else:
            self.retry_in = min(self.retry_in * 2, RETRY_MAX_S)
        self.fault = fault
        return self.retry_in

    def over(self) -> None:
        if self.fault is not None:
            if self._said_this_one:
                log.warning("store %s: writable again — resuming", self.path)
            self._tell("store writable again: resuming")
            self.fault, self.retry_in = None, RETRY_S

    async def wait_out(self, step: Callable[[], T]) -> T:
        """`step()`, tried again while the store is full, read-only or vanished; a damaged
        store is raised as its one line, any other error as it is."""
        import asyncio  # the daemon's alone: commands that read the store never pay for it

        while True:
            try:
                result = step()
            except Exception as exc:
                fault = fault_of(exc, self.path)
                if fault is None:
                    raise
                if not fault.passing:
                    raise fault from None
                await asyncio.sleep(self.failed(fault))
                continue
            self.over()
            return result
