"""Recording, a part of the scheduler: what finished, its progress and the pass's claims
reach the store in one commit, on the writer's thread (see writer.py), while the loop goes
on; the guard and the notifier see each batch (flush), the loop applies what the pass did
once it is committed (the workers start, the events go out, the observers are told). A
commit the store cannot take leaves nothing behind: what the pass took from the loop goes
back, and nothing it claimed starts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipewarden import faults
from pipewarden.attempts import one_line
from pipewarden.guard import FAILED, Guard
from pipewarden.outcomes import Decision
from pipewarden.slots import Holds, StageSlot
from pipewarden.store import Claimed, FinishedRun, NewRun

log = logging.getLogger("pipewarden.scheduler")

Handed = tuple[StageSlot, Claimed, NewRun]  # a claim and the slot it is for


@dataclass
class Batch:
    """One pass: what it takes from the loop, and what it did, for the loop to apply once
    it is committed (or to take back when it is not)."""

    now: float
    guard: Guard
    finished: list[FinishedRun]
    progress: dict[str, tuple[float | None, str | None]]
    probe_ends: list[tuple[int, Claimed, Decision, float]]
    put_back: list[Handed]  # claims never sent to a worker, to give back
    claiming: bool = True
    # What the pass did (cleared before each try):
    claimed: list[Handed] = field(default_factory=list)
    taken_back: list[Handed] = field(default_factory=list)  # from the slots' items ahead
    skipped: list[FinishedRun] = field(default_factory=list)
    written: list[FinishedRun] = field(default_factory=list)
    probes: dict[str, int] = field(default_factory=dict)
    holds: Holds | None = None
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # What a try that failed claimed or gave back: given back (again) by the next try
    in_doubt: list[Handed] = field(default_factory=list)

    def cleared(self) -> Batch:
        self.claimed, self.taken_back, self.skipped, self.written = [], [], [], []
        self.probes, self.holds, self.events = {}, None, []
        return self

    def claimed_for(self, slot: StageSlot) -> int:
        return sum(1 for handed in self.claimed if handed[0] is slot)


class Recording:
    """The scheduler's writes (see scheduler.Scheduler for the state it shares)."""

    async def _in_one_commit(self, write: Callable[[Batch], None], now: float) -> bool:
        """`write(batch)` in one transaction on the writer's thread, then applied here;
        False when the store cannot take it (the outage says so). A damaged store is raised."""
        batch = self._take_batch(now)
        try:
            fault = await self.writer.run(lambda: self._commit(write, batch))
            if fault is not None and fault.kind == faults.FULL and await self._make_room():
                fault = await self.writer.run(lambda: self._commit(write, batch))  # once more
        except Exception:  # a bug: nothing the pass took is lost
            self._give_back(batch)
            raise
        if fault is not None:
            self._give_back(batch)
            if not fault.passing:
                raise fault
            self.outage.failed(fault)
            return False
        self.outage.over()
        self._apply(batch)
        return True

    async def _make_room(self) -> bool:
        """On the writer's connection: the one whose WAL holds the space, and whose settings
        keep it small from now on."""
        return await self.writer.run(lambda: faults.make_room(self.store))

    def _take_batch(self, now: float) -> Batch:
        """What the pass writes, taken from the loop (given back if its commit fails)."""
        if self._group_commit is not None:
            self._group_commit.cancel()
            self._group_commit = None
        batch = Batch(
            now, self.guard, self._finished, self._progress, self._probe_ends, self._put_back,
            self.claiming,
        )  # fmt: skip
        self._finished, self._progress, self._probe_ends, self._put_back = [], {}, [], []
        return batch

    def _commit(self, write: Callable[[Batch], None], batch: Batch) -> faults.StoreFault | None:
        """On the writer's thread: `write(batch)` committed, or the fault that stopped it
        (a damaged store's too, for the loop to raise), the batch's results cleared."""
        try:
            if fault := self.store.unwritable():
                raise fault  # a write now would vanish, or kill the daemon (SIGBUS)
            with self.store.transaction():
                write(batch.cleared())
        except Exception as exc:
            if (fault := faults.fault_of(exc, self.store.path)) is None:
                raise
            if fault.may_have_landed:
                # What it claimed or gave back is given back by the next try: undone if it
                # landed, unchanged if not. Dropped, a claim that landed would stay running
                # with no worker; handed out again, an item given back would run twice.
                batch.in_doubt += [*batch.claimed, *batch.taken_back]
            else:  # rolled back: what it took back is still claimed, ahead of its slot again
                self._return_ahead(batch.taken_back)
            batch.cleared()
            return fault
        return None

    def _give_back(self, batch: Batch) -> None:
        """A pass the store did not take: what it took from the loop goes back, ahead of
        what came meanwhile."""
        self._finished = batch.finished + self._finished
        self._progress = {**batch.progress, **self._progress}
        self._probe_ends = batch.probe_ends + self._probe_ends
        self._put_back = batch.put_back + batch.in_doubt + self._put_back
        if self.guard is batch.guard:  # it counted the batch's costs into its day's spending
            self.guard = Guard(self.store, batch.guard.rules, batch.guard.stages)

    def _apply(self, batch: Batch) -> None:
        """On the loop, once the pass is committed: its holds and probes in force, its
        claims handed to the slots (the run rows are durable now), its events out."""
        if batch.holds is not None:
            self._holds = batch.holds
        self._probes.update(batch.probes)
        self._may_halt -= sum(1 for run in batch.finished if _may_halt(run))
        if batch.progress:
            self._progress_written = self.clock.monotonic()
        for run in batch.finished:
            if (finished := self._finish_events.pop(run.run_id, None)) is not None:
                self.events.publish("run_finished", **finished)
        for name, data in batch.events:
            self.events.publish(name, **data)
        current = set(self._slots)
        with self._handing:
            for slot, claimed, new_run in batch.claimed:
                if slot in current:
                    slot.ahead.append((claimed, new_run))
                else:  # replaced by a reload while the pass was written
                    self._put_back.append((slot, claimed, new_run))
        for slot in self._slots:
            self._start_ahead(slot)
        if self._put_back:
            self.wake()
        if batch.written:
            for observer in self.observers:
                observer.runs_finished(batch.written)

    def flush(
        self, batch: Batch, runs: list[FinishedRun], progress: dict[str, Any] | None = None
    ) -> None:
        """Write finished runs (and live progress); let the guard and the notifier see them.
        The runs join `batch.written`, for the observers once the pass is committed."""
        if not (runs or progress):
            return
        self.store.finish(runs, progress or {})
        batch.written += runs
        if not runs:
            return
        now = batch.now
        if any(_may_halt(run) for run in runs):
            for hold in batch.guard.check(runs, now, self.store.active_holds()):
                self._notify_halt(hold, now, batch.events)
        for run in runs:
            self._notify_run(run, now)

    def _end_probes(self, batch: Batch) -> None:
        for hold_id, claimed, decision, ended in batch.probe_ends:
            self._finish_probe(hold_id, claimed, decision, ended)

    def _write_progress(self) -> None:
        """The progress timer: a pass writes what is waiting (none writes it here, on the
        loop: the writer's thread owns the writes)."""
        self._progress_timer = None
        if self.outage.fault is None:  # else kept for the pass that commits next
            self.wake()

    def _add_finished(self, run: FinishedRun, key: str, attempt: int) -> None:
        self._finished.append(run)
        if _may_halt(run):
            self._may_halt += 1
        if self.events.listening:  # else nobody is told: its event is not made
            self._finish_events[run.run_id] = finished_event(run, key, attempt)


def finished_event(run: FinishedRun, key: str, attempt: int) -> dict[str, Any]:
    return dict(
        run_id=run.run_id, pipeline=run.pipeline, stage=run.stage, key=key, attempt=attempt,
        status=run.status, item_state=run.item_state, label=run.label, group=run.group_name,
        error=one_line(run.error), duration_s=run.duration_s,
    )  # fmt: skip


def _may_halt(run: FinishedRun) -> bool:
    """What the guard looks at: a failure, or a cost."""
    return run.status in FAILED or bool(run.cost)
