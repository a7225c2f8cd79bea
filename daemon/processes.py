"""Worker processes: each in a session of its own, its exit seen through a pidfd.

Every worker starts a new session (so a new process group): the watchdog signals the
group, which reaches whatever the worker started and left in it. What leaves the group
(setsid, a double fork) is found by `containment.py`.

The daemon reaps its workers itself, the moment a pidfd says one exited: no asyncio
child watcher is involved, so the orphans the daemon reaps as a subreaper can never be
confused with a worker, and no thread waits per process. The pipes are read and written
straight from the loop's selector (`PipeReader`, `PipeWriter`: a read or a write per
ready callback, no transport, nothing to await before the first byte), and closed
explicitly whatever happens (none is left for the garbage collector to close after the
loop is gone).

A worker is started with `os.posix_spawn` (the C library's vfork and exec, nothing in
Python between) where its folder is the daemon's own, else through `subprocess`, which
can change folders. Neither closes descriptors in the child, since the daemon holds no
inheritable one:
Python and SQLite open everything close-on-exec, and before each spawn any descriptor
beyond 0-2 that is not (one inherited from whoever started the daemon) is made so. Closing
them one by one in the child, up to the descriptor limit, cost a spawn milliseconds.

Linux only: /proc and pidfd_open (Linux 5.3).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Identity:
    """What tells one process apart for good: a pid is reused, (pid, start time) is not."""

    pid: int
    pgid: int
    start: int  # /proc/PID/stat field 22: clock ticks since boot


@dataclass(frozen=True)
class ProcStat:
    state: str
    ppid: int
    pgrp: int
    session: int
    start: int
    env_start: int = 1  # where its environment lies (0: in the middle of an execve; see
    env_end: int = 1  # containment._marks), 1 where the kernel does not say


def proc_stat(pid: int) -> ProcStat | None:
    """The fields of /proc/PID/stat that matter here; None once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses; fields resume after the last ')'.
    fields = raw[raw.rfind(b")") + 2 :].split()
    environment = (int(fields[47]), int(fields[48])) if len(fields) > 48 else ()  # Linux 3.5
    return ProcStat(
        fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]),
        *environment,
    )  # fmt: skip


def gone(pid: int) -> bool:
    """True once `pid` no longer runs (a zombie waiting to be reaped counts as gone)."""
    stat = proc_stat(pid)
    return stat is None or stat.state in ("Z", "X")


def environ(pid: int) -> dict[str, str]:
    """The environment `pid` was started with (empty when unreadable or a zombie)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            raw = handle.read()
    except OSError:
        return {}
    pairs = (entry.partition(b"=") for entry in raw.split(b"\0") if entry)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, _, v in pairs}


def all_pids() -> list[int]:
    try:
        return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return []


def children(pid: int) -> list[int]:
    """The children of `pid`, from /proc/PID/task/TID/children (one small read per thread)."""
    found: list[int] = []
    for tid in _threads(pid):
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as handle:
                found += [int(child) for child in handle.read().split()]
        except FileNotFoundError:
            if tid == pid and os.path.exists(f"/proc/{pid}"):
                return _children_by_scan(pid)  # a kernel without CONFIG_PROC_CHILDREN
        except OSError:
            continue
    return found


class OwnChildren:
    """This process's children (of its main thread: its workers and the orphans it
    adopted as a subreaper), re-read through one file kept open: a single pread, cheap
    enough to ask after every item."""

    def __init__(self) -> None:
        self._pid = 0
        self._fd = -1

    def __call__(self) -> list[int]:
        pid = os.getpid()
        if pid != self._pid:
            try:
                self._fd = os.open(f"/proc/{pid}/task/{pid}/children", os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:  # a kernel without CONFIG_PROC_CHILDREN
                return _children_by_scan(pid)
            self._pid = pid
        size = 4096
        while len(raw := os.pread(self._fd, size, 0)) == size:
            size *= 4
        return [int(child) for child in raw.split()]


def _threads(pid: int) -> list[int]:
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def _children_by_scan(pid: int) -> list[int]:
    return [other for other in all_pids() if (stat := proc_stat(other)) and stat.ppid == pid]


def descendants(roots: Iterable[int]) -> set[int]:
    """Every live descendant of `roots` (the roots not included)."""
    found: set[int] = set()
    pending = list(roots)
    while pending:
        for child in children(pending.pop()):
            if child not in found:
                found.add(child)
                pending.append(child)
    return found


def signal_pids(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def signal_group(pgid: int, signum: int) -> bool:
    """Signal a process group; False when it has no member left (signum 0 only asks)."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_signal(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


READ_CHUNK = 256 * 1024  # what one ready callback reads of a pipe (asyncio's own size)


class PipeReader:
    """A pipe's read end fed to a protocol from the loop's selector, one read per callback.

    Stands in for the protocol's transport: `pause_reading`, `resume_reading`, `close`.
    """

    def __init__(self, fd: int, protocol: asyncio.Protocol):
        self._fd = fd
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()
        self._reading = False
        self.closed = False
        os.set_blocking(fd, False)
        protocol.connection_made(self)  # type: ignore[arg-type]
        self.resume_reading()

    def _ready(self) -> None:
        try:
            data = os.read(self._fd, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._end(exc)
            return
        if data:
            self._protocol.data_received(data)
        else:
            self._protocol.eof_received()
            self._end(None)

    def pause_reading(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def resume_reading(self) -> None:
        if not self._reading and not self.closed:
            self._loop.add_reader(self._fd, self._ready)
            self._reading = True

    def close(self) -> None:
        self._end(None)

    def _end(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.pause_reading()
        self.closed = True
        os.close(self._fd)
        self._protocol.connection_lost(exc)


class PipeWriter:
    """A pipe's write end: written at once while the pipe takes it, from the selector after.

    `close` is EOF once what was written went through.
    """

    def __init__(self, fd: int):
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._pending = bytearray()
        self._closing = False
        self.closed = False
        self.lost = False  # the worker closed its end
        os.set_blocking(fd, False)

    def write(self, data: bytes) -> None:
        """Write without waiting; what the pipe cannot take now goes when it can."""
        if self.closed or self._closing or self.lost:
            return
        if not self._pending:
            data = data[self._write(data) :]
            if not data or self.lost:
                return
            self._loop.add_writer(self._fd, self._ready)
        self._pending += data

    def _write(self, data: bytes | bytearray) -> int:
        try:
            return os.write(self._fd, data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:  # EPIPE: the worker is not reading any more
            self.lost = True
            return len(data)

    def _ready(self) -> None:
        del self._pending[: self._write(self._pending)]
        if self._pending and not self.lost:
            return
        self._pending.clear()
        self._loop.remove_writer(self._fd)
        if self._closing:
            self.abort()

    def close(self) -> None:
        if self._pending:
            self._closing = True
        else:
            self.abort()

    def abort(self) -> None:
        """Close now, dropping what the worker never read."""
        if self.closed:
            return
        if self._pending:
            self._pending.clear()
            self._loop.remove_writer(self._fd)
        self.closed = True
        os.close(self._fd)


class Child:
    """A running worker: its pipes, its identity, and a future resolved with its exit code.

    The exit is seen through a pidfd and the process is reaped at once; its process group
    outlives it as long as a member does, so signalling the group afterwards stays safe.
    """

    def __init__(
        self, pid: int, pipes: tuple[int, int, int], popen: subprocess.Popen[bytes] | None
    ):
        self._popen = popen
        self.pid = pid
        self.pgid = pid  # a new session: its own process group
        self._start: int | None = None
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pidfd = os.pidfd_open(self.pid)
        asyncio.get_running_loop().add_reader(self._pidfd, self._reap)
        self._pipes: tuple[int, int, int] | None = pipes  # ours: stdin's, stdout's, stderr's
        self.stdin: PipeWriter | None = None
        self._readers: list[PipeReader] = []

    @property
    def identity(self) -> Identity:
        """Read when first asked, not at spawn: reading /proc/PID/stat of a process still
        loading its program waits for it (about a millisecond, on the event loop)."""
        if self._start is None:
            self._remember_start()
        return Identity(self.pid, self.pgid, self._start or 0)

    def _remember_start(self) -> None:
        stat = proc_stat(self.pid)
        self._start = stat.start if stat is not None else 0

    @property
    def returncode(self) -> int | None:
        return self.exited.result() if self.exited.done() else None

    def attach(self, stdout: asyncio.Protocol, stderr: asyncio.Protocol) -> None:
        """Start reading stdout and stderr into their protocols; stdin becomes writable."""
        if self._pipes is None:
            raise BrokenPipeError("the worker's pipes are closed")
        stdin, out, err = self._pipes
        self._pipes = None
        self.stdin = PipeWriter(stdin)
        self._readers = [PipeReader(out, stdout), PipeReader(err, stderr)]

    def close_stdin(self) -> None:
        """EOF for the worker once what was written has gone through."""
        if self.stdin is not None:
            self.stdin.close()

    def close(self) -> None:
        """Close every pipe end the daemon holds (a child may still hold the others)."""
        if self.stdin is not None:
            self.stdin.abort()  # what the worker never read goes with it
        for reader in self._readers:
            reader.close()
        for fd in self._pipes or ():  # never attached
            os.close(fd)
        self._pipes = None

    def _reap(self) -> None:
        asyncio.get_running_loop().remove_reader(self._pidfd)
        if self._start is None:  # a zombie's stat: there while it is unreaped, and quick
            self._remember_start()
        try:
            result = os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WNOHANG)
        finally:
            os.close(self._pidfd)
        code = -1
        if result is not None:
            code = result.si_status if result.si_code == os.CLD_EXITED else -result.si_status
        if self._popen is not None:
            self._popen.returncode = code  # so Popen never waits for (or warns about) it again
        if not self.exited.done():
            self.exited.set_result(code)


def spawn(argv: Sequence[str], cwd: Path, env: dict[str, str]) -> Child:
    """Start a worker in a new session with three pipes; raises OSError if it cannot start.

    The caller makes it known (containment) before anything else, then `attach`es its
    pipes: until then a sweep could take it for an orphan."""
    stdin, stdout, stderr = os.pipe(), os.pipe(), os.pipe()  # close-on-exec, all six
    ours = (stdin[1], stdout[0], stderr[0])
    theirs = (stdin[0], stdout[1], stderr[1])
    popen = None
    try:
        close_fds = _seal_inherited_fds()
        if not close_fds and os.path.isabs(argv[0]) and os.path.samefile(cwd, "."):
            pid = _posix_spawn(argv, env, theirs)
        else:
            popen = subprocess.Popen(
                list(argv), stdin=theirs[0], stdout=theirs[1], stderr=theirs[2],
                cwd=str(cwd), env=env, close_fds=close_fds,
                start_new_session=True,  # own process group, and no terminal's Ctrl-C
            )  # fmt: skip
            pid = popen.pid
    except BaseException:
        for fd in ours:
            os.close(fd)
        raise
    finally:
        for fd in theirs:  # the child's ends: its copies only
            os.close(fd)
    try:
        return Child(pid, ours, popen)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        for fd in ours:
            os.close(fd)
        raise


# What subprocess's restore_signals resets in a child: Python ignores them for itself.
_RESET_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ", "SIGXFZ") if hasattr(signal, name)
)


def _posix_spawn(argv: Sequence[str], env: dict[str, str], pipes: tuple[int, ...]) -> int:
    """A new session running `argv` with `pipes` as its stdin, stdout and stderr."""
    actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(pipes)]
    return os.posix_spawn(
        argv[0], list(argv), env, file_actions=actions, setsid=True, setsigdef=_RESET_SIGNALS
    )


def _seal_inherited_fds() -> bool:
    """Make every descriptor beyond 0-2 close-on-exec, so no worker inherits one; False
    once done (the child then has none to close), True where /proc cannot say."""
    if _close_range_cloexec():
        return False
    try:
        fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:
        return True
    for fd in fds:
        if fd > 2:
            with contextlib.suppress(OSError):  # the listing's own, closed since
                if os.get_inheritable(fd):
                    os.set_inheritable(fd, False)
    return False


_CLOSE_RANGE_CLOEXEC = 4  # linux/close_range.h


def _close_range_cloexec() -> bool:
    """Descriptors 3 and up made close-on-exec in one system call (Linux 5.11, glibc 2.34),
    instead of a /proc listing and a call per descriptor at every spawn; False where the
    kernel or libc has no such call."""
    close_range = _libc_close_range()
    return close_range is not None and close_range(3, 0xFFFFFFFF, _CLOSE_RANGE_CLOEXEC) == 0


@functools.cache
def _libc_close_range() -> Callable[[int, int, int], int] | None:
    import ctypes

    close_range = getattr(ctypes.CDLL(None, use_errno=True), "close_range", None)
    if close_range is not None:
        close_range.argtypes = (ctypes.c_uint, ctypes.c_uint, ctypes.c_int)
    return close_range
