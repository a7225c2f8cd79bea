"""The scheduler: claims ready items per stage within concurrency and runs them.

One loop, woken by events rather than polling: a finished run, an enqueue or a
hold change (the CLI sends SIGUSR1), a stop request, or the moment the next retry,
deferral or probe comes due (or a budget's day is over). Each pass, in one
transaction: write what finished, let the guard raise halts on it, lift budget halts
whose day is over, defer items of channels outside business hours, and claim what
fits in the free slots of stages that are not held (run rows are committed before
any worker starts). Live progress is written on a timer of its own, at most once a
second, since the loop may sleep for as long as an attempt runs. Notifications go
to the outbox; the notifier delivers them off the loop.

A pass the store cannot take (a full disk, a read-only or vanished store) leaves
nothing behind, in the store or in memory: what finished waits for the next try, no
claim of it starts a worker, and claiming stops until a write goes through again
(see faults.Outage).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import random
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import partial
from typing import Any

from pipewarden import faults
from pipewarden.classifier import Classifier
from pipewarden.clock import Clock
from pipewarden.config import Config, Pipeline, Stage
from pipewarden.events import EventBus
from pipewarden.guard import FAILED, Guard
from pipewarden.inputs import encode_json
from pipewarden.limits import DATA_MAX, INTERNAL_FAILURES_MAX
from pipewarden.notifier import Notifier
from pipewarden.outcomes import (
    INTERNAL,
    Decision,
    decide,
    internal_failure,
    interrupted,
    probe_failed,
    skipped,
)
from pipewarden.protocol import Progress, Verdict, WorkerReport, error_text
from pipewarden.reload import StageCode
from pipewarden.render import describe_hold
from pipewarden.store import Claimed, FinishedRun, Hold, NewRun, Store
from pipewarden.types import ItemState, RunStatus
from pipewarden.workers import Job, executor_for

log = logging.getLogger("pipewarden.scheduler")

IDLE_CHECK_S = 0.5  # with --until-idle, how often a quiet loop re-checks for due items
TIMEOUT_WINDOW_S = 600.0  # watchdog timeouts are counted over this window to notify
CLOSED_LABEL = "Outside business hours"
NOTIFY_AT_STOP_S = 5.0  # at shutdown, how long queued notifications may take to go out
PROGRESS_WRITE_S = 1.0  # live progress reaches the store at most this often


@dataclass
class _StageSlot:
    pipeline: Pipeline
    stage: Stage
    executor: object
    in_flight: int = 0
    replaces: _StageSlot | None = None  # a retired slot whose last attempts still run

    @property
    def busy(self) -> int:
        """Attempts of this stage under way, those of the slots it replaced included."""
        return self.in_flight + (self.replaces.busy if self.replaces else 0)

    @property
    def free(self) -> int:
        # The stage's concurrency holds across a swap: new workers start as old ones finish.
        return self.executor.capacity - self.busy


@dataclass(frozen=True)
class _Holds:
    """Which work the active holds keep back this pass."""

    channels: frozenset[str]
    stages: frozenset[str]  # "pipeline/stage"
    pipelines: frozenset[str]
    probes: tuple[Hold, ...]  # halts whose cool-down has passed: one item may go through
    probe_times: tuple[float, ...]  # when the others' next probes are due

    @classmethod
    def from_rows(cls, holds: list[Hold], now: float) -> _Holds:
        def targets(scope: str) -> frozenset[str]:
            return frozenset(h.target for h in holds if h.scope == scope)

        probes = tuple(
            h for h in holds
            if h.kind == "halt" and h.probe_at is not None and h.probe_at <= now
            and h.probe_run_id is None and h.scope in ("channel", "stage")
        )  # fmt: skip
        probe_times = tuple(h.probe_at for h in holds if h.probe_at is not None)
        return cls(targets("channel"), targets("stage"), targets("pipeline"), probes, probe_times)

    def blocks(self, slot: _StageSlot) -> bool:
        return slot.pipeline.name in self.pipelines or slot.stage.qualified_name in self.stages


class Scheduler:
    def __init__(
        self,
        config: Config,
        store: Store,
        classifier: Classifier,
        guard: Guard,
        notifier: Notifier,
        clock: Clock,
        code_ref: str | None,
        events: EventBus | None = None,
        rng: random.Random | None = None,
        code: dict[str, StageCode] | None = None,
    ):
        self.config = config
        self.events = events or EventBus()
        self.observers: list[Any] = []  # e.g. metrics: told of every batch of finished runs
        self.store = store
        self.classifier = classifier
        self.guard = guard
        self.notifier = notifier
        notifier.on_delivered = self.wake
        self.clock = clock
        self.code_ref = code_ref
        self.code = code or {}  # each stage's own source files, as of the last (re)load
        self.rng = rng or random.Random()
        self.claiming = True
        self._slots = [
            _StageSlot(pipeline, stage, executor_for(stage))
            for pipeline in config.pipelines.values()
            for stage in pipeline.stages
        ]
        self._retired: list[_StageSlot] = []  # replaced by a reload; stopped once idle
        self._tasks: set[asyncio.Task[None]] = set()
        self._finished: list[FinishedRun] = []
        self._progress: dict[str, tuple[float | None, str | None]] = {}
        self._progress_timer: asyncio.TimerHandle | None = None  # the next progress write
        self._progress_written = float("-inf")  # monotonic time of the last one
        self._probes: dict[str, int] = {}  # run id -> the hold it probes
        self._holds = _Holds(frozenset(), frozenset(), frozenset(), (), ())
        self._wake = asyncio.Event()
        self._interrupt_reason = "daemon stopping: interrupted"
        self.outage = faults.Outage(store.path)  # the daemon's own, which tells systemd

    # -- the loop ---------------------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    def halted_targets(self) -> list[str]:
        holds = self._holds
        return sorted(holds.channels | holds.stages | holds.pipelines)

    @property
    def in_flight(self) -> int:
        """Attempts under way (counted by the attempts themselves, not by task bookkeeping)."""
        return sum(slot.in_flight for slot in (*self._slots, *self._retired))

    async def run(self, stop: asyncio.Event, until_idle: bool = False) -> None:
        """Claim and run until `stop` is set (or, with until_idle, nothing is left to do).

        Whoever sets `stop` must also call `wake()`, so a sleeping loop notices.
        """
        while not stop.is_set():
            self._wake.clear()
            now = self.clock.now()
            if not self._in_one_commit(partial(self._pass, now)):  # kept; tried again soon
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.outage.retry_in)
                continue
            self.notifier.tick(now)
            await self._stop_retired()
            if until_idle and not self.in_flight and self._nothing_left():
                log.info("nothing left to do: stopping (--until-idle)")
                return
            await self._sleep(self._seconds_until_due(until_idle))

    async def drain(self, grace_s: float, reason: str) -> bool:
        """Stop claiming, give in-flight runs `grace_s` to finish, then interrupt the rest.

        True when every finished run is recorded; the runs of those that are not stay
        `running` in the store, and the next start requeues their items.
        """
        self.claiming = False
        if self.in_flight:
            log.info("waiting up to %gs for %d running attempt(s)", grace_s, self.in_flight)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_s)
        leftover = set(self._tasks)
        for task in leftover:
            task.cancel()
        if leftover:
            self._interrupt_reason = reason
            await asyncio.wait(leftover)
        with contextlib.suppress(faults.StoreFault):  # damaged: the daemon says so as it exits
            self._in_one_commit(self.flush)
        if self._progress_timer is not None:
            self._progress_timer.cancel()
        if self._finished:
            log.error(
                "%d finished run(s) not recorded: the next start requeues their items",
                len(self._finished),
            )
        else:
            await self.notifier.flush(self.clock.now(), timeout_s=NOTIFY_AT_STOP_S)
        await asyncio.gather(*(slot.executor.stop() for slot in (*self._slots, *self._retired)))
        return not self._finished

    def _pass(self, now: float) -> list[FinishedRun]:
        """Write what finished, raise and lift halts, claim what fits; returns what it wrote."""
        written = self.flush()  # first: a halt it raises must stop this very pass's claims
        holds = self._lift_budget_halts(self.store.active_holds(), now)
        self._holds = _Holds.from_rows(holds, now)
        if self.claiming and self.outage.fault is None:
            self._defer_closed_channels(now)
            self._dispatch(now)
            written += self.flush()  # skipped runs end in the pass that claimed them
        return written

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
            if fault := faults.check_files(self.store.path, self.store.file_id):
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

    async def _sleep(self, delay: float | None) -> None:
        """Until woken (a run ended, an enqueue, a stop) or until `delay` has passed."""
        timer = None if delay is None else asyncio.get_running_loop().call_later(delay, self.wake)
        await self._wake.wait()
        if timer is not None:
            timer.cancel()

    def _seconds_until_due(self, until_idle: bool) -> float | None:
        now = self.clock.now()
        candidates = []
        open_stages = [(s.pipeline.name, s.stage.name) for s in self._slots if s.free > 0]
        if open_stages and (due := self.store.next_ready_at(open_stages)) is not None:
            candidates.append(max(0.01, due - now))
        candidates += [max(0.01, t - now) for t in self._holds.probe_times]
        if (due := self.notifier.next_due()) is not None:
            candidates.append(max(0.05, due - now))
        if until_idle and not self.in_flight:
            candidates.append(IDLE_CHECK_S)
        return min(candidates) if candidates else None

    def _nothing_left(self) -> bool:
        holds = self._holds
        return (
            self.store.pending_count(holds.channels, holds.stages, holds.pipelines) == 0
            and not holds.probes
        )

    # -- claiming ---------------------------------------------------------------------
    def _defer_closed_channels(self, now: float) -> None:
        for channel, hours in self.config.channels.items():
            if not hours.is_open(now):
                deferred = self.store.defer_channel(
                    channel, hours.next_open(now), now, CLOSED_LABEL
                )
                if deferred:
                    log.info("%d item(s) of channel %s wait for business hours", deferred, channel)

    def _dispatch(self, now: float) -> None:
        holds = self._holds
        for hold in holds.probes:
            self._start_probe(hold, now)
        blocked = sorted(holds.channels)
        for slot in self._slots:
            if slot.free > 0 and not holds.blocks(slot):
                self._claim(slot, slot.free, now, blocked)

    def _claim(
        self,
        slot: _StageSlot,
        limit: int,
        now: float,
        blocked: list[str],
        only_channel: str | None = None,
    ) -> list[str]:
        stage = slot.stage

        def describe(item_id: int, key: str, data: dict) -> NewRun:
            return self._new_run(stage, item_id, key, data)

        claimed = self.store.claim(
            slot.pipeline.name, stage.name, limit, now, describe, blocked, only_channel
        )
        started = []
        for item, new_run in claimed:
            earlier = (
                None
                if item.force
                else self.store.earlier_success(
                    slot.pipeline.name, stage.name, new_run.input_fingerprint
                )
            )
            # A checkpoint: this very input already passed this stage.
            if earlier and self._record_skipped(slot, item, new_run, earlier, now):
                continue
            self.events.publish(
                "run_started", run_id=new_run.run_id, pipeline=slot.pipeline.name,
                stage=stage.name, key=item.key, attempt=item.attempt, channel=new_run.channel,
                started_at=now,
            )  # fmt: skip
            slot.in_flight += 1
            task = asyncio.create_task(self._attempt(slot, item, new_run))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            started.append(new_run.run_id)
        return started

    def _record_skipped(
        self,
        slot: _StageSlot,
        claimed: Claimed,
        new_run: NewRun,
        earlier: tuple[str, str],
        now: float,
    ) -> bool:
        """End the claimed run as skipped, its item given what the earlier run merged into
        it, so the next stage sees what it saw then. False (the stage runs) where that
        cannot be given back."""
        earlier_id, produced = earlier
        try:
            merged = json.loads(produced)
            if not isinstance(merged, dict):
                raise ValueError(f"it is {type(merged).__name__}, not an object")
            data = {**claimed.data, **merged}
            item_data = _item_data(data)
        except ValueError as exc:
            log.warning(
                "%s %s: run %s's data cannot be given back (%s): the stage runs again",
                slot.stage.qualified_name, claimed.key, earlier_id[:8], exc,
            )  # fmt: skip
            return False
        decision = skipped(slot.pipeline, slot.stage, claimed.attempt, now, earlier_id)
        report = WorkerReport(Verdict.OK)
        self._add_finished(
            self._finished_run(
                slot, claimed, new_run, report, decision, data, 0.0, item_data=item_data,
                data_out=produced,
            ),
            claimed.key,
            claimed.attempt,
        )  # fmt: skip
        _log_run(self.config.log_runs, slot.stage, claimed, new_run, decision)
        return True

    def _lift_budget_halts(self, holds: list[Hold], now: float) -> list[Hold]:
        """A budget's halt lifts itself when its day is over; returns the holds still on."""
        active = []
        for hold in holds:
            lifts_at = self.guard.budget_lifts_at(hold)
            if lifts_at is None or lifts_at > now:
                active.append(hold)
                continue
            self.store.clear_holds(hold.target, ("halt",), "a new budget day", now)
            log.info("a new budget day: the halt on pipeline %s is lifted", hold.target)
            self.notifier.halt_resolved(hold, "A new budget day began", now)
        return active

    def _start_probe(self, hold: Hold, now: float) -> None:
        """After a halt's cool-down, let exactly one item through to test the water."""
        for slot in self._slots:
            if slot.free <= 0:
                continue
            if hold.scope == "stage":
                if slot.stage.qualified_name != hold.target:
                    continue
                run_ids = self._claim(slot, 1, now, sorted(self._holds.channels))
            else:
                others = sorted(self._holds.channels - {hold.target})
                run_ids = self._claim(slot, 1, now, others, only_channel=hold.target)
            if run_ids:
                self._probes[run_ids[0]] = hold.id
                self.store.update_hold(hold.id, probe_run_id=run_ids[0])
                log.info("probing halted %s %s with one item", hold.scope, hold.target)
                return

    def _new_run(self, stage: Stage, item_id: int, key: str, data: dict) -> NewRun:
        config_hash = stage.config_hash
        # The input: the item (its key belongs to it), its data, the stage, the code.
        item = json.dumps([stage.pipeline, key, data], sort_keys=True, default=str)
        code = self.code.get(stage.qualified_name)
        blob = item + config_hash + (self.code_ref or "") + (code.digest if code else "")
        return NewRun(
            run_id=uuid.uuid4().hex,
            item_id=item_id,
            channel=stage.channel_for(data),
            input_fingerprint=hashlib.sha256(blob.encode()).hexdigest()[:32],
            config_hash=config_hash,
            code_ref=self.code_ref,
            trace_id=secrets.token_hex(16),
        )

    # -- one attempt ------------------------------------------------------------------
    async def _attempt(self, slot: _StageSlot, claimed: Claimed, new_run: NewRun) -> None:
        job = Job(new_run.run_id, claimed.key, claimed.attempt, claimed.data, new_run.trace_id)
        started = self.clock.monotonic()
        try:
            report = await slot.executor.run(job, lambda p: self._record_progress(job.run_id, p))
        except asyncio.CancelledError:
            self._record_interrupted(slot, claimed, new_run, started)
            raise
        except Exception as exc:  # the worker could not even start (missing command, ...)
            report = WorkerReport(Verdict.ERROR, error=f"cannot start worker: {exc}")
        finally:
            slot.in_flight -= 1
            self._wake.set()
        try:
            finished, decision = self._judge(slot, claimed, new_run, report, started)
        except Exception as exc:  # a bad value or a bug here must not lose or spin the item
            log.exception("recording run %s failed", job.run_id)
            finished, decision = self._internal_failure(
                slot, claimed, new_run, report, started, exc
            )
        self._add_finished(finished, claimed.key, claimed.attempt)
        _log_run(self.config.log_runs, slot.stage, claimed, new_run, decision)
        if new_run.run_id in self._probes:
            hold_id = self._probes.pop(new_run.run_id)
            self._finish_probe(hold_id, claimed, decision, self.clock.now())

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
            group=run.group_name, error=_one_line(run.error), duration_s=run.duration_s,
        )  # fmt: skip

    def _judge(
        self,
        slot: _StageSlot,
        claimed: Claimed,
        new_run: NewRun,
        report: WorkerReport,
        started: float,
    ) -> tuple[FinishedRun, Decision]:
        """Classify the attempt and decide the item's next step: everything that can fail."""
        stage = slot.stage
        now = self.clock.now()
        classification = None
        if report.verdict in (Verdict.ERROR, Verdict.IGNORE):
            classification = self.classifier.classify(
                error_text(report.error or report.ignore_reason) or "",
                pipeline=stage.pipeline,
                stage=stage.name,
                exception_types=report.exception_types,
            )
        decision = decide(
            slot.pipeline, stage, claimed.attempt, report, classification, now, self.rng
        )
        if new_run.run_id in self._probes:  # a failed probe spends no attempt: the item waits
            decision = probe_failed(decision, claimed.attempt, now)
        data = {**claimed.data, **report.data} if report.data else claimed.data
        duration = self.clock.monotonic() - started
        item_data = _item_data(data)
        # What an ok run merged into its item: a checkpoint gives it back when it skips.
        data_out = encode_json(report.data or {}) if decision.run_status is RunStatus.OK else None
        finished = self._finished_run(
            slot, claimed, new_run, report, decision, data, duration, item_data=item_data,
            data_out=data_out,
        )  # fmt: skip
        return _storable(finished), decision

    def _internal_failure(
        self,
        slot: _StageSlot,
        claimed: Claimed,
        new_run: NewRun,
        report: WorkerReport,
        started: float,
        exc: Exception,
    ) -> tuple[FinishedRun, Decision]:
        """The run fails with what went wrong; the item keeps the data it came with.

        Only what the daemon made itself is kept of the attempt (pid, exit, stderr, output):
        one of the worker's values may be what could not be recorded.
        """
        earlier = self.store.internal_failures_in_a_row(
            claimed.item_id, new_run.run_id, INTERNAL_FAILURES_MAX
        )
        reason = f"{type(exc).__name__}: {exc}"
        decision = internal_failure(slot.stage, claimed.attempt, self.clock.now(), reason, earlier)
        report = WorkerReport(
            Verdict.ERROR, error=decision.error, error_type=type(exc).__name__,
            traceback=report.traceback, exit_code=report.exit_code, signal=report.signal,
            pid=report.pid, output=report.output,
        )  # fmt: skip
        duration = self.clock.monotonic() - started
        finished = self._finished_run(
            slot, claimed, new_run, report, decision, claimed.data, duration, new_run.channel
        )
        return finished, decision

    def _finished_run(
        self,
        slot: _StageSlot,
        claimed: Claimed,
        new_run: NewRun,
        report: WorkerReport,
        decision: Decision,
        data: dict,
        duration_s: float,
        channel: str | None = None,  # the item's channel at its next stage, when known
        item_data: str | None = None,  # `data` as checked JSON, when it may have changed
        data_out: str | None = None,  # JSON: what an ok (or skipped) run merged into the item
    ) -> FinishedRun:
        c = decision.classification
        # `--force` holds until the item is through: every stage after this one is redone too.
        forced_on = decision.item_state not in (ItemState.DONE, ItemState.FAILED, ItemState.IGNORED)
        return FinishedRun(
            run_id=new_run.run_id,
            item_id=claimed.item_id,
            status=decision.run_status,
            pipeline=slot.pipeline.name,
            stage=slot.stage.name,
            channel=new_run.channel,
            finished_at=self.clock.now(),
            duration_s=duration_s,
            item_stage=decision.item_stage,
            item_state=decision.item_state,
            item_data=item_data or json.dumps(data, default=str),
            item_attempt=decision.item_attempt,
            item_ready_at=decision.ready_at,
            item_channel=channel or slot.pipeline.stage(decision.item_stage).channel_for(data),
            item_force=claimed.force and forced_on,
            exit_code=report.exit_code,
            signal=report.signal,
            pid=report.pid,
            pgid=report.pgid,
            proc_start=report.proc_start,
            error=decision.error,
            error_type=report.error_type,
            traceback=report.traceback,
            output="\n".join(report.output) or None,
            group_name=c.group.value if c else None,
            label=c.label if c else None,
            category=c.category if c else None,
            type=c.type if c else None,
            rule_id=c.rule_id if c else None,
            rules_version=self.classifier.version if c else None,
            rows_out=report.rows_out,
            cost=report.cost,
            progress=1.0 if decision.run_status is RunStatus.OK else None,
            data_out=data_out,
            probe_of=self._probes.get(new_run.run_id),
        )

    def _finish_probe(self, hold_id: int, claimed: Claimed, decision: Decision, now: float) -> None:
        """A probe that went through clears its halt. One that failed keeps it, doubles the
        cool-down, and its item waits in the queue without spending an attempt. One that
        tells nothing of the channel (ignored, deferred, an internal error) keeps the halt
        and its cool-down."""
        hold = self.store.Hold.get_by_id(hold_id)
        if hold.cleared_at is not None:
            return
        if decision.run_status is RunStatus.OK:
            self.store.clear_holds(hold.target, ("halt",), "probe (one item went through)", now)
            log.info("probe passed: halt on %s %s cleared", hold.scope, hold.target)
            self.notifier.halt_resolved(hold, "A probe item went through", now)
            return
        failed = decision.run_status in FAILED and decision.classification is not INTERNAL
        cooldown = (hold.cooldown_s or 60.0) * (2 if failed else 1)
        self.store.update_hold(
            hold.id, probe_at=now + cooldown, cooldown_s=cooldown, probe_run_id=None
        )
        if failed:
            log.warning(
                "probe failed: %s %s stays halted; its item %s is back in the queue"
                " (attempt %d not spent); next probe in %gs",
                hold.scope, hold.target, claimed.key, claimed.attempt, cooldown,
            )  # fmt: skip
        else:
            log.info(
                "probe told nothing (%s): %s %s stays halted; next probe in %gs",
                decision.run_status, hold.scope, hold.target, cooldown,
            )  # fmt: skip

    def _record_interrupted(
        self,
        slot: _StageSlot,
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

    # -- notifications ----------------------------------------------------------------
    def _notify_halt(self, hold: Hold, now: float) -> None:
        self.events.publish("halt", target=hold.target, scope=hold.scope, reason=hold.reason)
        event = "budget" if hold.scope == "pipeline" else "halt"
        samples = json.loads(hold.samples or "[]")
        body = [
            f"{describe_hold(hold)} (rule {hold.rule}).",
            "Its items stay queued; nothing is failed or lost.",
            f"Clear it with: pipewarden halts clear {hold.target}",
        ]
        if samples:
            body += ["", "Recent errors:", *(f"  {_one_line(s)}" for s in samples)]
        self.notifier.notify(
            event, f"halt:{hold.id}", f"pipewarden: {hold.target} halted", "\n".join(body), now
        )

    def _notify_run(self, run: FinishedRun, now: float) -> None:
        if run.item_state is ItemState.FAILED:
            self.notifier.failure(
                run.run_id, f"{run.pipeline}/{run.stage} failed: {run.label or 'Unknown'}",
                _one_line(run.error), now,
            )  # fmt: skip
        if run.status is RunStatus.TIMED_OUT:
            recent = self.store.count_runs(
                run.pipeline, run.stage, RunStatus.TIMED_OUT, now - TIMEOUT_WINDOW_S
            )
            if recent >= self.config.notify.timeouts_per_10m:
                self.notifier.notify(
                    "timeout", f"timeouts:{run.pipeline}/{run.stage}",
                    f"pipewarden: {run.pipeline}/{run.stage} keeps timing out",
                    f"{recent} watchdog timeouts in 10 minutes. Last: {_one_line(run.error)}",
                    now,
                )  # fmt: skip

    # -- live configuration -----------------------------------------------------------
    def apply(
        self,
        config: Config,
        classifier: Classifier,
        guard: Guard,
        code: dict[str, StageCode] | None = None,
    ) -> list[str]:
        """Swap in reloaded settings (and the stages' code); returns what changed, for the
        log and `status`."""
        changes: list[str] = []
        if classifier.version != self.classifier.version:
            changes.append(f"rules {self.classifier.version} -> {classifier.version}")
        code = self.code if code is None else code
        current = {slot.stage.qualified_name: slot for slot in self._slots}
        slots = []
        for pipeline in config.pipelines.values():
            for stage in pipeline.stages:
                slot = current.pop(stage.qualified_name, None)
                edited = self._edited(stage, code, config) if slot is not None else []
                if slot is not None and edited and stage.mode == "pool":
                    self._retired.append(slot)
                    slots.append(_StageSlot(pipeline, stage, executor_for(stage), replaces=slot))
                    changes.append(
                        f"stage {stage.qualified_name} replaced: {', '.join(edited)} changed —"
                        " its pool workers finish their current item, then new ones run it"
                    )
                    continue
                if edited:  # a fresh process per attempt: the next one runs the new code
                    changes.append(
                        f"stage {stage.qualified_name}: {', '.join(edited)} changed — its next"
                        " attempt runs it"
                    )
                if slot is not None and slot.stage == stage:
                    slot.pipeline = pipeline
                    slots.append(slot)
                    continue
                if slot is not None and _only_limits_changed(slot.stage, stage):
                    slot.pipeline, slot.stage = pipeline, stage
                    slot.executor.reconfigure(stage)  # takes effect from the next item
                    slots.append(slot)
                    changes.append(f"stage {stage.qualified_name} updated")
                    continue
                if slot is not None:
                    self._retired.append(slot)
                changes.append(f"stage {stage.qualified_name} {'replaced' if slot else 'added'}")
                slots.append(_StageSlot(pipeline, stage, executor_for(stage), replaces=slot))
        for name, slot in current.items():
            self._retired.append(slot)
            changes.append(f"stage {name} removed (its items wait)")
        self._slots = slots
        self.config, self.classifier, self.guard, self.code = config, classifier, guard, code
        self.notifier.settings = config.notify
        self.wake()
        return changes

    def _edited(self, stage: Stage, code: dict[str, StageCode], config: Config) -> list[str]:
        """The stage's source files that changed since the code in force was loaded."""
        new = code.get(stage.qualified_name)
        old = self.code.get(stage.qualified_name)
        root = config.path.parent.resolve()
        if new is None:
            return old.edited(None, root) if old else []
        return new.edited(old, root)

    async def _stop_retired(self) -> None:
        idle = [slot for slot in self._retired if slot.in_flight == 0]
        if idle:
            self._retired = [slot for slot in self._retired if slot.in_flight > 0]
            for slot in (*self._slots, *self._retired):
                if any(slot.replaces is gone for gone in idle):
                    slot.replaces = None
            await asyncio.gather(*(slot.executor.stop() for slot in idle))


def _only_limits_changed(old: Stage, new: Stage) -> bool:
    """True when a pool can keep its processes: only limits and policies differ."""
    same_worker = ("command", "python", "mode", "cwd", "env")
    return all(getattr(old, f) == getattr(new, f) for f in same_worker) and (
        old.concurrency == new.concurrency or old.mode == "process"
    )


def _storable(run: FinishedRun) -> FinishedRun:
    """`run` if SQLite keeps every field as given; ValueError naming the first it would not.

    Checked before the run joins the batch: a value SQLite refuses would fail the whole
    commit, and a NaN it silently stores as NULL (an item never due again).
    """
    for spec in fields(run):
        value = getattr(run, spec.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"'{spec.name}' is {value}, which the store cannot keep")
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            raise ValueError(f"'{spec.name}' is beyond a 64-bit integer")
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"'{spec.name}' is not valid UTF-8 text") from None
    return run


def _item_data(data: dict[str, Any]) -> str:
    """The item's data as stored: strict JSON within DATA_MAX, or ValueError with the reason."""
    try:
        text = encode_json(data)
    except ValueError as exc:
        raise ValueError(f"the item's data {exc}") from None
    if (size := len(text.encode("utf-8"))) > DATA_MAX:
        raise ValueError(
            f"the item's data would be {size:,} bytes of JSON; at most {DATA_MAX:,} are kept"
        )
    return text


def _log_run(
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
        head, decision.run_status, c.group, c.label, rule, _one_line(decision.error), decision.note,
    )  # fmt: skip


# Not logged with `log_runs: failures`: the runs that did what they should, or chose to wait.
_QUIET_STATUSES = (RunStatus.OK, RunStatus.SKIPPED, RunStatus.DEFERRED)


def _one_line(text: str | None, limit: int = 160) -> str:
    line = text.strip().splitlines()[0] if text and text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"
