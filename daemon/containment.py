"""Containment: no process a worker starts outlives its attempt, nor the daemon.

The daemon is a child subreaper (prctl PR_SET_CHILD_SUBREAPER): whatever a worker
orphans — a `cmd &`, a setsid'd or double-forked child — is re-parented to the daemon
instead of init, so it is always one of the daemon's own children or below one. Every
worker process, and so everything it starts, carries in its environment:

    PIPEWARDEN_DAEMON     this daemon's instance (new at every start)
    PIPEWARDEN_STATE_DIR  the store it works for
    PIPEWARDEN_WORKER     the worker process (the run id, for a process per item)
    PIPEWARDEN_RUN_ID     the run (set per item by the Python runner in a pool)

When an attempt ends, however it ends, what is left of it — its process group, its
descendants, and the orphans that are its worker's (same session, or its mark) — gets
SIGTERM, then SIGKILL after the stage's grace, and is reaped. A pool worker keeps its
own children across items (a browser kept warm); what escaped it ends with the attempt.
A sweep every second reaps orphans that exited and kills those no running attempt
claims. Every worker's process group is on a board the sentinel (`_sentinel.py`) reads
when the daemon dies (`groupboard.py`: no message, no wake-up per worker); it then kills
those groups and everything carrying the daemon's instance. Within RECORD_AFTER_S of its
start (several in one commit) a worker is recorded on its run, and at the next start,
`kill_leftovers` finds anything still left by the store's mark and by the process groups
recorded on interrupted runs (matched by start time, so a reused pid is never hit), before
any item is requeued.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from pipewarden.groupboard import GroupBoard
from pipewarden.processes import (
    Child,
    Identity,
    OwnChildren,
    ProcStat,
    all_pids,
    descendants,
    environ,
    gone,
    proc_stat,
    signal_group,
    signal_pids,
)

log = logging.getLogger("pipewarden.containment")

MARK_DAEMON = "PIPEWARDEN_DAEMON"
MARK_STATE_DIR = "PIPEWARDEN_STATE_DIR"
MARK_WORKER = "PIPEWARDEN_WORKER"
MARK_RUN = "PIPEWARDEN_RUN_ID"
MARKS = (MARK_DAEMON, MARK_STATE_DIR, MARK_WORKER, MARK_RUN)

KILL_WAIT_S = 2.0  # how long SIGKILLed processes may take to be gone
RECORD_AFTER_S = 0.05  # new workers are recorded on their runs this soon, in one commit
SWEEP_EVERY_S = 1.0
SENTINEL_STOP_S = 2.0
EMPTY_LOOKS = 3  # how often an environment that reads empty is read again, 0.2 ms apart
SETTLE_S = 1.0  # how long an orphan may be in the middle of an execve before the sweep decides
_PR_SET_CHILD_SUBREAPER, _PR_GET_CHILD_SUBREAPER = 36, 37

StartedCallback = Callable[[list[tuple[str, int, int, int]]], None]  # run, pid, pgid, start


@dataclass
class _Worker:
    worker_id: str
    child: Child
    run_id: str | None  # the attempt in flight; None while a pool worker waits for one


class Containment:
    """The daemon's workers, and making sure nothing they start outlives its attempt.

    One per process (the subreaper flag and the orphans are the process's): the module's
    `containment` below. Works without `enable()` too, minus the subreaper and sentinel.
    """

    def __init__(self) -> None:
        self.instance = secrets.token_hex(8)
        self.state_dir = ""
        self.on_started: StartedCallback | None = None
        self._workers: dict[int, _Worker] = {}  # by pid
        self._session = os.getsid(0)
        self._sentinel: subprocess.Popen[bytes] | None = None
        self._subreaper_before: int | None = None
        self._own_children = OwnChildren()
        self._unrecorded: list[_Worker] = []
        self._recording: asyncio.TimerHandle | None = None
        self._board: GroupBoard | None = None  # the groups the sentinel kills if we die
        self._unreadable: set[int] = set()  # orphans whose marks could not be read last sweep

    # -- the daemon's life ------------------------------------------------------------
    def enable(self, state_dir: Path, on_started: StartedCallback | None = None) -> None:
        """Become a subreaper and start the sentinel; workers started from now are marked."""
        self.instance = secrets.token_hex(8)
        self.state_dir = str(state_dir.resolve())
        self.on_started = on_started
        self._session = os.getsid(0)
        self._subreaper_before = _get_subreaper()
        _set_subreaper(1)
        board = GroupBoard()
        try:
            self._sentinel = subprocess.Popen(
                [sys.executable, "-m", "pipewarden._sentinel", self.instance, str(board.fd)],
                stdin=subprocess.PIPE,
                env={k: v for k, v in os.environ.items() if k not in MARKS},
                pass_fds=(board.fd,),
                start_new_session=True,  # a Ctrl-C or a killed process group leaves it standing
            )
        except OSError as exc:  # e.g. an interpreter this user may run but not start again
            board.close()
            log.warning(
                "cannot start the sentinel (%s): if this daemon is killed, its workers are"
                " found and killed when it starts again, not at once", exc,
            )  # fmt: skip
            return
        self._board = board

    def disable(self) -> None:
        """Stop the sentinel (it finds nothing left) and give the subreaper flag back."""
        if self._recording is not None:
            self._recording.cancel()
            self._recording = None
        self._unrecorded = []
        sentinel, self._sentinel = self._sentinel, None
        if sentinel is not None:
            assert sentinel.stdin is not None
            sentinel.stdin.close()
            try:
                sentinel.wait(SENTINEL_STOP_S)
            except subprocess.TimeoutExpired:
                sentinel.kill()
                sentinel.wait()
        if self._board is not None:
            self._board.close()
            self._board = None
        if self._subreaper_before is not None:
            _set_subreaper(self._subreaper_before)
            self._subreaper_before = None
        self.on_started = None

    # -- workers ----------------------------------------------------------------------
    def env(self, worker_id: str, run_id: str | None) -> dict[str, str]:
        marks = {MARK_DAEMON: self.instance, MARK_STATE_DIR: self.state_dir}
        marks[MARK_WORKER] = worker_id
        if run_id is not None:
            marks[MARK_RUN] = run_id
        return marks

    def track(self, child: Child, worker_id: str, run_id: str) -> None:
        """A worker started for `run_id`: known from now on, on the sentinel's board, and
        recorded on the run within RECORD_AFTER_S, with others started meanwhile."""
        worker = self._workers[child.pid] = _Worker(worker_id, child, run_id)
        if self._board is not None:
            self._board.add(child, child.pgid)
        self._unrecorded.append(worker)
        if self._recording is None:
            self._recording = asyncio.get_running_loop().call_later(RECORD_AFTER_S, self._record)

    def attempt(self, child: Child, run_id: str | None) -> None:
        """A pool worker takes an item (a run id) or waits for one (None)."""
        self._workers[child.pid].run_id = run_id

    def untrack(self, child: Child) -> None:
        if self._workers.pop(child.pid, None) is not None and self._board is not None:
            self._board.remove(child)

    def _record(self) -> None:
        self._recording = None
        started, self._unrecorded = self._unrecorded, []
        started = [worker for worker in started if self._workers.get(worker.child.pid) is worker]
        if self.on_started is None or not started:
            return
        try:
            self.on_started(
                [(w.run_id, *dataclasses.astuple(w.child.identity)) for w in started if w.run_id]
            )
        except Exception as exc:  # a record for recovery only: the attempts go on
            log.warning("could not record %d worker process(es): %s", len(started), exc)

    async def end(
        self, child: Child, grace_s: float, whole: bool = True, spared_runs: Collection[str] = ()
    ) -> int:
        """Stop what is left of an attempt: SIGTERM, SIGKILL after `grace_s`, reaped.

        `whole`: the worker, its process group and its descendants too (a process per
        item, or a pool worker being replaced); otherwise only what escaped a pool worker
        that lives on, except what carries one of `spared_runs` (the items it already works on).
        Returns the signal that it took (0: nothing was left).
        """
        if not whole and not self._orphans():  # after each pool item: the usual answer
            return 0
        worker = self._workers[child.pid]
        doomed = await self._settled_remains(worker, child, whole, spared_runs)
        if not doomed and not (whole and signal_group(child.pgid, 0)):
            return 0
        for signum, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, KILL_WAIT_S)):
            if whole:
                signal_group(child.pgid, signum)
            signal_pids(doomed, signum)
            if await self._all_gone(child, doomed, whole, wait_s):
                return signum
            doomed |= self._remains(worker, child, whole, spared_runs)[0]
        log.warning(
            "processes of worker %d still there %gs after SIGKILL: %s",
            child.pid, KILL_WAIT_S, sorted(pid for pid in doomed if not gone(pid)),
        )  # fmt: skip
        return signal.SIGKILL

    async def _settled_remains(
        self, worker: _Worker, child: Child, whole: bool, spared_runs: Collection[str] = ()
    ) -> set[int]:
        """What is left of the attempt, once every orphan's marks could be read: one in the
        middle of an execve has none to read for a moment (it may be this worker's)."""
        deadline = time.monotonic() + SETTLE_S
        pause = 0.001
        doomed, unsettled = self._remains(worker, child, whole, spared_runs)
        while unsettled and time.monotonic() < deadline:
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.02)
            doomed, unsettled = self._remains(worker, child, whole, spared_runs)
        return doomed  # still unreadable: the sweep decides

    def _remains(
        self, worker: _Worker, child: Child, whole: bool, spared_runs: Collection[str] = ()
    ) -> tuple[set[int], set[int]]:
        """The attempt's processes left, and the orphans whose marks cannot be read yet."""
        roots, unsettled = [], set()
        for pid, stat in self._orphans():
            if (its := self._is_of(worker, pid, stat, spared_runs)) is None:
                unsettled.add(pid)
            elif its:
                roots.append(pid)
        if whole and child.returncode is None:
            roots.append(child.pid)
        return set(roots) | descendants(roots), unsettled

    async def _all_gone(self, child: Child, doomed: set[int], whole: bool, wait_s: float) -> bool:
        deadline = time.monotonic() + wait_s
        pause = 0.002
        while True:
            self._reap_orphans()
            if all(gone(pid) for pid in doomed) and (
                not whole or (child.returncode is not None and not signal_group(child.pgid, 0))
            ):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)

    # -- orphans ----------------------------------------------------------------------
    def sweep(self) -> None:
        """Reap orphans that exited; SIGKILL those that no attempt in flight claims.

        One in the middle of an execve (its marks unreadable) is left for the next sweep:
        it may be a running attempt's; unreadable twice, it is killed if unclaimed.
        """
        running = [w for w in self._workers.values() if w.run_id]
        unreadable = set()
        for pid, stat in self._orphans():
            if stat.state in ("Z", "X"):
                _reap(pid)
                continue
            if any(self._in_group_of(w, stat) for w in running):
                continue
            marks = _marks(pid)
            if marks is None and pid not in self._unreadable:
                unreadable.add(pid)
            elif marks is None or not any(marks[:2] == self._mark_of(w) for w in running):
                log.info("killing process %d, left behind by an attempt that ended", pid)
                signal_pids({pid} | descendants([pid]), signal.SIGKILL)
        self._unreadable = unreadable

    async def keep_sweeping(self) -> None:
        while True:
            self.sweep()
            await asyncio.sleep(SWEEP_EVERY_S)

    def _orphans(self) -> list[tuple[int, ProcStat]]:
        """The daemon's children that it did not start: re-parented to it from a worker's
        tree. Children it started for itself (git, ...) share its session; workers never do.
        """
        found = []
        spared = self._sentinel.pid if self._sentinel is not None else None
        for pid in self._own_children():
            if pid in self._workers or pid == spared:
                continue
            stat = proc_stat(pid)
            if stat is not None and stat.session != self._session:
                found.append((pid, stat))
        return found

    def _reap_orphans(self) -> None:
        for pid, stat in self._orphans():
            if stat.state in ("Z", "X"):
                _reap(pid)

    @staticmethod
    def _in_group_of(worker: _Worker, stat: ProcStat) -> bool:
        return worker.child.pgid in (stat.session, stat.pgrp)

    def _is_of(
        self, worker: _Worker, pid: int, stat: ProcStat, spared_runs: Collection[str] = ()
    ) -> bool | None:
        """Whether an orphan is this worker's: in its session or group, or carrying its mark,
        and not started for one of `spared_runs` (None: its environment reads empty, so it
        cannot be told yet)."""
        if not spared_runs and self._in_group_of(worker, stat):
            return True  # the usual case: its environment need not be read
        marks = _marks(pid)
        if marks is None:
            return None
        mine = self._in_group_of(worker, stat) or marks[:2] == self._mark_of(worker)
        return mine and marks[2] not in spared_runs

    def _mark_of(self, worker: _Worker) -> tuple[str, str]:
        """What the processes `worker` starts carry (see `_marks`)."""
        return worker.worker_id, self.instance

    # -- after an unclean stop ----------------------------------------------------------
    async def kill_leftovers(self, interrupted: Iterable[Identity]) -> int:
        """SIGKILL what a stopped daemon of this store left running; returns how many.

        Found by the store's mark, by the sessions the marked workers lead, and by the
        process groups recorded on its interrupted runs whose leader is still the same
        process (same start time).
        """
        groups = {
            identity.pgid
            for identity in interrupted
            if (stat := proc_stat(identity.pid)) is not None and stat.start == identity.start
        }
        doomed: set[int] = set()
        for _ in range(2):  # a process in the middle of an execve reads unmarked once
            found = find_marked(MARK_STATE_DIR, self.state_dir, groups) - doomed
            signal_pids(found, signal.SIGKILL)
            doomed |= found
            deadline = time.monotonic() + KILL_WAIT_S
            while not all(gone(pid) for pid in found) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        return len(doomed)


def find_marked(mark: str, value: str, groups: Iterable[int] = ()) -> set[int]:
    """Live processes whose environment has `mark`=`value`, every process in a session one
    of them leads (a worker, env cleared or not), and the members of `groups`."""
    me = os.getpid()
    stats = {pid: stat for pid in all_pids() if pid != me and (stat := proc_stat(pid))}
    stats = {pid: stat for pid, stat in stats.items() if stat.state not in ("Z", "X")}
    marked = {pid for pid in stats if environ(pid).get(mark) == value}
    sessions = {pid for pid in marked if stats[pid].session == pid} | set(groups)
    return marked | {
        pid for pid, stat in stats.items() if stat.session in sessions or stat.pgrp in sessions
    }


def _marks(pid: int) -> tuple[str | None, str | None, str | None] | None:
    """The worker, daemon and run an orphan is marked with; None while that cannot be told.

    An environment reads empty in the middle of an execve (the new image's is not set up:
    the kernel shows its end as 0, then its start and end as one while it fills it in), and
    for a process started with none (start and end one, and still empty when read again).
    """
    if marks := environ(pid):
        return marks.get(MARK_WORKER), marks.get(MARK_DAEMON), marks.get(MARK_RUN)
    stat = proc_stat(pid)
    if stat is None or stat.env_end == 0 or stat.env_start != stat.env_end:
        return None
    for _ in range(EMPTY_LOOKS):  # filling it in takes microseconds: look a few times apart
        time.sleep(0.0002)
        if marks := environ(pid):
            return marks.get(MARK_WORKER), marks.get(MARK_DAEMON), marks.get(MARK_RUN)
    return None, None, None


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _libc():  # type: ignore[no-untyped-def]
    import ctypes

    return ctypes, ctypes.CDLL(None, use_errno=True)


def _set_subreaper(value: int) -> None:
    ctypes, libc = _libc()
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, value, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(error)}")


def _get_subreaper() -> int:
    ctypes, libc = _libc()
    value = ctypes.c_int(0)
    libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(value), 0, 0, 0)
    return value.value


containment = Containment()
