"""The page as an operator's console, in Debian's Chromium through Playwright: every action
(pause, resume, clear, retry by label, release, fail, reload) reaches the daemon through the
API and leaves an audit line; finds, charts, live runs; 600 and 1400 px; the user's clock."""

from __future__ import annotations

import re
import signal
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import Project, wait_until
from test_page import CHROMIUM, browser  # noqa: F401 (the fixture)

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)"
)

WORKER = """
import pathlib, time

def work(data, ctx):
    ctx.progress(0.5, "halfway there")
    while pathlib.Path("hold-" + data["name"]).exists():  # the test decides when it ends
        time.sleep(0.05)
    if data.get("hang"):
        time.sleep(60)
    if data.get("blocked") and not pathlib.Path("open").exists():
        raise RuntimeError("Widget quota spent: 0 of 100 left for " + data["name"])
    return {"sent": data["name"]}
"""
RULES = """
rules:
  - match: "Widget quota spent"
    group: terminal
    label: Widget quota spent
    category: account
    advice: "top the widget plan up, then retry the label"
    runbook: https://wiki.example/business-hours
halts:
  - {when: same_label, channels: [form], count: 1, within: 1h}
"""
ADVICE = "what to do: top the widget plan up, then retry the label"


def start(project: Project, on_interrupt: str = "requeue", timeout: str = "30s") -> str:
    """A daemon running outreach/send (channel from the item's contact method); the page's
    sign-in link."""
    project.write("worker.py", WORKER)
    project.write("console.yaml", RULES)
    project.configure(
        f"""
        outreach:
          stages:
            - name: send
              python: "worker:work"
              channel: "{{data.contact_method}}"
              concurrency: 4
              timeout: {timeout}
              on_interrupt: {on_interrupt}
              retry: {{max_attempts: 1}}
        """,
        extra="drain_grace: 100ms\n",
        rules=("console.yaml",),
    )
    project.start_daemon()
    return sign_in_link(project)


def sign_in_link(project: Project) -> str:
    opened = wait_until(
        lambda: (done := project.cli("open", expect=None)).returncode == 0 and done.stdout,
        "the API to give a sign-in link",
    )
    return re.search(r"http://\S+", opened)[0]


def enqueue(project: Project, key: str, **data: object) -> None:
    import json

    body = {"name": key, "contact_method": "sms", **data}
    project.cli("enqueue", "outreach", key, "--data", json.dumps(body))


def opened(browser, url: str, width: int = 1400, **context: object):  # noqa: F811
    page = browser.new_context(viewport={"width": width, "height": 900}, **context).new_page()
    page.goto(url)
    page.wait_for_selector("#connection:has-text('live')")
    return page


def audit_lines(project: Project) -> list[tuple[str, str, str, str]]:
    store = project.store()
    try:
        rows = store.db.execute_sql("SELECT who, action, target, detail FROM audit ORDER BY id")
        return [tuple(row) for row in rows.fetchall()]
    finally:
        store.close()


def active_holds(project: Project) -> set[tuple[str, str, str]]:
    store = project.store()
    try:
        return {(hold.kind, hold.scope, hold.target) for hold in store.active_holds()}
    finally:
        store.close()


def state(project: Project, key: str) -> str:
    return project.item("outreach", key).state


def test_pause_and_resume_a_channel_a_stage_and_a_pipeline_from_the_page(
    project: Project,
    browser,  # noqa: F811
):
    page = opened(browser, start(project))
    page.locator("#pause-scope").select_option("channel")
    page.locator("#pause-target").fill("sms")
    page.locator("#pause-form button[type=submit]").click()
    wait_until(lambda: active_holds(project) == {("pause", "channel", "sms")}, "sms to pause")
    paused = page.locator("#halts li", has_text="paused: sms")
    paused.wait_for()
    enqueue(project, "waits")  # a paused channel keeps its items queued
    page.locator("#notice", has_text="paused channel sms: its items stay queued").wait_for()
    paused.get_by_role("button", name="Resume").click()
    wait_until(lambda: not active_holds(project), "sms to resume")
    wait_until(lambda: state(project, "waits") == "done", "the item to run once resumed")

    stage_row = page.locator("#tree tr", has_text="▸ send")
    stage_row.get_by_role("button", name="Pause").click()
    wait_until(lambda: active_holds(project) == {("pause", "stage", "outreach/send")}, "a pause")
    page.locator("#halts li", has_text="paused: outreach/send").wait_for()
    stage_row.get_by_role("button", name="Resume").wait_for()
    stage_row.get_by_role("button", name="Resume").click()  # the tree offers it too
    wait_until(lambda: not active_holds(project), "the stage to resume")
    stage_row.get_by_role("button", name="Pause").wait_for()  # the page shows it resumed

    pipeline_row = page.locator("#tree tr", has_text="outreach").first
    pipeline_row.get_by_role("button", name="Pause").click()
    wait_until(lambda: active_holds(project) == {("pause", "pipeline", "outreach")}, "a pause")
    pipeline_row.get_by_role("button", name="Resume").wait_for()
    page.locator("#halts li", has_text="paused: outreach").get_by_role(
        "button", name="Resume"
    ).click()
    wait_until(lambda: not active_holds(project), "the pipeline to resume")

    lines = audit_lines(project)
    assert [(action, target) for _, action, target, _ in lines] == [
        ("pause", "channel sms"), ("resume", "channel sms"),
        ("pause", "stage outreach/send"), ("resume", "stage outreach/send"),
        ("pause", "pipeline outreach"), ("resume", "pipeline outreach"),
    ]  # fmt: skip
    assert all(" via page (api from 127.0.0.1)" in who for who, *_ in lines)
    wait_until(lambda: page.locator("#audit tr.audit-line").count() == 6, "the page's audit")


def test_retry_by_label_asks_with_the_dry_run_count_first(project: Project, browser):  # noqa: F811
    url = start(project)
    for key in ("b-1", "b-2", "b-3"):
        enqueue(project, key, blocked=True)
    wait_until(lambda: all(state(project, k) == "failed" for k in ("b-1", "b-2", "b-3")),
               "three blocked sends to fail")  # fmt: skip
    page = opened(browser, url)
    label_row = page.locator("#tree tr", has_text="Widget quota spent")
    label_row.get_by_role("button", name="Retry").click()
    question = page.locator("#confirm.open",
                            has_text="requeue 3 items labelled Widget quota spent at"
                            " outreach/send?")  # fmt: skip
    question.wait_for()
    assert {state(project, k) for k in ("b-1", "b-2", "b-3")} == {"failed"}  # nothing yet
    assert audit_lines(project) == []  # a dry run changes nothing and leaves no line
    page.locator("#confirm-no").click()
    assert not page.locator("#confirm.open").is_visible()

    (project.root / "open").touch()  # the plan is topped up: the retried sends go through
    label_row.get_by_role("button", name="Retry").click()
    question.wait_for()
    page.locator("#confirm-yes").click()
    page.locator("#notice", has_text="requeued 3 items labelled Widget quota spent").wait_for()
    wait_until(lambda: all(state(project, k) == "done" for k in ("b-1", "b-2", "b-3")), "retries")
    ((who, action, target, detail),) = audit_lines(project)
    assert (action, target, detail) == (
        "retry", "label 'Widget quota spent' in outreach/send", "3 item(s) requeued",
    )  # fmt: skip
    assert who.endswith(" via page (api from 127.0.0.1)")
    # The failures stay listed, each marked as made good by a later attempt.
    failure = page.locator("#failures details", has_text="b-1#1")
    failure.locator(".ok", has_text="failed · later succeeded").wait_for()
    failure.locator("summary").click()
    failure.get_by_text(ADVICE).wait_for()
    page.reload()  # the chart's aggregates, afresh: they keep what each run was when it ended,
    # so the retry adds its successes and leaves the failures that were final then as they were
    chart = page.locator(".chart[data-stage='outreach/send']")
    chart.locator(".summary", has_text="6 runs (3 ok, 3 failed), 50% failed").wait_for()


def hold_two(project: Project) -> str:
    """Two sends held for a person (interrupted at a stage whose side effects must not
    repeat); a new daemon, and the page's sign-in link."""
    start(project, on_interrupt="hold")
    for key in ("h-1", "h-2"):
        (project.root / f"hold-{key}").touch()
        enqueue(project, key)
    wait_until(lambda: all(state(project, k) == "running" for k in ("h-1", "h-2")), "two sends")
    project._daemons[-1].send_signal(signal.SIGTERM)
    assert project._daemons[-1].wait(15) == 0
    assert {state(project, k) for k in ("h-1", "h-2")} == {"held"}
    for key in ("h-1", "h-2"):
        (project.root / f"hold-{key}").unlink()
    project.start_daemon()
    return sign_in_link(project)


def test_held_items_are_released_or_failed_from_the_page(project: Project, browser):  # noqa: F811
    page = opened(browser, hold_two(project))
    page.locator("#held .held-pipeline", has_text="outreach: 2 held").wait_for()
    page.locator("#held tr.held-item", has_text="h-1").get_by_role("button", name="Release").click()
    page.locator("#confirm.open", has_text="release 1 held items of outreach (h-1)?").wait_for()
    page.locator("#confirm-yes").click()
    wait_until(lambda: state(project, "h-1") == "done", "the released send to run")

    page.locator("#held tr.held-item", has_text="h-2").get_by_role("button", name="Fail").click()
    page.locator("#confirm.open", has_text="fail 1 held items of outreach (h-2)? Why:").wait_for()
    page.locator("#confirm-yes").click()  # without a reason nothing fails
    page.locator("#notice.error", has_text="a reason is kept").wait_for()
    page.locator("#confirm-reason").fill("sent by hand")
    page.locator("#confirm-yes").click()
    wait_until(lambda: state(project, "h-2") == "failed", "the held send to fail")
    assert project.item("outreach", "h-2").last_error == "sent by hand"
    page.locator("#held", has_text="none").wait_for()

    actions = [(action, target, detail) for _, action, target, detail in audit_lines(project)]
    assert actions == [
        ("release", "outreach", "1 held item(s) (h-1)"),
        ("fail", "outreach", "1 held item(s) (h-2): sent by hand"),
    ]


def test_reload_from_the_page_says_what_came_of_it(project: Project, browser):  # noqa: F811
    page = opened(browser, start(project))
    page.get_by_role("button", name="Reload rules").click()
    page.locator("#notice", has_text="reloaded: rules version").wait_for()
    project.write("console.yaml", "rules:\n  - {match: '(', group: terminal, label: X}\n")
    page.get_by_role("button", name="Reload rules").click()
    refused = page.locator("#notice.error", has_text="console.yaml:2")
    refused.wait_for()
    lines = audit_lines(project)
    assert [action for _, action, _, _ in lines] == ["reload", "reload"]
    assert lines[0][3].startswith("rules version ")
    assert lines[1][3].startswith("failed: ") and "stays in force" in lines[1][3]


def test_a_halt_is_cleared_with_its_advice_shown_and_marked_on_the_chart(
    project: Project,
    browser,  # noqa: F811
):
    url = start(project)
    enqueue(project, "f-1", contact_method="form", blocked=True)
    enqueue(project, "ok-1")
    wait_until(lambda: active_holds(project), "the form channel to halt")
    wait_until(lambda: state(project, "ok-1") == "done", "the sms send")
    page = opened(browser, url)
    halt = page.locator("#halts li", has_text="halted: form")
    halt.get_by_text(ADVICE).wait_for()
    assert halt.get_by_role("link", name="runbook").get_attribute("href") == (
        "https://wiki.example/business-hours"
    )
    chart = page.locator(".chart[data-stage='outreach/send']")
    chart.locator(".summary", has_text="2 runs (1 ok, 1 failed), 50% failed, 1 halt(s)").wait_for()
    assert chart.locator("rect.halt-mark").count() == 1
    assert chart.locator("polyline.failure-rate").count() == 1
    halt.get_by_role("button", name="Clear").click()
    wait_until(lambda: not active_holds(project), "the halt to clear")
    ((_who, action, target, detail),) = audit_lines(project)
    assert (action, target, detail) == ("clear halt", "form", "Widget quota spent")


def test_finds_an_item_runs_by_filter_page_by_page_and_a_runs_whole_record(
    project: Project,
    browser,  # noqa: F811
):
    url = start(project, timeout="2s")
    for number in range(28):
        enqueue(project, f"k-{number:02}")
    enqueue(project, "late", blocked=True)
    enqueue(project, "slow", hang=True)  # the watchdog kills it after 2 s
    wait_until(lambda: state(project, "slow") == "failed" and state(project, "late") == "failed",
               "the timed-out and the blocked send")  # fmt: skip
    page = opened(browser, url)
    page.locator("#failures details", has_text="slow#1").locator(".timed_out").wait_for()

    page.locator("#item-key").fill("late")
    page.locator("#item-form button[type=submit]").click()
    story = page.locator("#story .story[data-key='late']")
    story.get_by_text("next: nothing: failed (Widget quota spent)").wait_for()
    story.get_by_text(ADVICE).wait_for()
    story.locator(".clickable", has_text="run ").click()
    record = page.locator("#record .run-record")
    record.get_by_text("Widget quota spent: 0 of 100 left for late").first.wait_for()
    record.get_by_text("RuntimeError").first.wait_for()
    record.locator("pre", has_text="Traceback (most recent call last)").wait_for()
    record.get_by_text('"contact_method": "sms"').wait_for()  # the item's data
    record.get_by_text(ADVICE).wait_for()

    page.locator("#runs-status").select_option("ok")
    page.locator("#runs-form button[type=submit]").click()
    rows = page.locator("#runs tr.found-run")
    wait_until(lambda: rows.count() == 25, "the first page of ok runs")
    page.get_by_role("button", name="Older runs").click()
    wait_until(lambda: rows.count() == 28, "the second page")
    assert page.get_by_role("button", name="Older runs").is_hidden()
    keys = [rows.nth(i).locator("td").nth(1).inner_text() for i in range(28)]
    assert sorted(keys) == [f"k-{n:02}" for n in range(28)]  # each once, none lost

    page.locator("#runs-status").select_option("")
    page.locator("#runs-label").fill("Widget quota spent")
    page.locator("#runs-since").select_option("3600")
    page.locator("#runs-form button[type=submit]").click()
    wait_until(lambda: rows.count() == 1, "the one run with the label")
    rows.first.locator(".clickable").click()
    record.locator("dd", has_text="terminal · Widget quota spent · account").wait_for()


def test_a_recorded_replay_is_marked_in_the_runs_and_its_record(project: Project, browser):  # noqa: F811
    url = start(project)
    enqueue(project, "late", blocked=True)
    wait_until(lambda: state(project, "late") == "failed", "the blocked send")
    (original,) = project.runs("late")
    project.cli("replay", original.id, "--record", expect=1)
    page = opened(browser, url)
    page.locator("#runs-label").fill("Widget quota spent")
    page.locator("#runs-form button[type=submit]").click()
    rows = page.locator("#runs tr.found-run")
    wait_until(lambda: rows.count() == 2, "the run and its replay")
    replayed = rows.filter(has_text="failed · replay")
    assert replayed.count() == 1
    replayed.locator(".clickable").click()
    record = page.locator("#record .run-record")
    record.locator("dd", has_text=f"run {original.id[:8]} (pipewarden replay --record").wait_for()


def test_the_api_refuses_bad_filters_with_the_reason(project: Project):
    import httpx

    start(project)
    base = f"http://127.0.0.1:{project.api_port}"
    auth = {"Authorization": f"Bearer {(project.state_dir / 'api.token').read_text().strip()}"}
    for bad, reason in (
        ("status=bogus", "'status' must be one of running, ok, "),
        ("since=nan", "'since' must be a number, not 'nan'"),
        ("before=1", "give 'before' and 'before_id' together"),
        ("pipeline=nosuch", "nosuch"),
        ("colour=red", "unknown parameter 'colour'"),
    ):
        answer = httpx.get(f"{base}/api/find/runs?{bad}", headers=auth)
        assert answer.status_code == 400 and reason in answer.json()["error"], bad
    for path in ("/api/find/runs", "/api/find/held", "/api/charts", "/api/audit", "/api/advice"):
        assert httpx.get(base + path).status_code == 401, path  # no credential, no data
        assert httpx.get(base + path, headers=auth).status_code == 200, path


def test_a_page_opened_mid_run_shows_the_attempt_and_its_progress_at_once(
    project: Project,
    browser,  # noqa: F811
):
    url = start(project)
    (project.root / "hold-beta").touch()
    enqueue(project, "beta")
    wait_until(lambda: "beta#1 50% halfway there" in project.cli("status").stdout, "progress")
    page = browser.new_page()
    page.goto(url)
    row = page.locator("#live tr.run", has_text="beta")
    row.get_by_text("halfway there").wait_for(timeout=3000)  # from the snapshot, not an event
    assert row.locator(".bar span").get_attribute("style") == "width:50%"
    (project.root / "hold-beta").unlink()


def progress_stored(project: Project) -> bool:
    store = project.store()
    try:
        return any(run.message == "halfway there" for run in store.running_runs())
    finally:
        store.close()


@pytest.mark.parametrize("width", [600, 1400])
def test_the_page_fits_the_width_without_scrolling_sideways(
    project: Project,
    browser,  # noqa: F811
    width: int,
    tmp_path: Path,
):
    url = start(project)
    enqueue(
        project,
        "dentist-austin.com/evening-appointments-and-weekend-hours",
        blocked=True,
        contact_method="form",
    )
    enqueue(project, "ok-1")
    (project.root / "hold-running").touch()
    enqueue(project, "running")
    wait_until(lambda: active_holds(project) and state(project, "running") == "running", "work")
    wait_until(lambda: progress_stored(project), "the running attempt's progress in the store")
    page = opened(browser, url, width=width)  # so the first snapshot shows the live row
    page.locator(".chart[data-stage='outreach/send'] svg").wait_for()
    page.locator("#live tr.run", has_text="halfway there").first.wait_for()
    page.locator("#pause-target").fill("sms")
    page.locator("#pause-form button[type=submit]").click()
    page.locator("#halts li", has_text="paused: sms").wait_for()
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    shot = tmp_path / f"page-{width}.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert overflow <= 0, f"{overflow} px wider than the {width} px window: see {shot}"
    (project.root / "hold-running").unlink()


def test_times_are_in_the_users_zone_and_locale_on_a_24_hour_clock(project: Project, browser):  # noqa: F811
    url = start(project)
    page = opened(browser, url, locale="de-DE", timezone_id="Asia/Kathmandu")
    page.locator("#pause-target").fill("sms")
    page.locator("#pause-form button[type=submit]").click()
    cell = page.locator("#audit tr.audit-line td.when").first
    cell.wait_for()
    ((at,),) = _audit_times(project)
    expected = datetime.fromtimestamp(at, ZoneInfo("Asia/Kathmandu")).strftime("%H:%M:%S")
    assert cell.inner_text() == expected  # +05:45, 24-hour, however this host is set
    held = page.locator("#halts li", has_text="paused: sms")
    assert f"since {expected}" in held.inner_text()


def _audit_times(project: Project) -> list[tuple[float]]:
    store = project.store()
    try:
        return store.db.execute_sql("SELECT at FROM audit").fetchall()
    finally:
        store.close()
