"""Recording, a part of the scheduler: what finished, its progress and the pass's claims
reach the store in one commit; the guard and the notifier see each batch (flush), the
observers once it is committed; a commit the store cannot take is undone in memory too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pipewarden import faults
from pipewarden.attempts import one_line
from pipewarden.guard import FAILED, Guard
from pipewarden.store import FinishedRun

log = logging.getLogger("pipewarden.scheduler")


class Recording:
    """The scheduler's writes (see scheduler.Scheduler for the state it shares)."""

    def _in_one_commit(self, write: Callable[[], list[FinishedRun]]) -> bool:
        """`write()` in one transaction; False when the store cannot take it (the outage
        says so). A damaged store is raised."""
        fault = self._commit(write)
        if fault is not None and fault.kind == faults.FULL and faults.make_room(self.store):
            fault = self._commit(write)  # the WAL held the space: checkpointed, once more
        if fault is not None:
            self.outage.failed(fault)
            return False
        self.outage.over()
        return True

    def _commit(self, write: Callable[[], list[FinishedRun]]) -> faults.StoreFault | None:
        """`write()` committed and the observers told of the runs it wrote; or the fault
        that stopped it, the pass undone in memory as the rollback undid it in the store."""
        undo = self._undo_point()
        try:
            if fault := self.store.unwritable():
                raise fault  # a write now would vanish, or kill the daemon (SIGBUS)
            with self.store.transaction():
                written = write()
        except Exception as exc:
            if (fault := faults.fault_of(exc, self.store.path)) is None:
                raise
            undo()
            if not fault.passing:
                raise fault from None
            return fault
        for observer in self.observers if written else ():
            observer.runs_finished(written)
        return None

    def _undo_point(self) -> Callable[[], None]:
        """What a pass changes in memory, and how to put it back when its commit fails.

        The pass never awaits, so nothing else changes these meanwhile; a task it created
        has not started, and cancelled now it never runs a worker. (Its `run_started`
        events are out: the page may show such a start until it reads the status again.)
        """
        finished, progress, probes, holds = (
            list(self._finished), dict(self._progress), dict(self._probes), self._holds,
        )  # fmt: skip
        in_flight = [(slot, slot.in_flight) for slot in self._slots]
        tasks, guard = set(self._tasks), self.guard

        def undo() -> None:
            for task in self._tasks - tasks:
                task.cancel()
            for slot, count in in_flight:
                slot.in_flight = count
            self._finished, self._progress, self._probes, self._holds = (
                finished, progress, probes, holds,
            )  # fmt: skip
            # A new guard: the old one counted the batch's costs into its day's spending.
            self.guard = Guard(self.store, guard.rules, guard.stages)

        return undo

    def flush(self) -> list[FinishedRun]:
        """Write finished runs and progress; let the guard and the notifier see them.

        Returns the runs written, for the observers once the caller's transaction commits.
        """
        if not (self._finished or self._progress):
            return []
        finished, self._finished = self._finished, []
        progress, self._progress = self._progress, {}
        self.store.finish(finished, progress)
        if not finished:
            return []
        now = self.clock.now()
        if any(run.status in FAILED or run.cost for run in finished):
            for hold in self.guard.check(finished, now, self.store.active_holds()):
                self._notify_halt(hold, now)
        for run in finished:
            self._notify_run(run, now)
        return finished

    def _write_progress(self) -> None:
        self._progress_timer = None
        if self.outage.fault is not None:  # kept for the pass that commits next
            return
        self._progress_written = self.clock.monotonic()
        progress, self._progress = self._progress, {}
        if not progress:  # a loop pass wrote it first
            return
        try:
            self.store.finish([], progress)
        except Exception as exc:  # live progress must never take the loop down
            log.warning("live progress not written (kept for the next write): %s", exc)
            self._progress = {**progress, **self._progress}

    def _add_finished(self, run: FinishedRun, key: str, attempt: int) -> None:
        self._finished.append(run)
        self.events.publish(
            "run_finished", run_id=run.run_id, pipeline=run.pipeline, stage=run.stage, key=key,
            attempt=attempt, status=run.status, item_state=run.item_state, label=run.label,
            group=run.group_name, error=one_line(run.error), duration_s=run.duration_s,
        )  # fmt: skip
