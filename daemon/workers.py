"""Running one attempt: a fresh process per item, or a pool of long-lived processes.

Both speak the protocol in `protocol.py` and both run under the watchdog: at the
stage's timeout the worker's whole process group gets SIGTERM, then SIGKILL after
the grace, and the attempt ends `timed_out`. A pool worker that is killed or dies is
replaced by a fresh one for the next item. Whatever way an attempt ends, the
report carries an error text when it did not succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipewarden.config import Stage
from pipewarden.processes import StderrTail, describe_signal, spawn, terminate_tree
from pipewarden.protocol import Progress, Verdict, WorkerReport, parse_line, request_line

STDERR_TAIL_LINES = 30  # kept on a failed run
OUTPUT_LINES_KEPT = 50  # non-protocol stdout lines kept on a run
STOP_GRACE_S = 2.0  # grace for an idle pool worker at shutdown

ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class Job:
    run_id: str
    key: str
    attempt: int
    data: dict[str, Any]
    trace_id: str

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.run_id[:16]}-01"


def worker_argv(stage: Stage) -> list[str]:
    if stage.python:
        return [sys.executable, "-m", "pipewarden._runner", stage.python]
    assert stage.command is not None
    return list(stage.command)


def worker_env(stage: Stage, job: Job | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(stage.env)
    env["PYTHONUNBUFFERED"] = "1"
    env["PIPEWARDEN_PIPELINE"] = stage.pipeline
    env["PIPEWARDEN_STAGE"] = stage.name
    if job is not None:
        env["PIPEWARDEN_ITEM"] = job.key
        env["PIPEWARDEN_RUN_ID"] = job.run_id
        env["PIPEWARDEN_ATTEMPT"] = str(job.attempt)
        env["TRACEPARENT"] = job.traceparent
    return env


def timeout_report(stage: Stage, final_signal: int, pid: int) -> WorkerReport:
    how = (
        "stopped by SIGTERM"
        if final_signal != 9
        else f"killed by SIGKILL after {stage.grace_s:g}s grace"
    )
    return WorkerReport(
        Verdict.ERROR,
        error=f"Timed out after {stage.timeout_s:g}s ({how})",
        error_type="TimeoutError",
        exception_types=("TimeoutError",),
        timed_out=True,
        signal=final_signal,
        pid=pid,
    )


def exit_report(returncode: int, stderr: list[str], pid: int, replied: bool) -> WorkerReport:
    """An attempt whose worker ended without a result line."""
    tail = "\n".join(stderr[-STDERR_TAIL_LINES:]) or None
    if returncode < 0:
        signum = -returncode
        error = f"worker exited with signal {signum} ({describe_signal(signum)})"
        return WorkerReport(Verdict.ERROR, error=error, signal=signum, pid=pid, traceback=tail)
    if returncode == 0 and not replied:
        return WorkerReport(Verdict.OK, exit_code=0, pid=pid)
    last_line = next((line.strip() for line in reversed(stderr) if line.strip()), "")
    error = last_line or f"exit code {returncode}, no output"
    return WorkerReport(Verdict.ERROR, error=error, exit_code=returncode, pid=pid, traceback=tail)


async def _read_reply(
    stdout: asyncio.StreamReader, on_progress: ProgressCallback, output: list[str]
) -> WorkerReport | None:
    """Read lines until a result arrives (returned) or the stream ends (None)."""
    while True:
        try:
            raw = await stdout.readline()
        except ValueError:
            output.append("[a stdout line longer than the limit was dropped]")
            continue
        if not raw:
            return None
        parsed = parse_line(raw)
        if isinstance(parsed, WorkerReport):
            return parsed
        if isinstance(parsed, Progress):
            on_progress(parsed)
        elif len(output) < OUTPUT_LINES_KEPT:
            output.append(parsed)


def _finish(report: WorkerReport, output: list[str], pid: int) -> WorkerReport:
    report.output = output
    report.pid = pid
    return report


class ProcessWorker:
    """A fresh process per attempt: the item on stdin, then stdin closed."""

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
        proc = await spawn(worker_argv(self.stage), self.stage.cwd, worker_env(self.stage, job))
        tail = StderrTail()
        stderr_task = asyncio.create_task(tail.consume(proc.stderr))  # type: ignore[arg-type]
        output: list[str] = []
        try:
            async with asyncio.timeout(self.stage.timeout_s):
                return await self._talk(proc, job, on_progress, tail, output)
        except TimeoutError:
            final = await terminate_tree(proc, self.stage.grace_s)
            return _finish(timeout_report(self.stage, final, proc.pid), output, proc.pid)
        except asyncio.CancelledError:
            await terminate_tree(proc, self.stage.grace_s)
            raise
        finally:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tail.closed.wait(), 1.0)
            stderr_task.cancel()

    async def _talk(
        self,
        proc: asyncio.subprocess.Process,
        job: Job,
        on_progress: ProgressCallback,
        tail: StderrTail,
        output: list[str],
    ) -> WorkerReport:
        assert proc.stdin and proc.stdout
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.write(
                request_line(job.key, job.run_id, job.attempt, job.data, job.traceparent)
            )
            await proc.stdin.drain()
            proc.stdin.close()
        reply = await _read_reply(proc.stdout, on_progress, output)
        if reply is not None:  # keep reading: later lines are output, and EOF means exit
            while raw := await proc.stdout.readline():
                if isinstance(parsed := parse_line(raw), str) and len(output) < OUTPUT_LINES_KEPT:
                    output.append(parsed)
        returncode = await proc.wait()
        await tail.closed.wait()
        if reply is None:
            reply = exit_report(returncode, tail.since(0), proc.pid, replied=False)
        else:
            reply.exit_code = returncode
            if reply.verdict is Verdict.ERROR and reply.traceback is None:
                reply.traceback = "\n".join(tail.since(0)[-STDERR_TAIL_LINES:]) or None
        return _finish(reply, output, proc.pid)


class PoolWorker:
    """One long-lived process reading items one after another; restarted when it dies."""

    def __init__(self, stage: Stage):
        self.stage = stage
        self._proc: asyncio.subprocess.Process | None = None
        self._tail = StderrTail()
        self._stderr_task: asyncio.Task[None] | None = None

    async def _ensure_started(self) -> asyncio.subprocess.Process:
        if self._proc is None or self._proc.returncode is not None:
            self._proc = await spawn(
                worker_argv(self.stage), self.stage.cwd, worker_env(self.stage)
            )
            self._tail = StderrTail()
            self._stderr_task = asyncio.create_task(self._tail.consume(self._proc.stderr))  # type: ignore[arg-type]
        return self._proc

    async def run(self, job: Job, on_progress: ProgressCallback) -> WorkerReport:
        proc = await self._ensure_started()
        assert proc.stdin and proc.stdout
        mark = self._tail.mark()
        output: list[str] = []
        try:
            proc.stdin.write(
                request_line(job.key, job.run_id, job.attempt, job.data, job.traceparent)
            )
            async with asyncio.timeout(self.stage.timeout_s):
                await proc.stdin.drain()
                reply = await _read_reply(proc.stdout, on_progress, output)
        except TimeoutError:
            final = await self._discard(self.stage.grace_s)
            return _finish(timeout_report(self.stage, final, proc.pid), output, proc.pid)
        except (BrokenPipeError, ConnectionResetError):
            reply = None
        except asyncio.CancelledError:
            await self._discard(self.stage.grace_s)
            raise
        if reply is None:  # the worker died mid-item: say how, from its exit and stderr
            returncode = await proc.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._tail.closed.wait(), 1.0)
            self._proc = None
            report = exit_report(returncode, self._tail.since(mark), proc.pid, replied=True)
            if report.verdict is Verdict.OK:  # exit 0 without a reply is still a lost item
                report = WorkerReport(
                    Verdict.ERROR, error="worker exited before replying", exit_code=0
                )
            return _finish(report, output, proc.pid)
        if reply.verdict is Verdict.ERROR and reply.traceback is None:
            reply.traceback = "\n".join(self._tail.since(mark)[-STDERR_TAIL_LINES:]) or None
        return _finish(reply, output, proc.pid)

    async def _discard(self, grace_s: float) -> int:
        proc, self._proc = self._proc, None
        if proc is None:
            return 0
        return await terminate_tree(proc, grace_s)

    async def stop(self) -> None:
        """Close stdin (a protocol worker exits at EOF) and make sure the tree is gone."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, AttributeError):
            proc.stdin.close()  # type: ignore[union-attr]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
        await self._discard(STOP_GRACE_S)


class WorkerPool:
    """The long-lived workers of one stage, one item each at a time.

    No item is handed out ahead of a free worker: one claimed early could still start
    after its channel halted.
    """

    def __init__(self, stage: Stage):
        self.stage = stage
        self._workers = [PoolWorker(stage) for _ in range(stage.concurrency)]
        self._idle: asyncio.Queue[PoolWorker] = asyncio.Queue()
        for worker in self._workers:
            self._idle.put_nowait(worker)

    @property
    def capacity(self) -> int:
        return self.stage.concurrency

    def reconfigure(self, stage: Stage) -> None:
        """New timeouts and policies for the same processes (busy ones included)."""
        self.stage = stage
        for worker in self._workers:
            worker.stage = stage

    async def run(self, job: Job, on_progress: ProgressCallback) -> WorkerReport:
        worker = self._idle.get_nowait()  # the scheduler never claims beyond capacity
        try:
            return await worker.run(job, on_progress)
        finally:
            self._idle.put_nowait(worker)

    async def stop(self) -> None:
        await asyncio.gather(*(worker.stop() for worker in self._workers))


def executor_for(stage: Stage) -> ProcessWorker | WorkerPool:
    return WorkerPool(stage) if stage.mode == "pool" else ProcessWorker(stage)
