"""Judging an attempt, a part of the scheduler: classify its failure, decide the item's next
step (outcomes.decide: retry with backoff, defer, fail, ignore) and build the run's record,
checked so that a value the store cannot keep fails the run, never the commit.
"""

from __future__ import annotations

import logging
import math
from dataclasses import fields
from typing import Any

from pipewarden.inputs import encode_json
from pipewarden.limits import DATA_MAX, INTERNAL_FAILURES_MAX
from pipewarden.outcomes import (
    Decision,
    decide,
    internal_failure,
    probe_failed,
)
from pipewarden.protocol import Verdict, WorkerReport, error_text
from pipewarden.slots import StageSlot
from pipewarden.store import Claimed, FinishedRun, NewRun
from pipewarden.types import ItemState, RunStatus

log = logging.getLogger("pipewarden.scheduler")


class Judging:
    """The scheduler's verdicts (see scheduler.Scheduler for the state it shares)."""

    def _judge(
        self,
        slot: StageSlot,
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
        # Nothing returned: the item's data is not encoded again, nor written (None keeps it).
        item_data = checked_item_data(data) if report.data else None
        # What an ok run merged into its item: a checkpoint gives it back when it skips.
        merged = encode_json(report.data) if report.data else "{}"
        data_out = merged if decision.run_status is RunStatus.OK else None
        finished = self._finished_run(
            slot, claimed, new_run, report, decision, data, duration, item_data=item_data,
            data_out=data_out,
        )  # fmt: skip
        return _storable(finished), decision

    def _internal_failure(
        self,
        slot: StageSlot,
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
        slot: StageSlot,
        claimed: Claimed,
        new_run: NewRun,
        report: WorkerReport,
        decision: Decision,
        data: dict,
        duration_s: float,
        channel: str | None = None,  # the item's channel at its next stage, when known
        item_data: str | None = None,  # `data` as checked JSON if it changed; None keeps it
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
            item_data=item_data,
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


def _storable(run: FinishedRun) -> FinishedRun:
    """`run` if SQLite keeps every field as given; ValueError naming the first it would not.

    Checked before the run joins the batch: a value SQLite refuses would fail the whole
    commit, and a NaN it silently stores as NULL (an item never due again). Per run, so by
    exact type (enums and bools are always storable) and ASCII text is never encoded.
    """
    for name in _RUN_FIELDS:
        value = getattr(run, name)
        kind = type(value)
        if kind is float:
            if not math.isfinite(value):
                raise ValueError(f"'{name}' is {value}, which the store cannot keep")
        elif kind is int:
            if not -(2**63) <= value < 2**63:
                raise ValueError(f"'{name}' is beyond a 64-bit integer")
        elif kind is str and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"'{name}' is not valid UTF-8 text") from None
    return run


_RUN_FIELDS = tuple(spec.name for spec in fields(FinishedRun))


def checked_item_data(data: dict[str, Any]) -> str:
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
