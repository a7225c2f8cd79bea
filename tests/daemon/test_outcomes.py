"""The item life after a run: backoff, retry_after, exhaustion, defer, ignore, advance."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from freezegun import freeze_time
from pipewarden.classifier import UNKNOWN, Classification
from pipewarden.config import Pipeline, RetryPolicy, Stage
from pipewarden.outcomes import NO_ERROR_TEXT, backoff_delay, backoff_schedule, decide
from pipewarden.protocol import Verdict, WorkerReport
from pipewarden.types import Group, ItemState, RunStatus

RATE_LIMITED = Classification(Group.RETRIABLE, "Rate limited", "api", "rate_limited", "r.yaml:3")
SUSPENDED = Classification(Group.TERMINAL, "Account suspended", "account", "suspended", "r.yaml:9")


def stage(name: str, retry: RetryPolicy) -> Stage:
    return Stage(
        pipeline="sites", name=name, command=("x",), python=None, mode="process",
        concurrency=1, timeout_s=10, grace_s=1, cwd=Path("."), env=(), retry=retry,
        channel=name, on_interrupt="requeue", defer_s=900,
    )  # fmt: skip


POLICY = RetryPolicy(max_attempts=4, backoff_s=10, factor=3, max_backoff_s=60, jitter=0.0)
CAPTURE = stage("capture", POLICY)
SCORE = stage("score", POLICY)
SITES = Pipeline("sites", (CAPTURE, SCORE))


def fail(error: str | None = "status code 429", **extra) -> WorkerReport:
    return WorkerReport(Verdict.ERROR, error=error, **extra)


def test_the_backoff_schedule_grows_by_the_factor_and_stops_at_the_cap():
    assert backoff_schedule(POLICY) == [10, 30, 60]


@freeze_time("2026-11-22 10:00:00")
def test_each_retry_is_due_at_now_plus_its_backoff():
    now = time.time()
    due = [
        decide(SITES, CAPTURE, attempt, fail(), RATE_LIMITED, now, random.Random(1)).ready_at
        for attempt in (1, 2, 3)
    ]
    assert [datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S") for t in due] == [
        "10:00:10", "10:00:30", "10:01:00",
    ]  # fmt: skip


def test_jitter_adds_at_most_its_fraction():
    jittery = RetryPolicy(max_attempts=5, backoff_s=10, factor=2, max_backoff_s=3600, jitter=0.2)
    delays = [backoff_delay(jittery, 2, random.Random(seed)) for seed in range(200)]
    assert all(20 <= d <= 24 for d in delays)
    assert max(delays) - min(delays) > 3  # it really varies, so retries do not stampede


@freeze_time("2026-11-22 10:00:00")
def test_a_workers_retry_after_wins_over_the_backoff():
    decision = decide(SITES, CAPTURE, 1, fail(retry_after_s=300), RATE_LIMITED, time.time(),
                      random.Random())  # fmt: skip
    assert decision.item_state is ItemState.RETRYING
    assert decision.ready_at == time.time() + 300


def test_exhausted_retries_fail_the_item_with_the_last_label():
    decision = decide(SITES, CAPTURE, 4, fail(), RATE_LIMITED, 1000.0, random.Random())
    assert (decision.item_state, decision.run_status) == (ItemState.FAILED, RunStatus.FAILED)
    assert decision.classification.label == "Rate limited"
    assert decision.error == "status code 429" and decision.ready_at is None


def test_a_rule_may_allow_more_attempts_and_its_own_backoff():
    patient = Classification(**{**RATE_LIMITED.__dict__, "max_attempts": 6, "backoff_s": 100})
    decision = decide(SITES, CAPTURE, 4, fail(), patient, 1000.0, random.Random())
    assert decision.item_state is ItemState.RETRYING
    assert decision.ready_at == 1000.0 + min(60, 100 * 3**3)  # the stage's cap still holds


def test_terminal_fails_at_once_and_unknown_is_retried():
    assert decide(SITES, CAPTURE, 1, fail("suspended"), SUSPENDED, 0.0,
                  random.Random()).item_state is ItemState.FAILED  # fmt: skip
    assert decide(SITES, CAPTURE, 1, fail("??"), UNKNOWN, 0.0,
                  random.Random()).item_state is ItemState.RETRYING  # fmt: skip


def test_a_timeout_keeps_its_own_run_status():
    decision = decide(SITES, CAPTURE, 1, fail("Timed out after 10s", timed_out=True),
                      RATE_LIMITED, 0.0, random.Random())  # fmt: skip
    assert decision.run_status is RunStatus.TIMED_OUT


def test_a_failure_without_text_still_gets_one():
    decision = decide(SITES, CAPTURE, 1, fail(None), UNKNOWN, 0.0, random.Random())
    assert decision.error == NO_ERROR_TEXT


@pytest.mark.parametrize(
    ("report", "classification", "until"),
    [
        (WorkerReport(Verdict.DEFER, defer_s=3600), None, 3600.0),
        (fail("outside business hours"),
         Classification(Group.DEFER, "Business hours block", "schedule", "b", "r:1", defer_s=600),
         600.0),
    ],
)  # fmt: skip
def test_defer_is_not_a_failure_and_spends_no_attempt(report, classification, until):
    decision = decide(SITES, CAPTURE, 2, report, classification, 0.0, random.Random())
    assert (decision.item_state, decision.run_status) == (ItemState.DEFERRED, RunStatus.DEFERRED)
    assert decision.item_attempt == 1 and decision.ready_at == until


def test_ok_moves_the_item_on_and_finishes_it_at_the_last_stage():
    ok = WorkerReport(Verdict.OK)
    moved = decide(SITES, CAPTURE, 2, ok, None, 5.0, random.Random())
    assert (moved.item_state, moved.item_stage, moved.item_attempt) == ("queued", "score", 0)
    done = decide(SITES, SCORE, 1, ok, None, 5.0, random.Random())
    assert (done.item_state, done.item_stage) == (ItemState.DONE, "score")
