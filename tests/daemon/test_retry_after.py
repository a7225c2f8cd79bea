"""A rate limit waits exactly as long as its message asks (`retry_after: from_text`)."""

from __future__ import annotations

import random
import time
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from conftest import Project, wait_until
from freezegun import freeze_time
from pipewarden.classifier import Classification
from pipewarden.config import Pipeline, RetryPolicy, Stage
from pipewarden.errors import ConfigError
from pipewarden.limits import DELAY_MAX_S
from pipewarden.outcomes import decide
from pipewarden.protocol import Verdict, WorkerReport
from pipewarden.retry_after import asked_delay
from pipewarden.rules import load_rules
from pipewarden.types import Group, ItemState

NOW = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("HTTP 429 Too Many Requests (Retry-After: 30)", 30),
        ("retry-after-ms: 1500", 1.5),
        ("Retry-After: Sun, 22 Nov 2026 10:02:00 GMT", 120),
        ("Rate limit reached for gpt-4o on tokens per min (TPM). Please try again in 6.5s.", 6.5),
        (
            "Please try again in 1m12.5s. Visit https://platform.openai.com/account/rate-limits",
            72.5,
        ),
        ("Please try again in 240ms.", 0.24),
        ("exceeded token rate limit of your current tier. Please retry after 20 seconds.", 20),
        ("Rate limit exceeded: free-models-per-min. Please retry after 1 minute", 60),
        ("Too Many Requests: retry after 35", 35),
        ("Please wait 30 seconds before retrying", 30),
        ('{"message": "You are being rate limited.", "retry_after": 64.57}', 64.57),
        ("'details': [{'@type': 'google.rpc.RetryInfo', 'retryDelay': '38s'}]", 38),
        ("x-ratelimit-reset: 1795341660", 60),  # a Unix time: 10:01:00
        ("rate limit resets at 2026-11-22T10:05:00Z", 300),
        ("x-ratelimit-reset-requests: 6m0s", 360),
        ("try again in an hour", 3600),
    ],
)
def test_the_wait_a_message_asks_for(text: str, seconds: float):
    assert asked_delay(text, NOW) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    [
        "Request failed with status code 429",
        "try again in a few minutes",
        "retry 3 times, then give up",
        "page.waitForSelector: Timeout 30000ms exceeded",
        "failed after 5 seconds",
    ],
)
def test_a_message_that_says_no_wait_gives_none(text: str):
    assert asked_delay(text, NOW) is None


def test_the_wait_is_bounded_and_never_negative():
    assert asked_delay("Retry-After: 99999999999", NOW) == DELAY_MAX_S
    assert asked_delay("rate limit resets at 2026-11-22T09:00:00Z", NOW) == 0.0


STAGE = Stage(
    pipeline="outreach", name="send", command=("x",), python=None, mode="process",
    concurrency=1, timeout_s=10, grace_s=1, cwd=None, env=(),  # type: ignore[arg-type]
    retry=RetryPolicy(max_attempts=6, backoff_s=10, factor=2, max_backoff_s=3600, jitter=0.0),
    channel="email", on_interrupt="requeue", defer_s=900,
)  # fmt: skip
OUTREACH = Pipeline("outreach", (STAGE,))
FROM_TEXT = Classification(
    Group.RETRIABLE, "Rate limited", "quota", "rate_limited", "pack:http:70",
    retry_after_from_text=True,
)  # fmt: skip


@freeze_time("2026-11-22 10:00:00")
def test_a_rule_with_retry_after_from_text_waits_as_the_message_asks():
    report = WorkerReport(Verdict.ERROR, error="429 Too Many Requests (Retry-After: 45)")
    decision = decide(OUTREACH, STAGE, 1, report, FROM_TEXT, time.time(), random.Random(1))
    assert decision.item_state is ItemState.RETRYING
    assert decision.ready_at == NOW + 45
    assert decision.note == "retry in 45.0s (attempt 2 of 6)"


@freeze_time("2026-11-22 10:00:00")
def test_the_workers_own_retry_after_wins_and_silence_falls_back_to_the_backoff():
    said = "429 Too Many Requests (Retry-After: 45)"
    own = WorkerReport(Verdict.ERROR, error=said, retry_after_s=5)
    decision = decide(OUTREACH, STAGE, 1, own, FROM_TEXT, time.time(), random.Random(1))
    assert decision.ready_at == NOW + 5
    quiet = WorkerReport(Verdict.ERROR, error="429 Too Many Requests")
    decision = decide(OUTREACH, STAGE, 1, quiet, FROM_TEXT, time.time(), random.Random(1))
    assert decision.ready_at == NOW + 10  # the stage's backoff
    plain = replace(FROM_TEXT, retry_after_from_text=False)
    decision = decide(
        OUTREACH, STAGE, 1, WorkerReport(Verdict.ERROR, error=said), plain, NOW, random.Random(1)
    )
    assert decision.ready_at == NOW + 10  # a rule without the key ignores the text


def test_retry_after_is_only_for_retriable_rules(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        'rules:\n  - {match: "quota", group: terminal, label: Q, retry_after: from_text}\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_rules([path], tmp_path)
    assert str(caught.value) == (
        "r.yaml:2:62: retry_after applies to retriable rules only"
        " — remove it, or make the rule retriable"
    )


def test_the_daemon_retries_a_rate_limit_when_the_reply_says(project: Project):
    project.write(
        "limited.py",
        "import sys\nsys.exit('HTTP 429 Too Many Requests (Retry-After: 600)')\n",
    )
    project.configure(
        "outreach:\n  stages:\n    - {name: send, command: [python3, limited.py]}\n",
        rules=("pack:http",),
    )
    project.cli("enqueue", "outreach", "lead-1")
    daemon = project.start_daemon()
    (run,) = wait_until(
        lambda: [r for r in project.runs("lead-1") if r.finished_at], "the run to end"
    )
    item = project.item("outreach", "lead-1")
    daemon.terminate()
    daemon.wait(30)
    assert (run.label, run.rule_id.split(":")[:2]) == ("Rate limited", ["pack", "http"])
    assert item.state == "retrying"
    assert item.ready_at == pytest.approx(run.finished_at + 600, abs=2)
