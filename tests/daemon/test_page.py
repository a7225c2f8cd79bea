"""The live web page in a real Chromium (Debian's), driven by Playwright."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Project, wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags for a headless Chromium in a sandbox without a network beyond loopback.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed (.ci/run installs it)"
)

WORKER = """
import pathlib, time

def work(data, ctx):
    ctx.progress(0.5, "halfway there")
    while pathlib.Path("hold-" + data["name"]).exists():  # the test decides when it ends
        time.sleep(0.05)
    if data.get("blocked"):
        raise RuntimeError("Cloudflare challenge blocked the form submit")
    return {"sent": True}
"""
HALT_RULES = "halts:\n  - {when: same_label, channels: [form], count: 1, within: 1h}\n"


@pytest.fixture
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def start(project: Project) -> str:
    project.write("worker.py", WORKER)
    project.write("halts.yaml", HALT_RULES)
    project.configure(
        """
        outreach:
          stages:
            - name: send
              python: "worker:work"
              channel: "{data.contact_method}"
              concurrency: 2
              retry: {max_attempts: 1}
        """,
        rules=("halts.yaml",),
    )
    project.start_daemon()
    opened = wait_until(
        lambda: (done := project.cli("open", expect=None)).returncode == 0 and done.stdout,
        "the API to give a sign-in link",
    )
    return re.search(r"http://\S+", opened)[0]  # with a one-time code, good for 60 s


def test_the_page_shows_a_run_appear_and_finish_live(project: Project, browser, tmp_path: Path):
    url = start(project)
    page = browser.new_page()
    page.goto(url)  # signs in with the link's one-time code, then drops it from the URL
    assert page.url.endswith("/") and "code" not in page.url
    page.wait_for_selector("#connection:has-text('live')")

    (project.root / "hold-alpha").touch()
    project.cli(
        "enqueue", "outreach", "alpha", "--data", '{"name": "alpha", "contact_method": "sms"}'
    )
    row = page.locator("#live tr.run", has_text="alpha")
    row.locator(".status", has_text="running").wait_for()
    row.get_by_text("halfway there").wait_for()
    page.screenshot(path=str(tmp_path / "running.png"))

    (project.root / "hold-alpha").unlink()
    row.locator(".status", has_text="ok").wait_for()
    page.locator("#tree tr", has_text="done").first.wait_for()
    page.screenshot(path=str(tmp_path / "done.png"), full_page=True)


def test_a_page_opened_mid_run_shows_its_progress_in_the_tree(project: Project, browser):
    url = start(project)
    (project.root / "hold-beta").touch()
    project.cli(
        "enqueue", "outreach", "beta", "--data", '{"name": "beta", "contact_method": "sms"}'
    )
    wait_until(lambda: "beta#1 50% halfway there" in project.cli("status").stdout, "progress")

    page = browser.new_page()
    page.goto(url)  # after the progress event: the page learns it from /api/status
    page.locator("#tree tr.run", has_text="beta#1 50% halfway there (").wait_for()
    page.locator("#live tr.run", has_text="beta").get_by_text("halfway there").wait_for()
    (project.root / "hold-beta").unlink()
    page.locator("#live tr.run", has_text="beta").locator(".status", has_text="ok").wait_for()


def test_clear_on_a_halt_removes_the_halt_in_the_daemon(project: Project, browser):
    url = start(project)
    project.cli(
        "enqueue", "outreach", "blocked",
        "--data", '{"name": "blocked", "contact_method": "form", "blocked": true}',
    )  # fmt: skip
    wait_until(lambda: _active_holds(project), "the form channel to halt")

    page = browser.new_page()
    page.goto(url)
    halt = page.locator("#halts li", has_text="halted: form — 1× Cloudflare blocked within 1h")
    halt.wait_for()
    halt.get_by_role("button", name="Clear").click()

    wait_until(lambda: not _active_holds(project), "the daemon to clear the halt")
    page.locator("#halts li", has_text="none: everything flows").wait_for()
    store = project.store()
    (hold,) = store.Hold.select()
    store.close()
    assert hold.cleared_by.endswith("(api from 127.0.0.1)")


def _active_holds(project: Project) -> list:
    store = project.store()
    try:
        return store.active_holds()
    finally:
        store.close()


QUICK_THEN_HELD = """
import pathlib, time

def work(data):
    while data["n"] >= 20 and pathlib.Path("hold").exists():
        time.sleep(0.02)
    return None
"""


def test_items_claimed_ahead_show_as_a_count_not_a_line_each(project: Project, browser):
    """A quick stage has many items claimed ahead, each a running run (its row is written
    before a worker takes it): the tree lists a few and counts the rest."""
    project.write("quick.py", QUICK_THEN_HELD)
    project.configure(
        "sites:\n  stages:\n    - {name: find, python: 'quick:work', mode: pool, concurrency: 2}\n"
    )
    (project.root / "hold").touch()
    items = "".join(f'{{"key": "site-{n}", "data": {{"n": {n}}}}}\n' for n in range(200))
    project.write("items.jsonl", items)
    project.cli("enqueue", "sites", "--file", "items.jsonl")
    project.start_daemon()
    more = wait_until(
        lambda: re.search(r"└─ … and (\d+) more", project.cli("status").stdout),
        "the status to count the running runs it does not list",
    )
    url = re.search(r"http://\S+", project.cli("open").stdout)[0]
    page = browser.new_page()
    page.goto(url)
    page.locator("#tree td.running", has_text=re.compile(r"… and \d+ more")).wait_for()
    assert page.locator("#tree tr.run").count() == 10
    assert int(more[1]) > 0
    (project.root / "hold").unlink()
    wait_until(lambda: re.search(r"└─ done +200 ", project.cli("status").stdout), "all done")
