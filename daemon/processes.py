"""Worker processes: each in a session of its own, its exit seen through a pidfd.

Every worker starts a new session (so a new process group): the watchdog signals the
group, which reaches whatever the worker started and left in it. What leaves the group
(setsid, a double fork) is found by `containment.py`.

The daemon reaps its workers itself, the moment a pidfd says one exited: no asyncio
child watcher is involved, so the orphans the daemon reaps as a subreaper can never be
confused with a worker, and no thread waits per process. The pipes are plain asyncio
pipe transports, closed explicitly whatever happens (none is left for the garbage
collector to close after the loop is gone).

Linux only: /proc and pidfd_open (Linux 5.3).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Iterable, Sequence
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


def proc_stat(pid: int) -> ProcStat | None:
    """The fields of /proc/PID/stat that matter here; None once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses; fields resume after the last ')'.
    fields = raw[raw.rfind(b")") + 2 :].split()
    return ProcStat(
        fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19])
    )


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


class StdinProtocol(asyncio.BaseProtocol):
    """Flow control for a worker's stdin: `drain()` waits while the pipe is full."""

    def __init__(self) -> None:
        self._writable = asyncio.Event()
        self._writable.set()
        self.lost = False

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._writable.set()

    async def drain(self) -> None:
        await self._writable.wait()
        if self.lost:
            raise BrokenPipeError("the worker closed its stdin")


class Child:
    """A running worker: its pipes, its identity, and a future resolved with its exit code.

    The exit is seen through a pidfd and the process is reaped at once; its process group
    outlives it as long as a member does, so signalling the group afterwards stays safe.
    """

    def __init__(self, popen: subprocess.Popen[bytes]):
        self._popen = popen
        self.pid = popen.pid
        self.pgid = popen.pid  # a new session: its own process group
        self._start: int | None = None
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pidfd = os.pidfd_open(self.pid)
        asyncio.get_running_loop().add_reader(self._pidfd, self._reap)
        self.stdin: asyncio.WriteTransport | None = None
        self._stdin_protocol = StdinProtocol()
        self._readers: list[asyncio.BaseTransport] = []

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

    async def attach(self, stdout: asyncio.Protocol, stderr: asyncio.Protocol) -> None:
        loop = asyncio.get_running_loop()
        popen = self._popen
        assert popen.stdin and popen.stdout and popen.stderr
        self.stdin, _ = await loop.connect_write_pipe(lambda: self._stdin_protocol, popen.stdin)
        for protocol, pipe in ((stdout, popen.stdout), (stderr, popen.stderr)):
            transport, _ = await loop.connect_read_pipe(lambda p=protocol: p, pipe)
            self._readers.append(transport)

    async def send(self, data: bytes) -> None:
        if self.stdin is None or self.stdin.is_closing():
            raise BrokenPipeError("the worker's stdin is closed")
        self.stdin.write(data)
        await self._stdin_protocol.drain()

    def close_stdin(self) -> None:
        """EOF for the worker once what was written has gone through."""
        if self.stdin is not None:
            self.stdin.close()

    def close(self) -> None:
        """Close every pipe end the daemon holds (a child may still hold the others)."""
        if self.stdin is not None and self.stdin.get_write_buffer_size():
            self.stdin.abort()  # what the worker never read
        elif self.stdin is not None:
            self.stdin.close()
        for transport in self._readers:
            transport.close()
        for pipe in (self._popen.stdin, self._popen.stdout, self._popen.stderr):
            if pipe is not None:
                pipe.close()  # a no-op for those a transport already closed

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
        self._popen.returncode = code  # so Popen never waits for (or warns about) it again
        if not self.exited.done():
            self.exited.set_result(code)


def spawn(argv: Sequence[str], cwd: Path, env: dict[str, str]) -> Child:
    """Start a worker in a new session with three pipes; raises OSError if it cannot start.

    The caller makes it known (containment) before anything else, then `attach`es its
    pipes: until then a sweep could take it for an orphan."""
    popen = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=str(cwd),
        env=env,
        bufsize=0,
        start_new_session=True,  # own process group, and no terminal's Ctrl-C
    )
    try:
        return Child(popen)
    except BaseException:
        popen.kill()
        popen.wait()
        raise
