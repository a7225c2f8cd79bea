"""Business hours defer (never fail) a channel's items; bulk requeue by label."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from zoneinfo import ZoneInfo

from conftest import Project
from freezegun import freeze_time
from pipewarden.calendar import BusinessHours, parse_days, parse_hours
from pipewarden.clock import Clock
from pipewarden.config import load_config
from pipewarden.daemon import Daemon
from pipewarden.rules import load_rules

LONDON = ZoneInfo("Europe/London")
OFFICE = BusinessHours(parse_days("mon-fri"), parse_hours("09:00-17:00"), LONDON)


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=LONDON).timestamp()


@freeze_time("2026-11-21 10:00:00")  # a Saturday
def test_on_a_saturday_the_office_opens_on_monday_at_nine():
    assert not OFFICE.is_open(time.time())
    assert OFFICE.next_open(time.time()) == at("2026-11-23 09:00")


def test_open_hours_and_their_edges():
    assert OFFICE.is_open(at("2026-11-23 09:00")) and OFFICE.is_open(at("2026-11-23 16:59"))
    assert not OFFICE.is_open(at("2026-11-23 17:00"))
    assert OFFICE.next_open(at("2026-11-23 12:00")) == at("2026-11-23 12:00")
    assert OFFICE.next_open(at("2026-11-27 18:00")) == at("2026-11-30 09:00")  # Friday evening
    assert parse_days("fri-mon") == {4, 5, 6, 0}


class SettableClock(Clock):
    """Wall time chosen by the test; monotonic time stays real for the event loop."""

    def __init__(self, now: float):
        self.wall = now

    def now(self) -> float:
        return self.wall


def run_daemon(project: Project, clock: Clock) -> None:
    config = load_config(project.config_path)
    rules = load_rules(config.rule_paths, config.path.parent)
    daemon = Daemon(config, rules, clock)
    assert asyncio.run(daemon.run(until_idle=True, watch_files=False)) == 0


def test_an_sms_enqueued_on_saturday_waits_deferred_and_is_sent_on_monday_at_nine(
    project: Project,
):
    project.write("sender.py", "def send(data):\n    return {'sent': True}\n")
    project.configure(
        """
        outreach:
          stages:
            - {name: send, python: "sender:send", channel: "{data.contact_method}"}
        """,
        extra="channels:\n  sms: {days: mon-fri, hours: '09:00-17:00', timezone: Europe/London}\n",
    )
    saturday = at("2026-11-21 10:00")
    stage = load_config(project.config_path).pipeline("outreach").stages[0]
    store = project.store()
    items = [
        ("bakery/sms", {"contact_method": "sms"}),
        ("bakery/email", {"contact_method": "email"}),
    ]
    store.enqueue("outreach", "send", items, saturday, stage.channel_for)
    store.close()

    run_daemon(project, SettableClock(saturday))

    waiting = project.item("outreach", "bakery/sms")
    assert (waiting.state, waiting.last_label, waiting.ready_at) == (
        "deferred", "Outside business hours", at("2026-11-23 09:00"),
    )  # fmt: skip
    assert project.runs("bakery/sms") == []  # nothing was attempted, nothing failed
    assert project.item("outreach", "bakery/email").state == "done"  # email has no hours

    run_daemon(project, SettableClock(at("2026-11-23 09:00")))

    (sent,) = project.runs("bakery/sms")
    assert (sent.status, sent.started_at) == ("ok", at("2026-11-23 09:00"))
    assert project.item("outreach", "bakery/sms").state == "done"


def test_an_sms_enqueued_on_christmas_eve_evening_waits_for_the_first_working_day(
    project: Project,
):
    project.write("sender.py", "def send(data):\n    return {'sent': True}\n")
    project.configure(
        "outreach:\n  stages:\n    - {name: send, python: 'sender:send', channel: sms}\n",
        extra="channels:\n  sms: {days: mon-fri, hours: '09:00-12:00,13:00-17:00',"
        " timezone: Europe/London, holidays: {country: GB, subdiv: ENG}}\n",
    )
    christmas_eve = at("2026-12-24 18:00")
    stage = load_config(project.config_path).pipeline("outreach").stages[0]
    store = project.store()
    store.enqueue("outreach", "send", [("bakery", {})], christmas_eve, stage.channel_for)
    store.close()

    run_daemon(project, SettableClock(christmas_eve))

    waiting = project.item("outreach", "bakery")
    # Christmas on Friday, the weekend, Boxing Day observed on Monday: Tuesday at nine.
    assert (waiting.state, waiting.ready_at) == ("deferred", at("2026-12-29 09:00"))
    assert project.runs("bakery") == []


def test_a_worker_deferring_by_a_compound_duration_waits_that_long(project: Project):
    project.write("later.py", "import json\nprint(json.dumps({'defer': '1h30m'}))\n")
    project.configure("sites:\n  stages:\n    - {name: wait, command: [python3, later.py]}\n")
    project.cli("enqueue", "sites", "k")
    project.start_daemon("--until-idle").wait(30)

    item = project.item("sites", "k")
    (run,) = project.runs("k")
    assert (item.state, run.status) == ("deferred", "deferred")
    assert abs(item.ready_at - run.finished_at - 5400) < 5


LAUNCHER = """
def capture(data):
    if data.get("conflict"):
        raise RuntimeError("browserType.launchPersistentContext: userDataDir is already in use")
    raise RuntimeError("HTTP 404 Not Found. Cannot capture")
"""


def test_bulk_requeue_dry_run_counts_what_the_real_run_then_moves(project: Project):
    project.write("launcher.py", LAUNCHER)
    project.configure(
        """
        sites:
          stages:
            - {name: capture, python: "launcher:capture", retry: {max_attempts: 1}}
        """
    )
    for key in ("a", "b", "c"):
        project.cli("enqueue", "sites", key, "--data", '{"conflict": true}')
    project.cli("enqueue", "sites", "gone")
    project.start_daemon("--until-idle").wait(30)

    dry = project.cli("retry", "--label", "Browser launch conflict", "--dry-run")
    assert dry.stdout == (
        "would requeue 3 failed or retrying item(s) labelled 'Browser launch conflict':\n"
        "  sites/a (failed at capture)\n  sites/b (failed at capture)\n"
        "  sites/c (failed at capture)\n"
    )
    assert {project.item("sites", k).state for k in "abc"} == {"failed"}  # nothing changed

    real = project.cli("retry", "--label", "Browser launch conflict", "--json")
    assert real.stdout.count('"items": 3') == 1
    for key in "abc":
        item = project.item("sites", key)
        assert (item.state, item.attempt, item.requeues) == ("queued", 0, 1)
    assert project.item("sites", "gone").state == "failed"  # another label: left alone


def test_items_requeued_again_and_again_are_reported_as_stuck(project: Project):
    project.write("launcher.py", LAUNCHER)
    project.configure(
        """
        sites:
          stages:
            - {name: capture, python: "launcher:capture", retry: {max_attempts: 1}}
        """
    )
    project.cli("enqueue", "sites", "a", "--data", '{"conflict": true}')
    for _ in range(3):
        project.start_daemon("--until-idle").wait(30)
        project.cli("retry", "--label", "Browser launch conflict")
    project.start_daemon("--until-idle").wait(30)

    status = project.cli("status").stdout
    assert (
        "stuck: 1 item(s) of sites/capture requeued 3+ times still fail with"
        " 'Browser launch conflict' — look before requeueing again"
    ) in status
