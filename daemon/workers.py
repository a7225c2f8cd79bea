"""Running one attempt: a fresh process per item, or a pool of long-lived processes.

Both speak the protocol in `protocol.py` and both run under the watchdog, which covers
the whole attempt, the wait for the process included: at the stage's timeout the
worker's whole process group gets SIGTERM, then SIGKILL after the grace, and the
attempt ends `timed_out`. The reply counts the moment it arrives; a child still holding
the pipes cannot change it. However an attempt ends, `containment` stops what is left
of it. A pool worker that is killed, dies or gets out of step is replaced by a fresh
one for the next item. Whatever way an attempt ends, the report carries an error text
when it did not succeed, and its stderr tail when it failed, timed out or was killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import signal
import sys
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pipewarden.config import Stage
from pipewarden.containment import MARKS, containment
from pipewarden.limits import TRACEBACK_KEPT, cut
from pipewarden.pipes import StderrReader, StdoutReader, last_line
from pipewarden.processes import Child, describe_signal, spawn
from pipewarden.protocol import Progress, Verdict, WorkerReport, request_line
from pipewarden.store.records import span_id_of

STOP_GRACE_S = 2.0  # grace for an idle pool worker at shutdown
PIPE_DRAIN_S = 1.0  # once a worker's processes are gone, how long its pipes may take to close

ProgressCallback = Callable[[Progress], None]
_JOB_VARIABLES = ("PIPEWARDEN_ITEM", "PIPEWARDEN_ATTEMPT", "TRACEPARENT")


@dataclass(frozen=True)
class Job:
    run_id: str
    key: str
    attempt: int
    data: dict[str, Any]
    trace_id: str

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{span_id_of(self.run_id)}-01"

    @property
    def request(self) -> bytes:
        return request_line(self.key, self.run_id, self.attempt, self.data, self.traceparent)


def worker_argv(stage: Stage) -> list[str]:
    if stage.python:  # the runner dies with the daemon by itself (PR_SET_PDEATHSIG)
        return [sys.executable, "-m", "pipewarden._runner", stage.python]
    assert stage.command is not None
    command = list(stage.command)
    # A command dies with the daemon too: util-linux's setpriv sets PR_SET_PDEATHSIG and
    # execs it in place (same pid), so a kill -9 of the daemon ends it in the kernel, before
    # it can do its side effect beside the requeued copy. Where the command cannot be found,
    # it is started bare, so the error says so (not setpriv's exit 127).
    if _SETPRIV is not None and _runnable(command[0], stage):
        return [_SETPRIV, "--pdeathsig", "KILL", "--", *command]
    return command


_SETPRIV = shutil.which("setpriv")


def _runnable(program: str, stage: Stage) -> bool:
    if "/" in program:
        return os.access(stage.cwd / program, os.X_OK)
    path = dict(stage.env).get("PATH", os.environ.get("PATH"))
    found = _FOUND.get((program, path))
    if found is not None and os.access(found, os.X_OK):  # one check, not a walk of PATH
        return True
    _FOUND[(program, path)] = found = shutil.which(program, path=path)
    return found is not None


_FOUND: dict[tuple[str, str | None], str | None] = {}  # (program, PATH) -> where it was found


def worker_env(stage: Stage, worker_id: str, job: Job | None = None) -> dict[str, str]:
    env = dict(_stage_env(stage.pipeline, stage.name, stage.env))
    env.update(containment.env(worker_id, job.run_id if job else None))
    if job is not None:
        env["PIPEWARDEN_ITEM"] = job.key
        env["PIPEWARDEN_ATTEMPT"] = str(job.attempt)
        env["TRACEPARENT"] = job.traceparent
    return env


@functools.lru_cache(maxsize=256)
def _stage_env(pipeline: str, name: str, extra: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """The environment every worker of a stage starts from, made once (the daemon never
    changes its own environment; reading os.environ decodes every entry anew)."""
    env = {k: v for k, v in os.environ.items() if k not in (*MARKS, *_JOB_VARIABLES)}
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    env["PIPEWARDEN_PIPELINE"] = pipeline
    env["PIPEWARDEN_STAGE"] = name
    return env


def timeout_report(stage: Stage, final_signal: int, stderr: str | None) -> WorkerReport:
    how = (
        f"killed by SIGKILL after {stage.grace_s:g}s grace"
        if final_signal == signal.SIGKILL
        else "stopped by SIGTERM"
    )
    return WorkerReport(
        Verdict.ERROR,
        error=f"Timed out after {stage.timeout_s:g}s ({how})",
        error_type="TimeoutError",
        exception_types=("TimeoutError",),
        traceback=cut(stderr, TRACEBACK_KEPT),
        timed_out=True,
        signal=final_signal or signal.SIGTERM,
    )


def exit_report(returncode: int, stderr: str | None, replied: bool) -> WorkerReport:
    """An attempt whose worker ended without a result line."""
    tail = cut(stderr, TRACEBACK_KEPT)
    if returncode < 0:
        signum = -returncode
        error = f"worker exited with signal {signum} ({describe_signal(signum)})"
        return WorkerReport(Verdict.ERROR, error=error, signal=signum, traceback=tail)
    if returncode == 0 and not replied:
        return WorkerReport(Verdict.OK, exit_code=0)
    error = last_line(stderr) or f"exit code {returncode}, no output"
    return WorkerReport(Verdict.ERROR, error=error, exit_code=returncode, traceback=tail)


class CancelledAfterReply(asyncio.CancelledError):
    """A stop cut the attempt short once its worker had replied: the work was done, and
    `report` says how it ended. Recorded as interrupted, the item would run again."""

    def __init__(self, report: WorkerReport):
        super().__init__()
        self.report = report


def _has_reply(reply: asyncio.Future[WorkerReport]) -> bool:
    return reply.done() and not reply.cancelled()


def _unreplied(returncode: int, stderr: str | None) -> WorkerReport:
    """A pool worker that ended in the middle of an item: exit 0 is still a lost item."""
    report = exit_report(returncode, stderr, replied=True)
    if report.verdict is Verdict.OK:
        return WorkerReport(Verdict.ERROR, error="worker exited before replying", exit_code=0)
    return report


def _with_reply(report: WorkerReport, returncode: int | None, stderr: str | None) -> WorkerReport:
    """A result line from the worker, with how the process ended and, on failure, stderr."""
    if returncode is not None and returncode >= 0:
        report.exit_code = returncode
    elif returncode is not None:
        report.signal = -returncode
    if report.verdict is Verdict.ERROR and report.traceback is None:
        report.traceback = stderr
    report.traceback = cut(report.traceback, TRACEBACK_KEPT)
    return report


def _finish(report: WorkerReport, output: str | None, child: Child) -> WorkerReport:
    report.output = [output] if output else []
    identity = child.identity
    report.pid, report.pgid, report.proc_start = identity.pid, identity.pgid, identity.start
    return report


async def _first(timeout_s: float, *futures: asyncio.Future[Any]) -> bool:
    """Until the first of `futures` is done, or `timeout_s` has passed; True if the watchdog
    came first. None of the futures is cancelled: they must live on. One timer and one
    future per attempt: `asyncio.timeout` around a wait cost the loop three times as much."""
    if any(future.done() for future in futures):
        return False
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[bool] = loop.create_future()

    def wake(_: asyncio.Future[Any]) -> None:
        if not woken.done():
            woken.set_result(False)

    def fire() -> None:
        if not woken.done():
            woken.set_result(True)

    watchdog = loop.call_later(timeout_s, fire)
    for future in futures:
        future.add_done_callback(wake)
    try:
        return await woken
    finally:
        watchdog.cancel()
        for future in futures:
            future.remove_done_callback(wake)


async def _drained(stdout: StdoutReader, stderr: StderrReader) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(PIPE_DRAIN_S):
            await stdout.closed.wait()
            await stderr.closed.wait()


class ProcessWorker:
    """A fresh process per attempt: the item on stdin, then stdin closed."""

    # What reads the worker's pipes (`pipewarden replay` shows them on the terminal too).
    stdout_reader: type[StdoutReader] = StdoutReader
    stderr_reader: type[StderrReader] = StderrReader

    def __init__(self, stage: Stage):
        self.stage = stage

    @property
    def capacity(self) -> int:
        return self.stage.concurrency

    def reconfigure(self, stage: Stage) -> None:
        self.stage = stage

    async def stop(self) -> None:
        """Nothing lives between attempts."""

    async def run(self, job: Job, on_progress: ProgressCallback) -> WorkerReport:
        stage = self.stage
        stdout, stderr = self.stdout_reader(), self.stderr_reader()
        child = spawn(worker_argv(stage), stage.cwd, worker_env(stage, job.run_id, job))
        containment.track(child, job.run_id, job.run_id)
        reply = stdout.begin(on_progress)
        timed_out = cut_short = False
        try:
            child.attach(stdout, stderr)
            timed_out = await self._talk(child, job, reply)
        except asyncio.CancelledError:
            if not _has_reply(reply):
                raise
            cut_short = True  # it replied, and was stopped before it exited
        finally:  # success, failure, timeout or shutdown: nothing of the attempt lives on
            final = await containment.end(child, stage.grace_s)
            await _drained(stdout, stderr)
            child.close()
            containment.untrack(child)
        output, tail = stdout.end(), stderr.tail.text()
        if cut_short:
            report = _with_reply(reply.result(), None, tail)
            raise CancelledAfterReply(_finish(report, output, child))
        if reply.done():
            report = _with_reply(reply.result(), child.returncode, tail)
        elif timed_out:
            report = timeout_report(stage, final, tail)
        else:
            assert child.returncode is not None
            report = exit_report(child.returncode, tail, replied=False)
        return _finish(report, output, child)

    async def _talk(self, child: Child, job: Job, reply: asyncio.Future[WorkerReport]) -> bool:
        """Until the worker exits, its reply perhaps first; True if the watchdog fired first."""
        assert child.stdin is not None
        child.stdin.write(job.request)
        child.close_stdin()
        # A worker that replied still has until the timeout to exit.
        return await _first(self.stage.timeout_s, child.exited) and not reply.done()


@dataclass
class _Sent:
    """An item written to a pool worker before it replied to the one it works on."""

    job: Job
    child: Child
    reply: asyncio.Future[WorkerReport]
    stderr_mark: int = 0  # where its share of the worker's stderr starts


class PoolWorker:
    """One long-lived process reading items one after another; replaced when it dies.

    A worker may be sent its next items with the one it works on (`following`), in one
    write: it reads each the moment it replies to the one before, without waiting for the
    daemon to hear that reply, and is woken once for them all. An item has not started
    until the one before it replied: a worker that times out or dies before that leaves
    it, and every item after it, unstarted (out of `sent`), to go back to the queue
    untouched.
    """

    stdout_reader: type[StdoutReader] = StdoutReader
    stderr_reader: type[StderrReader] = StderrReader

    def __init__(self, stage: Stage):
        self.stage = stage
        self._child: Child | None = None
        self._stdout = self.stdout_reader()
        self._stderr = self.stderr_reader()
        self.sent: deque[_Sent] = deque()  # the next items, written ahead of the replies

    async def _ensure_started(self, job: Job) -> Child:
        child = self._child
        if child is not None and child.returncode is None and not self._stdout.out_of_step:
            return child
        await self._discard(self.stage.grace_s)  # dead or out of step: what is left of it goes
        self._stdout, self._stderr = self.stdout_reader(), self.stderr_reader()
        worker_id = uuid.uuid4().hex
        child = spawn(worker_argv(self.stage), self.stage.cwd, worker_env(self.stage, worker_id))
        containment.track(child, worker_id, job.run_id)  # recorded once, on the run it starts for
        self._child = child
        try:
            child.attach(self._stdout, self._stderr)
        except BaseException:
            await self._discard(self.stage.grace_s)
            raise
        return child

    async def run(
        self,
        job: Job,
        on_progress: ProgressCallback,
        following: Sequence[tuple[Job, ProgressCallback]] = (),
    ) -> WorkerReport:
        sent = self._take_sent(job)
        if sent is not None:
            if sent.child is not self._child or self._stdout.out_of_step:
                return await self._lost_before_reply(sent)
            child, reply = sent.child, sent.reply
        else:
            child = await self._ensure_started(job)
            (reply,) = self._send(child, [(job, on_progress)])
        containment.attempt(child, job.run_id)
        stdout, stderr = self._stdout, self._stderr
        mark = stderr.tail.total
        if following:
            replies = self._send(child, following)
            for (sent_job, _), sent_reply in zip(following, replies, strict=True):
                self.sent.append(_Sent(sent_job, child, sent_reply))
        try:
            timed_out = await _first(self.stage.timeout_s, reply, child.exited) and not reply.done()
        except asyncio.CancelledError:
            if not reply.done():
                self._forget_unstarted(reply)
            await self._discard(self.stage.grace_s)
            if not _has_reply(reply):
                raise
            report = _with_reply(reply.result(), None, stderr.tail.text(mark))
            raise CancelledAfterReply(_finish(report, stdout.end(reply), child)) from None
        if not reply.done():  # the items sent after it were never read
            self._forget_unstarted(reply)
        elif self.sent:  # the next one's share of stderr starts here
            self.sent[0].stderr_mark = stderr.tail.total
        if reply.done() and child.returncode is None:  # it lives on; what escaped it goes
            spared = {sent.job.run_id for sent in self.sent}  # what it already works on
            await containment.end(child, self.stage.grace_s, whole=False, spared_runs=spared)
            containment.attempt(child, self.sent[0].job.run_id if self.sent else None)
            report = _with_reply(reply.result(), None, stderr.tail.text(mark))
            return _finish(report, stdout.end(reply), child)
        final = await self._discard(self.stage.grace_s)  # timed out, or died mid-item
        output, tail = stdout.end(reply), stderr.tail.text(mark)
        if reply.done():
            report = _with_reply(reply.result(), child.returncode, tail)
        elif timed_out:
            report = timeout_report(self.stage, final, tail)
        else:
            assert child.returncode is not None
            report = _unreplied(child.returncode, tail)
        return _finish(report, output, child)

    def _take_sent(self, job: Job) -> _Sent | None:
        """`job` as sent ahead, if it was (the first of `sent`: items run in order)."""
        if self.sent and self.sent[0].job.run_id == job.run_id:
            return self.sent.popleft()
        self._forget_sent()
        return None

    def _send(
        self, child: Child, jobs: Sequence[tuple[Job, ProgressCallback]]
    ) -> list[asyncio.Future[WorkerReport]]:
        replies = [self._stdout.begin(on_progress) for _, on_progress in jobs]
        if child.stdin is not None:  # what the pipe cannot take now goes as the worker reads
            child.stdin.write(b"".join(job.request for job, _ in jobs))  # closed: waited for
        return replies

    def _forget_sent(self) -> None:
        """The items sent ahead were never read: they leave `sent`, unstarted."""
        for sent in self.sent:
            self._stdout.end(sent.reply)
        self.sent.clear()

    def _forget_unstarted(self, reply: asyncio.Future[WorkerReport]) -> None:
        """The current item got no reply: the worker never read those sent after it."""
        self._forget_sent()
        self._stdout.end(reply)

    async def _lost_before_reply(self, sent: _Sent) -> WorkerReport:
        """An item its worker read, then the worker died or got out of step: its reply, if
        it came first, else a failure (it may have started: it is not given back). Those
        sent after an item with no reply were never read: they leave `sent`, unstarted."""
        out_of_step = sent.child is self._child
        if out_of_step:
            await self._discard(self.stage.grace_s)
        tail = self._stderr.tail.text(sent.stderr_mark)
        if not _has_reply(sent.reply):
            self._forget_sent()
        elif not self._stdout.out_of_step:  # it replied first
            report = _with_reply(sent.reply.result(), sent.child.returncode, tail)
            return _finish(report, self._stdout.end(sent.reply), sent.child)
        if not self._stdout.out_of_step:
            assert sent.child.returncode is not None
            return _finish(_unreplied(sent.child.returncode, tail), None, sent.child)
        report = WorkerReport(
            Verdict.ERROR,
            error="worker replaced before it replied: its output got out of step",
            error_type="ProtocolError",
            traceback=cut(tail, TRACEBACK_KEPT),
        )
        return _finish(report, None, sent.child)

    async def _discard(self, grace_s: float) -> int:
        """End the worker and everything it started; returns the signal that took."""
        child, self._child = self._child, None
        if child is None:
            return 0
        final = await containment.end(child, grace_s)
        await _drained(self._stdout, self._stderr)
        child.close()
        containment.untrack(child)
        return final

    async def stop(self) -> None:
        """Close stdin (a protocol worker exits at EOF) and make sure the tree is gone."""
        child = self._child
        if child is None:
            return
        if child.returncode is None:
            child.close_stdin()
            await _first(STOP_GRACE_S, child.exited)
        await self._discard(STOP_GRACE_S)


class WorkerPool:
    """The long-lived workers of one stage, one item each at a time, and perhaps its next
    ones sent ahead (`pipelines`): the worker they were sent to runs them.
    """

    def __init__(self, stage: Stage):
        self.stage = stage
        self._workers = [PoolWorker(stage) for _ in range(stage.concurrency)]
        self._idle: asyncio.Queue[PoolWorker] = asyncio.Queue()
        for worker in self._workers:
            self._idle.put_nowait(worker)
        self._holding: dict[str, PoolWorker] = {}  # run id sent ahead -> the worker it went to

    @property
    def capacity(self) -> int:
        return self.stage.concurrency

    @property
    def pipelines(self) -> bool:
        """Whether a worker may be sent its next items before it replies: only where what
        the item starts is told apart by its run (the Python runner marks it, a command
        does not), and never for `on_interrupt: hold` (a crash would hold an item as started
        that its worker never read)."""
        return self.stage.python is not None and self.stage.on_interrupt != "hold"

    def reconfigure(self, stage: Stage) -> None:
        """New timeouts and policies for the same processes (busy ones included)."""
        self.stage = stage
        for worker in self._workers:
            worker.stage = stage

    def holds(self, run_id: str) -> bool:
        """Whether the item of `run_id`, sent ahead, is in a worker (else it never started)."""
        return run_id in self._holding

    def replied(self, run_id: str) -> bool:
        """Whether the item of `run_id`, sent ahead and in a worker, has its reply already."""
        worker = self._holding.get(run_id)
        return worker is not None and any(
            sent.job.run_id == run_id and _has_reply(sent.reply) for sent in worker.sent
        )

    async def run(
        self,
        job: Job,
        on_progress: ProgressCallback,
        following: Sequence[tuple[Job, ProgressCallback]] = (),
    ) -> WorkerReport:
        worker = self._holding.pop(job.run_id, None) or self._idle.get_nowait()
        for sent in worker.sent:  # held again below, those the worker still has
            self._holding.pop(sent.job.run_id, None)
        try:
            return await worker.run(job, on_progress, following)
        finally:
            for sent in worker.sent:
                self._holding[sent.job.run_id] = worker
            if not worker.sent:
                self._idle.put_nowait(worker)

    async def stop(self) -> None:
        await asyncio.gather(*(worker.stop() for worker in self._workers))


def executor_for(stage: Stage) -> ProcessWorker | WorkerPool:
    return WorkerPool(stage) if stage.mode == "pool" else ProcessWorker(stage)
