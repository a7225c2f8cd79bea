"""The scheduler: claims ready items per stage within concurrency and runs them.

One loop, woken by events rather than polling: a finished run, an enqueue (the CLI
sends SIGUSR1), a stop request, or the moment the next retry or deferral comes due.
Each pass writes what finished since the last pass in one transaction, then claims
what fits in the free slots (run rows are committed before any worker starts).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import secrets
import uuid
from dataclasses import dataclass

from pipewarden.classifier import Classifier
from pipewarden.clock import Clock
from pipewarden.config import Config, Pipeline, Stage
from pipewarden.outcomes import Decision, decide
from pipewarden.protocol import Progress, Verdict, WorkerReport
from pipewarden.store import Claimed, FinishedRun, NewRun, Store
from pipewarden.types import ItemState, RunStatus
from pipewarden.workers import Job, executor_for

log = logging.getLogger("pipewarden.scheduler")

IDLE_CHECK_S = 0.5  # with --until-idle, how often a quiet loop re-checks for due items


@dataclass
class _StageSlot:
    pipeline: Pipeline
    stage: Stage
    executor: object
    in_flight: int = 0

    @property
    def free(self) -> int:
        return self.stage.concurrency - self.in_flight


class Scheduler:
    def __init__(
        self,
        config: Config,
        store: Store,
        classifier: Classifier,
        clock: Clock,
        code_ref: str | None,
        rng: random.Random | None = None,
    ):
        self.store = store
        self.classifier = classifier
        self.clock = clock
        self.code_ref = code_ref
        self.rng = rng or random.Random()
        self.claiming = True
        self._slots = [
            _StageSlot(pipeline, stage, executor_for(stage))
            for pipeline in config.pipelines.values()
            for stage in pipeline.stages
        ]
        self._tasks: set[asyncio.Task[None]] = set()
        self._finished: list[FinishedRun] = []
        self._progress: dict[str, tuple[float | None, str | None]] = {}
        self._wake = asyncio.Event()

    # -- the loop ---------------------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    @property
    def in_flight(self) -> int:
        """Attempts under way (counted by the attempts themselves, not by task bookkeeping)."""
        return sum(slot.in_flight for slot in self._slots)

    async def run(self, stop: asyncio.Event, until_idle: bool = False) -> None:
        """Claim and run until `stop` is set (or, with until_idle, nothing is left to do).

        Whoever sets `stop` must also call `wake()`, so a sleeping loop notices.
        """
        while not stop.is_set():
            self._wake.clear()
            with self.store.transaction():  # what finished and what starts: one commit
                self.flush()
                if self.claiming:
                    self._dispatch()
            if until_idle and not self.in_flight and self.store.pending_count() == 0:
                log.info("nothing left to do: stopping (--until-idle)")
                return
            delay = self._seconds_until_due()
            if until_idle and not self.in_flight:
                delay = IDLE_CHECK_S if delay is None else min(delay, IDLE_CHECK_S)
            await self._sleep(delay)

    async def drain(self, grace_s: float, reason: str) -> None:
        """Stop claiming, give in-flight runs `grace_s` to finish, then interrupt the rest."""
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
        self.flush()
        await asyncio.gather(
            *(slot.executor.stop() for slot in self._slots if hasattr(slot.executor, "stop"))
        )

    def flush(self) -> None:
        if self._finished or self._progress:
            finished, self._finished = self._finished, []
            progress, self._progress = self._progress, {}
            self.store.finish(finished, progress)

    async def _sleep(self, delay: float | None) -> None:
        """Until woken (a run ended, an enqueue, a stop) or until `delay` has passed."""
        timer = None if delay is None else asyncio.get_running_loop().call_later(delay, self.wake)
        await self._wake.wait()
        if timer is not None:
            timer.cancel()

    def _seconds_until_due(self) -> float | None:
        open_stages = [(s.pipeline.name, s.stage.name) for s in self._slots if s.free > 0]
        if not open_stages:
            return None
        due = self.store.next_ready_at(open_stages)
        if due is None:
            return None
        return max(0.01, due - self.clock.now())

    # -- claiming ---------------------------------------------------------------------
    def _dispatch(self) -> None:
        now = self.clock.now()
        for slot in self._slots:
            if slot.free <= 0:
                continue
            stage = slot.stage

            def describe(item_id: int, key: str, data: dict, stage: Stage = stage) -> NewRun:
                return self._new_run(stage, item_id, data)

            for claimed, new_run in self.store.claim(
                slot.pipeline.name, stage.name, slot.free, now, describe
            ):
                slot.in_flight += 1
                task = asyncio.create_task(self._attempt(slot, claimed, new_run))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _new_run(self, stage: Stage, item_id: int, data: dict) -> NewRun:
        config_hash = stage.config_hash
        blob = json.dumps(data, sort_keys=True, default=str) + config_hash + (self.code_ref or "")
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
    _interrupt_reason = "daemon stopping: interrupted"

    async def _attempt(self, slot: _StageSlot, claimed: Claimed, new_run: NewRun) -> None:
        job = Job(new_run.run_id, claimed.key, claimed.attempt, claimed.data, new_run.trace_id)
        started = self.clock.monotonic()
        try:
            report = await slot.executor.run(job, lambda p: self._record_progress(job.run_id, p))
        except asyncio.CancelledError:
            self._record_interrupted(slot, claimed, job, started)
            raise
        except Exception as exc:  # the worker could not even start (missing command, ...)
            report = WorkerReport(Verdict.ERROR, error=f"cannot start worker: {exc}")
        finally:
            slot.in_flight -= 1
            self._wake.set()
        try:
            self._record(slot, claimed, job, report, started)
        except Exception:  # a bug here must not lose the item or stop the loop
            log.exception("recording run %s failed; the item is requeued", job.run_id)
            self._record_interrupted(slot, claimed, job, started, "internal error while recording")

    def _record_progress(self, run_id: str, progress: Progress) -> None:
        self._progress[run_id] = (progress.fraction, progress.message)

    def _record(
        self, slot: _StageSlot, claimed: Claimed, job: Job, report: WorkerReport, started: float
    ) -> None:
        stage = slot.stage
        now = self.clock.now()
        classification = None
        if report.verdict in (Verdict.ERROR, Verdict.IGNORE):
            text = report.error or report.ignore_reason or ""
            classification = self.classifier.classify(
                text,
                pipeline=stage.pipeline,
                stage=stage.name,
                exception_types=report.exception_types,
            )
        decision = decide(
            slot.pipeline, stage, claimed.attempt, report, classification, now, self.rng
        )
        data = claimed.data
        if report.data:
            data = {**data, **report.data}
        self._finished.append(
            _finished_run(job, claimed, report, decision, data, now, started, self)
        )
        _log_run(stage, job, report, decision)

    def _record_interrupted(
        self,
        slot: _StageSlot,
        claimed: Claimed,
        job: Job,
        started: float,
        reason: str | None = None,
    ) -> None:
        held = slot.stage.on_interrupt == "hold"
        now = self.clock.now()
        error = reason or self._interrupt_reason
        self._finished.append(
            FinishedRun(
                run_id=job.run_id,
                item_id=claimed.item_id,
                status=RunStatus.INTERRUPTED,
                finished_at=now,
                duration_s=self.clock.monotonic() - started,
                item_stage=slot.stage.name,
                item_state=ItemState.HELD if held else ItemState.QUEUED,
                item_data=json.dumps(claimed.data),
                item_attempt=claimed.attempt - 1,  # an interruption does not spend a retry
                item_ready_at=now,
                error=error,
                group_name="retriable",
                label="Interrupted",
                category="daemon",
                type="interrupted",
            )
        )
        log.warning(
            "%s %s#%d interrupted: %s -> %s",
            slot.stage.qualified_name, job.key, job.attempt, error, "held" if held else "requeued",
        )  # fmt: skip


def _finished_run(
    job: Job,
    claimed: Claimed,
    report: WorkerReport,
    decision: Decision,
    data: dict,
    now: float,
    started: float,
    scheduler: Scheduler,
) -> FinishedRun:
    c = decision.classification
    return FinishedRun(
        run_id=job.run_id,
        item_id=claimed.item_id,
        status=decision.run_status,
        finished_at=now,
        duration_s=scheduler.clock.monotonic() - started,
        item_stage=decision.item_stage,
        item_state=decision.item_state,
        item_data=json.dumps(data, default=str),
        item_attempt=decision.item_attempt,
        item_ready_at=decision.ready_at,
        exit_code=report.exit_code,
        signal=report.signal,
        pid=report.pid,
        error=decision.error,
        error_type=report.error_type,
        traceback=report.traceback,
        output="\n".join(report.output) or None,
        group_name=c.group.value if c else None,
        label=c.label if c else None,
        category=c.category if c else None,
        type=c.type if c else None,
        rule_id=c.rule_id if c else None,
        rules_version=scheduler.classifier.version if c else None,
        rows_out=report.rows_out,
        cost=report.cost,
        progress=1.0 if decision.run_status is RunStatus.OK else None,
        message=None,
    )


def _log_run(stage: Stage, job: Job, report: WorkerReport, decision: Decision) -> None:
    c = decision.classification
    head = f"{stage.qualified_name} {job.key}#{job.attempt} run={job.run_id[:8]}"
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


def _one_line(text: str | None, limit: int = 160) -> str:
    line = (text or "").strip().splitlines()[0] if text and text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"
