"""Halts: the guard's windows, a burst halting its channel end to end, probes, pauses."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from datetime import datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import REPO, HttpReceiver, Project, wait_until
from freezegun import freeze_time
from pipewarden.clock import Clock
from pipewarden.config import load_config
from pipewarden.daemon import Daemon
from pipewarden.errors import ConfigError
from pipewarden.guard import Guard
from pipewarden.rules import HaltRule, load_rules
from pipewarden.store import FinishedRun, NewRun, Store
from pipewarden.types import ItemState, RunStatus

_keys = itertools.count()
REPUTATION_GUARD = HaltRule(
    "rules/outreach.yaml:40", "same_label", channels=("sms", "email"), count=25, within_s=7200
)


def failed_run(store: Store, channel: str, label: str, status=RunStatus.FAILED, **extra):
    """Record one finished run as the scheduler would, at the (frozen) current time."""
    now = time.time()
    store.enqueue("outreach", "send", [(f"item-{next(_keys)}", {})], now)
    ((claimed, new_run),) = store.claim(
        "outreach",
        "send",
        1,
        now,
        lambda item_id, key, data: NewRun(item_id, channel, "fp", "cfg", None),
    )
    item_id, run_id = claimed.item_id, new_run.run_id
    run = FinishedRun(
        run_id=run_id, item_id=item_id, status=status, pipeline="outreach",
        stage=extra.pop("stage", "send"), channel=channel, finished_at=now, duration_s=0.1,
        item_stage="send", item_state=ItemState.FAILED, item_data="{}", item_attempt=1,
        item_ready_at=None, item_channel=channel, error=f"Twilio: {label} (error 20429)",
        label=label, **extra,
    )  # fmt: skip
    store.finish([run], {})
    return run


def test_25_same_errors_on_sms_within_2h_halt_sms_and_not_email(tmp_path: Path):
    store = Store(tmp_path)
    guard = Guard(store, (REPUTATION_GUARD,), {"outreach": ["send"]})
    with freeze_time("2026-11-21 08:00:00") as frozen:
        for _ in range(24):
            run = failed_run(store, "sms", "Rate limited")
            assert guard.check([run], time.time(), store.active_holds()) == []
            frozen.tick(290)  # 24 failures over 1h56m
        failed_run(store, "email", "Rate limited")  # another channel's failures do not count
        run = failed_run(store, "sms", "Rate limited")
        (halt,) = guard.check([run], time.time(), store.active_holds())

    assert (halt.scope, halt.target, halt.kind, halt.label, halt.count) == (
        "channel", "sms", "halt", "Rate limited", 25,
    )  # fmt: skip
    assert halt.reason == "25× Rate limited within 2h"
    assert [h.target for h in store.active_holds()] == ["sms"]


def test_failures_older_than_the_window_do_not_count(tmp_path: Path):
    store = Store(tmp_path)
    guard = Guard(store, (REPUTATION_GUARD,), {"outreach": ["send"]})
    with freeze_time("2026-11-21 08:00:00") as frozen:
        for _ in range(30):
            run = failed_run(store, "sms", "Rate limited")
            assert guard.check([run], time.time(), store.active_holds()) == []
            frozen.tick(301)  # 25 of these span more than 2h: never 25 inside one window


def test_a_stage_whose_last_runs_all_failed_halts(tmp_path: Path):
    store = Store(tmp_path)
    rule = HaltRule("r.yaml:1", "all_failed", count=3)
    guard = Guard(store, (rule,), {"outreach": ["send"]})
    with freeze_time("2026-11-21 08:00:00") as frozen:
        runs = []
        for status in (RunStatus.FAILED, RunStatus.OK, RunStatus.FAILED, RunStatus.TIMED_OUT):
            runs.append(failed_run(store, "send", "Boom", status=status))
            frozen.tick(1)
        assert guard.check(runs[:3], time.time(), []) == []  # an ok run breaks the streak
        runs.append(failed_run(store, "send", "Boom"))
        (halt,) = guard.check(runs[3:], time.time(), [])
    assert (halt.scope, halt.target, halt.reason) == (
        "stage", "outreach/send", "the last 3 runs all failed",
    )  # fmt: skip


def test_a_pipeline_over_its_daily_budget_halts(tmp_path: Path):
    store = Store(tmp_path)
    guard = Guard(
        store,
        (HaltRule("r.yaml:1", "budget", pipelines=("outreach",), budget=1.0),),
        {"outreach": ["send"]},
    )
    with freeze_time("2026-11-21 23:00:00") as frozen:
        run = failed_run(store, "sms", "x", status=RunStatus.OK, cost=0.9)
        assert guard.check([run], time.time(), []) == []
        frozen.tick(7200)  # a new day: yesterday's spending does not count
        run = failed_run(store, "sms", "x", status=RunStatus.OK, cost=0.9)
        assert guard.check([run], time.time(), []) == []
        run = failed_run(store, "sms", "x", status=RunStatus.OK, cost=0.2)
        (halt,) = guard.check([run], time.time(), [])
    assert (halt.scope, halt.target) == ("pipeline", "outreach")
    assert halt.reason == "budget spent: 1.10 of 1.00 today"


def test_the_shipped_reputation_guard_is_25_in_2h_on_sms_and_email():
    ruleset = load_rules(sorted((REPO / "rules").glob("*.yaml")), REPO)
    (guard_rule,) = [h for h in ruleset.halts if h.when == "same_label"]
    assert (guard_rule.channels, guard_rule.count, guard_rule.within_s) == (
        ("sms", "email"), 25, 7200.0,
    )  # fmt: skip


SENDER = """
import pathlib

def send(data):
    if data["contact_method"] == "sms" and not pathlib.Path("sms-fixed").exists():
        raise RuntimeError("Twilio: rate limit exceeded (error 20429)")
    return {"sent": True}
"""


def configure_outreach(project: Project, receiver_url: str, rules: str = "") -> None:
    project.write("sender.py", SENDER)
    extra = f"notify:\n  targets: [{{url: '{receiver_url}'}}]\n  retry_backoff: 200ms\n"
    if rules:
        project.write("extra-rules.yaml", rules)
    project.configure(
        """
        outreach:
          stages:
            - name: send
              python: "sender:send"
              channel: "{data.contact_method}"
              concurrency: 1
              retry: {max_attempts: 1}
        """,
        extra=extra + "drain_grace: 5s\n",
        rules=("extra-rules.yaml",) if rules else (),
    )


def enqueue(project: Project, method: str, count: int, start: int = 0) -> None:
    lines = "".join(
        f'{{"key": "{method}-{n}", "data": {{"contact_method": "{method}"}}}}\n'
        for n in range(start, start + count)
    )
    project.write(f"{method}.jsonl", lines)
    project.cli("enqueue", "outreach", "--file", f"{method}.jsonl")


def states(project: Project, method: str) -> dict[str, int]:
    store = project.store()
    rows = (
        store.db.connection()
        .execute("SELECT state, COUNT(*) FROM items WHERE channel = ? GROUP BY state", (method,))
        .fetchall()
    )
    store.close()
    return dict(rows)


def test_a_burst_halts_sms_email_flows_and_the_halt_outlives_a_restart(
    project: Project, http_receiver: HttpReceiver
):
    configure_outreach(project, http_receiver.url)
    enqueue(project, "sms", 26)
    enqueue(project, "email", 3)
    daemon = project.start_daemon()

    wait_until(lambda: states(project, "email").get("done") == 3, "email to keep flowing")
    assert states(project, "sms") == {"failed": 25, "queued": 1}  # the 26th waits, not failed
    wait_until(lambda: "pipewarden: sms halted" in http_receiver.titles(), "the notification")
    (halted,) = [b for b in http_receiver.bodies if b["title"] == "pipewarden: sms halted"]
    assert "25× Rate limited within 2h" in halted["message"]
    assert "Its items stay queued; nothing is failed or lost." in halted["message"]
    assert "halted: sms — 25× Rate limited within 2h since" in project.cli("status").stdout

    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
    project.start_daemon()
    enqueue(project, "email", 1, start=3)  # proves the restarted daemon has done its passes
    wait_until(lambda: states(project, "email").get("done") == 4, "the restarted daemon")
    assert states(project, "sms") == {"failed": 25, "queued": 1}
    assert http_receiver.titles().count("pipewarden: sms halted") == 1  # not notified again

    (project.root / "sms-fixed").touch()
    cleared = project.cli("halts", "clear", "sms")
    assert "cleared the halt on sms; the running daemon has been told" in cleared.stdout
    wait_until(lambda: states(project, "sms").get("done") == 1, "sms to flow again")
    wait_until(lambda: "pipewarden: sms flows again" in http_receiver.titles(), "the all-clear")
    assert project.cli("halts").stdout == "no halts or pauses: everything flows\n"


PROBE_RULES = """
halts:
  - when: same_label
    channels: [sms]
    count: 3
    within: 1h
    probe_after: 1s
"""


def test_a_probe_re_halts_with_a_doubled_cool_down_then_clears(
    project: Project, http_receiver: HttpReceiver
):
    configure_outreach(project, http_receiver.url, PROBE_RULES)
    enqueue(project, "sms", 8)
    project.start_daemon()

    def hold():
        store = project.store()
        try:
            return store.Hold.select().order_by(store.Hold.id.desc()).first()
        finally:
            store.close()

    wait_until(lambda: hold() and hold().cooldown_s == 2.0, "a failed probe to double the wait")
    assert states(project, "sms") == {"failed": 3, "queued": 5}  # the failed probe's item waits
    (project.root / "sms-fixed").touch()

    wait_until(lambda: states(project, "sms").get("done") == 5, "a good probe to clear the halt")
    cleared = hold()
    assert cleared.cleared_at is not None and cleared.cleared_by.startswith("probe")


def test_pause_and_resume_a_channel(project: Project, http_receiver: HttpReceiver):
    configure_outreach(project, http_receiver.url)
    (project.root / "sms-fixed").touch()
    paused = project.cli("pause", "--channel", "sms", "--force")  # no sms item yet
    assert "paused channel sms: its items stay queued" in paused.stdout
    enqueue(project, "sms", 2)
    enqueue(project, "email", 2)
    project.start_daemon()

    wait_until(lambda: states(project, "email").get("done") == 2, "email to flow")
    assert states(project, "sms") == {"queued": 2}
    assert "paused: sms — paused by " in project.cli("status").stdout
    project.cli("resume", "--channel", "sms")
    wait_until(lambda: states(project, "sms").get("done") == 2, "sms to flow after resume")


TOKYO = ZoneInfo("Asia/Tokyo")


def tokyo(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=TOKYO).timestamp()


def test_a_budget_day_is_the_budget_zones_and_its_halt_lifts_at_that_midnight(tmp_path: Path):
    store = Store(tmp_path)
    rule = HaltRule("r.yaml:1", "budget", pipelines=("outreach",), budget=1.0, timezone=TOKYO)
    guard = Guard(store, (rule,), {"outreach": ["send"]})
    with freeze_time("2026-11-21 14:30:00") as frozen:  # 23:30 in Tokyo, 14:30 on this host
        run = failed_run(store, "sms", "x", status=RunStatus.OK, cost=0.9)
        assert guard.check([run], time.time(), []) == []
        frozen.tick(3600)  # 00:30 in Tokyo: a new budget day, though not on this host
        run = failed_run(store, "sms", "x", status=RunStatus.OK, cost=0.9)
        assert guard.check([run], time.time(), []) == []
        run = failed_run(store, "sms", "x", status=RunStatus.OK, cost=0.2)
        (halt,) = guard.check([run], time.time(), [])
    assert halt.reason == "budget spent: 1.10 of 1.00 today (Asia/Tokyo)"
    assert guard.budget_lifts_at(halt) == halt.probe_at == tokyo("2026-11-23 00:00")
    # A halt raised before halts knew when they lift: the end of its day, by its rule's zone.
    store.update_hold(halt.id, probe_at=None)
    assert guard.budget_lifts_at(store.Hold.get_by_id(halt.id)) == tokyo("2026-11-23 00:00")


def test_a_budget_halt_with_a_timezone_or_probe_is_checked_where_it_is_written(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("halts:\n  - {when: budget, budget: 5, timezone: Mars/Olympus}\n")
    with pytest.raises(ConfigError, match="unknown time zone 'Mars/Olympus'") as error:
        load_rules([bad])
    assert str(error.value).startswith(f"{bad}:2:")
    bad.write_text("halts:\n  - {when: budget, budget: 5, probe_after: 1h}\n")
    with pytest.raises(ConfigError, match="lifts itself when its day is over"):
        load_rules([bad])


class ShiftedClock(Clock):
    """Wall time set by the test, going on at the real pace from there."""

    def __init__(self, now: float):
        self.set(now)

    def set(self, now: float) -> None:
        self.offset = now - time.time()

    def now(self) -> float:
        return time.time() + self.offset


BILLED = """
def send(data):
    return {"ok": True, "cost": data["cost"]}
"""


# Apprise, imported in this process here, imports imghdr (deprecated in Python 3.11).
@pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")
def test_a_budget_halt_lifts_itself_when_the_day_rolls_over_and_says_so(
    project: Project, http_receiver: HttpReceiver
):
    project.write("sender.py", BILLED)
    project.write(
        "budget.yaml",
        "halts:\n  - {when: budget, pipelines: [outreach], budget: 1, timezone: Asia/Tokyo}\n",
    )
    project.configure(
        """
        outreach:
          stages:
            - {name: send, python: "sender:send", concurrency: 1}
        """,
        extra=f"notify:\n  targets: [{{url: '{http_receiver.url}', tags: [budget]}}]\n",
        rules=("budget.yaml",),
    )
    for key, cost in (("a", 2.0), ("b", 0.5)):
        project.cli("enqueue", "outreach", key, "--data", f'{{"cost": {cost}}}')
    config = load_config(project.config_path)
    # Days ahead of the enqueue (so its items are due), a minute before midnight in Tokyo.
    midnight = datetime.combine(datetime.now(TOKYO).date() + timedelta(days=3), dtime(), TOKYO)
    clock = ShiftedClock(midnight.timestamp() - 60)
    daemon = Daemon(config, load_rules(config.rule_paths, config.path.parent), clock)

    async def scenario() -> None:
        running = asyncio.create_task(daemon.run(watch_files=False))
        await until(lambda: project.item("outreach", "a").state == "done", "a to spend it")
        assert project.item("outreach", "b").state == "queued"  # held back by the halt
        # The test's clock jumps to a second before midnight; woken, the loop arms its
        # timer for the rollover from the new time (real time needs no such wake-up).
        clock.set(midnight.timestamp() - 1)
        daemon.wake()
        await until(lambda: project.item("outreach", "b").state == "done", "the new day")
        daemon.request_stop("test done")
        assert await running == 0

    asyncio.run(scenario())
    assert http_receiver.titles() == [
        "pipewarden: outreach halted", "pipewarden: outreach flows again",
    ]  # fmt: skip
    resolved = http_receiver.bodies[1]["message"]
    assert resolved.startswith("A new budget day began; it was halted for ")
    assert resolved.endswith(
        "s (budget spent: 2.00 of 1.00 today (Asia/Tokyo)). Its queued items run again."
    )
    store = project.store()
    (hold,) = store.Hold.select()
    store.close()
    assert (hold.cleared_by, hold.cleared_at >= midnight.timestamp()) == (
        "a new budget day", True,
    )  # fmt: skip


async def until(predicate, what: str, timeout: float = 20.0) -> None:
    """wait_until for a test that shares the daemon's event loop."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.05)
