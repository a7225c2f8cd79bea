"""Child processes in their own process group, and killing a whole tree of them.

Every worker starts a new session (so a new process group): the watchdog signals
the group, which reaches whatever the worker started (a hung Chromium included).
A descendant that moved to a group of its own is found through /proc before the
first signal, while its parent still links it to the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import deque
from collections.abc import Sequence
from pathlib import Path

LINE_LIMIT = 16 * 1024 * 1024  # one protocol line may carry a large item
STDERR_LINES_KEPT = 200


async def spawn(argv: Sequence[str], cwd: Path, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(cwd),
        env=env,
        start_new_session=True,  # own process group, and no terminal's Ctrl-C
        limit=LINE_LIMIT,
    )


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid`, read from /proc (empty where /proc is absent)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses; fields resume after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), ()):
            found.append(child)
            pending.append(child)
    return found


def _signal_tree(pgid: int, pids: Sequence[int], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


async def terminate_tree(proc: asyncio.subprocess.Process, grace_s: float) -> int:
    """SIGTERM the worker's tree, SIGKILL it after `grace_s`; returns the signal that ended it.

    Whatever happens, nothing of the tree survives past the grace: SIGKILL is always sent
    to the group and to every descendant seen, even if the worker itself already exited.
    """
    tree = descendants(proc.pid)
    _signal_tree(proc.pid, tree, signal.SIGTERM)
    final = signal.SIGTERM
    try:
        await asyncio.wait_for(proc.wait(), grace_s)
    except TimeoutError:
        final = signal.SIGKILL
    tree = sorted(set(tree) | set(descendants(proc.pid)))
    _signal_tree(proc.pid, tree, signal.SIGKILL)
    if proc.returncode is None:
        await proc.wait()
    return final


def describe_signal(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StderrTail:
    """Keeps the last lines a worker wrote to stderr; `since(mark)` gives one item's share."""

    def __init__(self) -> None:
        self._lines: deque[str] = deque(maxlen=STDERR_LINES_KEPT)
        self._count = 0
        self.closed = asyncio.Event()

    async def consume(self, stream: asyncio.StreamReader) -> None:
        try:
            while True:
                try:
                    line = await stream.readline()
                except ValueError:  # over LINE_LIMIT; asyncio has already dropped it
                    self._add("[a stderr line too long to keep]")
                    continue
                if not line:
                    return
                self._add(line.decode("utf-8", errors="replace").rstrip("\r\n"))
        finally:
            self.closed.set()

    def _add(self, line: str) -> None:
        self._lines.append(line)
        self._count += 1

    def mark(self) -> int:
        return self._count

    def since(self, mark: int) -> list[str]:
        keep = min(self._count - mark, len(self._lines))
        return list(self._lines)[len(self._lines) - keep :] if keep > 0 else []
