"""One attempt, a part of the scheduler: the worker run under its stage's executor (which
holds the watchdog), its live progress, and what a stop that cuts it short records.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from pipewarden.config import Stage
from pipewarden.outcomes import (
    Decision,
    interrupted,
)
from pipewarden.protocol import Progress, Verdict, WorkerReport
from pipewarden.slots import StageSlot
from pipewarden.store import Claimed, NewRun
from pipewarden.types import ItemState, RunStatus
from pipewarden.workers import Job

log = logging.getLogger("pipewarden.scheduler")
PROGRESS_WRITE_S = 1.0  # live progress reaches the store at most this often
GROUP_COMMIT_S = 0.01  # how long a finished run may wait for others to share its commit


class Attempts:
    """The scheduler's attempts (see scheduler.Scheduler for the state it shares)."""

    async def _attempts(self, slot: StageSlot, claimed: Claimed, new_run: NewRun) -> None:
        """A worker's turn: the attempt, then the items handed ahead to its slot, one after
        another without waiting for a commit, for as long as nothing that finished and is
        not written yet may raise a halt (a failure, a cost: the guard judges it first).
        A pool that pipelines is sent the next item with the current one (see `_send_ahead`)."""
        while True:
            following = self._send_ahead(slot)
            try:
                await self._attempt(slot, claimed, new_run, following)
            except asyncio.CancelledError:
                if following is not None and self._settle_sent(slot, following, cancelled=True):
                    await self._attempt(slot, *following)  # it replied before the stop
                raise
            if following is not None and self._settle_sent(slot, following):
                handed: tuple[Claimed, NewRun] | None = following
            else:
                handed = None if self._may_halt else self._hand_ahead(slot)
            self._to_be_written(slot)
            if handed is None:
                return
            claimed, new_run = handed

    def _send_ahead(self, slot: StageSlot) -> tuple[Claimed, NewRun] | None:
        """The slot's next item ahead, to be written to the worker with the current one, so
        the worker reads it the moment it replies (no wait for the daemon to hear the reply
        and write the next). Only for a pool that pipelines, while nothing that finished may
        raise a halt; a halt raised later stops it no more than an item already started."""
        if self._may_halt or not slot.pipelines:
            return None
        return self._hand_ahead(slot, sent=True)

    def _settle_sent(
        self, slot: StageSlot, sent: tuple[Claimed, NewRun], cancelled: bool = False
    ) -> bool:
        """After the attempt it went with: True if the item sent ahead is in its worker and
        runs next. One its worker never read (the attempt got no reply) goes back untouched.
        When a stop cut the attempt short: one that replied meanwhile is recorded as it
        ended (True: its attempt runs to read the reply), one that did not, interrupted."""
        claimed, new_run = sent
        in_worker = slot.executor.holds(new_run.run_id)
        runs = in_worker and (not cancelled or slot.executor.replied(new_run.run_id))
        with self._handing:
            slot.sent -= 1
            if runs:
                slot.in_flight += 1
            elif not in_worker:
                self._put_back.append((slot, claimed, new_run))
        if runs:
            self._publish_started(slot, claimed, new_run)
        elif in_worker:
            self._record_interrupted(slot, claimed, new_run, self.clock.monotonic())
        else:
            self.wake()
        return runs

    def _to_be_written(self, slot: StageSlot) -> None:
        """An attempt ended: a pass writes it now when the guard must judge it, a worker is
        free or the items ahead run low; else within GROUP_COMMIT_S, with the others that
        end meanwhile (one commit for all)."""
        if self._may_halt or slot.idle > 0 or len(slot.ahead) <= slot.ahead_allowed // 2:
            self.wake()
        elif self._group_commit is None:
            self._group_commit = asyncio.get_running_loop().call_later(GROUP_COMMIT_S, self.wake)

    async def _attempt(
        self,
        slot: StageSlot,
        claimed: Claimed,
        new_run: NewRun,
        following: tuple[Claimed, NewRun] | None = None,
    ) -> None:
        job = self._job(claimed, new_run)
        started = self.clock.monotonic()
        try:
            if following is None:
                report = await slot.executor.run(job, self._progress_of(job))
            else:
                sent = self._job(*following)
                report = await slot.executor.run(
                    job, self._progress_of(job), (sent, self._progress_of(sent))
                )
        except asyncio.CancelledError:
            self._record_interrupted(slot, claimed, new_run, started)
            raise
        except Exception as exc:  # the worker could not even start (missing command, ...)
            report = WorkerReport(Verdict.ERROR, error=f"cannot start worker: {exc}")
        finally:
            slot.in_flight -= 1
            self._last_ended = self.clock.monotonic()
            slot.timed(self._last_ended - started)
        try:
            finished, decision = self._judge(slot, claimed, new_run, report, started)
        except Exception as exc:  # a bad value or a bug here must not lose or spin the item
            log.exception("recording run %s failed", job.run_id)
            finished, decision = self._internal_failure(
                slot, claimed, new_run, report, started, exc
            )
        slot.judged(decision.run_status is RunStatus.OK)
        self._add_finished(finished, claimed.key, claimed.attempt)
        log_run(self.config.log_runs, slot.stage, claimed, new_run, decision)
        if new_run.run_id in self._probes:  # its halt is cleared or kept by the next pass
            hold_id = self._probes.pop(new_run.run_id)
            self._probe_ends.append((hold_id, claimed, decision, self.clock.now()))

    @staticmethod
    def _job(claimed: Claimed, new_run: NewRun) -> Job:
        return Job(new_run.run_id, claimed.key, claimed.attempt, claimed.data, new_run.trace_id)

    def _progress_of(self, job: Job) -> Callable[[Progress], None]:
        return lambda progress: self._record_progress(job.run_id, progress)

    def _record_progress(self, run_id: str, progress: Progress) -> None:
        self._progress[run_id] = (progress.fraction, progress.message)
        self.events.publish(
            "run_progress", run_id=run_id, progress=progress.fraction, message=progress.message
        )
        # The loop may sleep for as long as the attempt runs: progress is written on a
        # timer of its own, so `status` and the page see it within a second.
        if self._progress_timer is None:
            delay = self._progress_written + PROGRESS_WRITE_S - self.clock.monotonic()
            self._progress_timer = asyncio.get_running_loop().call_later(
                max(0.0, delay), self._write_progress
            )

    def _record_interrupted(
        self,
        slot: StageSlot,
        claimed: Claimed,
        new_run: NewRun,
        started: float,
    ) -> None:
        now = self.clock.now()
        decision = interrupted(slot.stage, claimed.attempt, now, self._interrupt_reason)
        report = WorkerReport(Verdict.ERROR, error=decision.error)
        duration = self.clock.monotonic() - started
        self._add_finished(
            self._finished_run(slot, claimed, new_run, report, decision, claimed.data, duration),
            claimed.key,
            claimed.attempt,
        )
        log.warning(
            "%s %s#%d interrupted: %s -> %s",
            slot.stage.qualified_name, claimed.key, claimed.attempt, decision.error, decision.note,
        )  # fmt: skip


def log_run(
    setting: str, stage: Stage, claimed: Claimed, new_run: NewRun, decision: Decision
) -> None:
    """The run's log line, as `log_runs` says: every run (info), those that did not succeed
    (failures, the default: a line per ok run cost more than the run), or none (off)."""
    c = decision.classification
    if setting == "off" or (setting == "failures" and decision.run_status in _QUIET_STATUSES):
        return
    head = f"{stage.qualified_name} {claimed.key}#{claimed.attempt} run={new_run.run_id[:8]}"
    if c is None:
        log.info("%s %s %s", head, decision.run_status, decision.note)
        return
    level = logging.WARNING if decision.item_state is ItemState.FAILED else logging.INFO
    rule = f" ({c.rule_id})" if c.rule_id else ""
    log.log(
        level,
        "%s %s [%s · %s]%s: %s -> %s",
        head, decision.run_status, c.group, c.label, rule, one_line(decision.error), decision.note,
    )  # fmt: skip


# Not logged with `log_runs: failures`: the runs that did what they should, or chose to wait.
_QUIET_STATUSES = (RunStatus.OK, RunStatus.SKIPPED, RunStatus.DEFERRED)


def one_line(text: str | None, limit: int = 160) -> str:
    line = text.strip().splitlines()[0] if text and text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"
