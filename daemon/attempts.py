"""One attempt, a part of the scheduler: the worker run under its stage's executor (which
holds the watchdog), its live progress, and what a stop that cuts it short records.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence

from pipewarden.config import Stage
from pipewarden.outcomes import (
    Decision,
    interrupted,
)
from pipewarden.protocol import Progress, Verdict, WorkerReport
from pipewarden.slots import Ahead, StageSlot
from pipewarden.store import Claimed, NewRun
from pipewarden.types import ItemState, RunStatus
from pipewarden.workers import CancelledAfterReply, Job

log = logging.getLogger("pipewarden.scheduler")
PROGRESS_WRITE_S = 1.0  # live progress reaches the store at most this often
GROUP_COMMIT_S = 0.01  # how long a finished run may wait for others to share its commit


class Attempts:
    """The scheduler's attempts (see scheduler.Scheduler for the state it shares)."""

    async def _attempts(self, slot: StageSlot, claimed: Claimed, new_run: NewRun) -> None:
        """A worker's turn: the attempt, then the items handed ahead to its slot, one after
        another without waiting for a commit, for as long as nothing that finished and is
        not written yet may raise a halt (a failure, a cost: the guard judges it first).
        A pool that pipelines is sent its next items with the current one (`_send_ahead`)."""
        sent: deque[Ahead] = deque()  # written to this worker ahead of its replies, in order
        while True:
            following = self._send_ahead(slot, len(sent))
            sent.extend(following)
            try:
                await self._attempt(slot, claimed, new_run, following)
            except asyncio.CancelledError:
                await self._settle_cut_short(slot, sent)
                raise
            handed = self._next_sent(slot, sent)
            if handed is None and not self._may_halt:
                handed = self._hand_ahead(slot)
            self._to_be_written(slot)
            if handed is None:
                return
            claimed, new_run = handed

    def _send_ahead(self, slot: StageSlot, already: int) -> list[Ahead]:
        """The slot's next items ahead, to be written to the worker with the current one, so
        the worker reads each the moment it replies (no wait for the daemon to hear the
        reply and write the next). Only for a pool that pipelines, while nothing that
        finished may raise a halt; a halt raised later stops them no more than an item
        already started. Topped up to its depth once `already` (sent, not begun) is down
        to half, so the worker is woken once for several."""
        depth = slot.pipeline_depth
        if self._may_halt or not slot.pipelines or already > depth // 2:
            return []
        following: list[Ahead] = []
        while len(following) + already < depth:
            handed = self._hand_ahead(slot, sent=True)
            if handed is None:
                break
            following.append(handed)
        return following

    def _next_sent(self, slot: StageSlot, sent: deque[Ahead]) -> Ahead | None:
        """After the attempt they went with: the first item sent ahead, if its worker holds
        it (it runs next). If not, the worker never read any of them (the attempt got no
        reply): they go back untouched."""
        if not sent:
            return None
        if slot.executor.holds(sent[0][1].run_id):
            claimed, new_run = sent.popleft()
            with self._handing:
                slot.sent -= 1
                slot.in_flight += 1
            self._publish_started(slot, claimed, new_run)
            return claimed, new_run
        with self._handing:
            slot.sent -= len(sent)
            self._put_back.extend((slot, claimed, new_run) for claimed, new_run in sent)
        sent.clear()
        self.wake()
        return None

    async def _settle_cut_short(self, slot: StageSlot, sent: deque[Ahead]) -> None:
        """A stop cut the attempt short: of the items sent with it, each that replied
        meanwhile is recorded as it ended; the first that did not, interrupted (it may have
        started); those after it, and any its worker never read, go back untouched."""
        started_unreplied = False
        while sent:
            claimed, new_run = sent.popleft()
            in_worker = not started_unreplied and slot.executor.holds(new_run.run_id)
            replied = in_worker and slot.executor.replied(new_run.run_id)
            with self._handing:
                slot.sent -= 1
                if replied:
                    slot.in_flight += 1
                elif not in_worker:
                    self._put_back.append((slot, claimed, new_run))
            if replied:
                self._publish_started(slot, claimed, new_run)
                await self._attempt(slot, claimed, new_run)  # reads the reply
            elif in_worker:
                self._record_interrupted(slot, claimed, new_run, self.clock.monotonic())
                started_unreplied = True
            else:
                self.wake()

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
        following: Sequence[Ahead] = (),
    ) -> None:
        job = self._job(claimed, new_run)
        started = self.clock.monotonic()
        cut_short: CancelledAfterReply | None = None
        try:
            if not following:
                report = await slot.executor.run(job, self._progress_of(job))
            else:  # a pool worker's
                sent = [(sent_job := self._job(*ahead), self._progress_of(sent_job))
                        for ahead in following]  # fmt: skip
                report = await slot.executor.run(job, self._progress_of(job), sent)
        except CancelledAfterReply as stopped:  # the work was done: recorded as it ended
            report, cut_short = stopped.report, stopped
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
        if cut_short is not None:
            raise cut_short

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
