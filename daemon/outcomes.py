"""What happens to an item after a run: DESIGN.md's item life as one pure function.

No I/O and no clock of its own, so the whole retry policy (backoff, jitter,
retry_after, rule overrides, exhaustion) is tested with plain values and freezegun.
A worker's `retry_after` wins; then the wait the error text asks for, where its rule
says `retry_after: from_text` (retry_after.py); then the backoff.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from pipewarden.classifier import Classification
from pipewarden.config import Pipeline, RetryPolicy, Stage
from pipewarden.limits import INTERNAL_FAILURES_MAX
from pipewarden.protocol import Verdict, WorkerReport, error_text
from pipewarden.retry_after import asked_delay
from pipewarden.types import Group, ItemState, RunStatus

NO_ERROR_TEXT = "the worker reported a failure without an error text"


@dataclass(frozen=True)
class Decision:
    run_status: RunStatus
    item_state: ItemState
    item_stage: str
    item_attempt: int  # attempts counted at item_stage after this run
    ready_at: float | None  # when the item may be claimed again
    error: str | None
    classification: Classification | None
    note: str  # for the log: "retry in 4.2s (attempt 2 of 3)", "-> capture", ...


def backoff_delay(policy: RetryPolicy, attempt: int, rng: random.Random) -> float:
    """Delay after failed attempt `attempt` (1-based): exponential, capped, plus jitter."""
    base = min(policy.max_backoff_s, policy.backoff_s * policy.factor ** (attempt - 1))
    return base * (1.0 + policy.jitter * rng.random())


def backoff_schedule(policy: RetryPolicy) -> list[float]:
    """The delays before attempts 2..max_attempts, without jitter (for `why` and docs)."""
    return [
        min(policy.max_backoff_s, policy.backoff_s * policy.factor ** (n - 1))
        for n in range(1, policy.max_attempts)
    ]


def decide(
    pipeline: Pipeline,
    stage: Stage,
    attempt: int,
    report: WorkerReport,
    classification: Classification | None,
    now: float,
    rng: random.Random,
) -> Decision:
    if report.verdict is Verdict.OK:
        return _advance(pipeline, stage, attempt, now)
    if report.verdict is Verdict.IGNORE:
        reason = error_text(report.ignore_reason) or "ignored"
        return _ignored(stage, attempt, reason, classification)
    if report.verdict is Verdict.DEFER:
        until = (
            report.defer_until if report.defer_until is not None else now + (report.defer_s or 0)
        )
        return _deferred(stage, attempt, until, "deferred by the worker", classification)
    return _failed(stage, attempt, report, classification, now, rng)


INTERRUPTED = Classification(Group.RETRIABLE, "Interrupted", "daemon", "interrupted", None)


def interrupted(stage: Stage, attempt: int, now: float, reason: str) -> Decision:
    """The daemon stopped mid-run: requeue without spending a retry, or hold for a person
    where the stage's side effects must never repeat (`on_interrupt: hold`)."""
    held = stage.on_interrupt == "hold"
    return Decision(
        RunStatus.INTERRUPTED, ItemState.HELD if held else ItemState.QUEUED, stage.name,
        attempt - 1, now, reason, INTERRUPTED, "held" if held else "requeued",
    )  # fmt: skip


INTERNAL = Classification(Group.RETRIABLE, "Internal error", "daemon", "internal", None)


def internal_failure(
    stage: Stage, attempt: int, now: float, reason: str, earlier_in_a_row: int
) -> Decision:
    """Recording the run went wrong (a value the daemon cannot take, or a bug): the run
    fails with the reason. The item runs again without spending an attempt, up to
    INTERNAL_FAILURES_MAX such runs in a row, then fails; where the stage's side effects
    must never repeat (`on_interrupt: hold`), a person decides instead."""
    error = error_text(f"internal error while recording the run: {reason}")
    count = earlier_in_a_row + 1
    if count >= INTERNAL_FAILURES_MAX:
        note = f"failed: {count} internal errors in a row"
        return Decision(
            RunStatus.FAILED, ItemState.FAILED, stage.name, attempt, None, error, INTERNAL, note
        )
    if stage.on_interrupt == "hold":
        return Decision(
            RunStatus.FAILED, ItemState.HELD, stage.name, attempt - 1, now, error, INTERNAL, "held"
        )
    note = f"runs again ({count} of {INTERNAL_FAILURES_MAX} internal errors in a row)"
    return Decision(
        RunStatus.FAILED, ItemState.RETRYING, stage.name, attempt - 1, now, error, INTERNAL, note
    )


def skipped(pipeline: Pipeline, stage: Stage, attempt: int, now: float, earlier: str) -> Decision:
    """This input already succeeded at this stage (run `earlier`): move on without running."""
    moved = _advance(pipeline, stage, attempt, now, RunStatus.SKIPPED)
    return Decision(
        moved.run_status, moved.item_state, moved.item_stage, moved.item_attempt, moved.ready_at,
        None, None, f"skipped (run {earlier[:8]} already did it) {moved.note}",
    )  # fmt: skip


def probe_failed(decision: Decision, attempt: int, now: float) -> Decision:
    """A halt's probe that failed: its item waits in the queue behind the halt without
    spending the attempt, whatever the failure would otherwise have done to it."""
    if decision.run_status not in (RunStatus.FAILED, RunStatus.TIMED_OUT) or (
        decision.item_state not in (ItemState.FAILED, ItemState.RETRYING)
    ):
        return decision
    note = "back in the queue: the halt's probe failed (no attempt spent; the halt stays)"
    return Decision(
        decision.run_status, ItemState.QUEUED, decision.item_stage, attempt - 1, now,
        decision.error, decision.classification, note,
    )  # fmt: skip


def _advance(
    pipeline: Pipeline, stage: Stage, attempt: int, now: float, status: RunStatus = RunStatus.OK
) -> Decision:
    following = pipeline.next_stage(stage.name)
    if following is None:
        return Decision(status, ItemState.DONE, stage.name, attempt, None, None, None, "done")
    return Decision(
        status, ItemState.QUEUED, following.name, 0, now, None, None, f"-> {following.name}"
    )


def _ignored(stage: Stage, attempt: int, reason: str, c: Classification | None) -> Decision:
    if c is None or c.group is not Group.IGNORE:
        c = Classification(Group.IGNORE, reason[:80], "filter", "ignored", None)
    return Decision(
        RunStatus.IGNORED, ItemState.IGNORED, stage.name, attempt, None, reason, c, "ignored"
    )


def _deferred(
    stage: Stage, attempt: int, until: float, error: str | None, c: Classification | None
) -> Decision:
    # Waiting is not failing: the attempt is not counted against the item.
    return Decision(
        RunStatus.DEFERRED, ItemState.DEFERRED, stage.name, attempt - 1, until, error, c, "deferred"
    )


def _failed(
    stage: Stage,
    attempt: int,
    report: WorkerReport,
    c: Classification | None,
    now: float,
    rng: random.Random,
) -> Decision:
    error = error_text(report.error) or NO_ERROR_TEXT
    run_status = RunStatus.TIMED_OUT if report.timed_out else RunStatus.FAILED
    assert c is not None, "a failed run is always classified"
    if c.group is Group.IGNORE:
        return _ignored(stage, attempt, error, c)
    if c.group is Group.DEFER:
        return _deferred(stage, attempt, now + (c.defer_s or stage.defer_s), error, c)
    if c.group is Group.TERMINAL:
        return Decision(run_status, ItemState.FAILED, stage.name, attempt, None, error, c, "failed")
    policy = stage.retry
    max_attempts = c.max_attempts or policy.max_attempts
    if attempt >= max_attempts:
        note = f"failed: {max_attempts} attempts used"
        return Decision(run_status, ItemState.FAILED, stage.name, attempt, None, error, c, note)
    asked = asked_delay(error, now) if c.retry_after_from_text else None
    if report.retry_after_s is not None:  # the worker's own word wins over its text's
        delay = report.retry_after_s
    elif asked is not None:
        delay = asked
    else:
        if c.backoff_s is not None:
            policy = RetryPolicy(
                max_attempts, c.backoff_s, policy.factor, policy.max_backoff_s, policy.jitter
            )
        delay = backoff_delay(policy, attempt, rng)
    note = f"retry in {delay:.1f}s (attempt {attempt + 1} of {max_attempts})"
    return Decision(
        run_status, ItemState.RETRYING, stage.name, attempt, now + delay, error, c, note
    )
