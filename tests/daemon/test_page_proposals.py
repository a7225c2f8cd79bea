"""The page's review panel of proposed rules (issue 15), in Debian's Chromium through
Playwright: examples, counts and the regex shown; Edit, then Approve writes the rule into a
commented rules file with every comment kept, and the daemon labels the next such failure."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest
from conftest import Project, wait_until
from test_page import CHROMIUM, browser  # noqa: F401 (the fixture)
from test_page_console import opened, sign_in_link
from test_template_feed import MINE, enqueue, proposals, start, templates

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)"
)


def test_approve_from_the_page_writes_the_edited_rule_keeping_every_comment(
    project: Project,
    browser,  # noqa: F811
):
    mine = project.write("rules/mine.yaml", MINE)
    start(project, rules=(str(mine),))
    enqueue(project, range(1, 7))
    wait_until(lambda: templates(project) and templates(project)[0][2] == 6, "6 in a template")
    page = opened(browser, sign_in_link(project))
    card = page.locator("#proposals .proposal")
    card.wait_for()
    assert (
        "RuntimeError: Widget 6 refused by https://shop.example.com/w/6 after 42ms"
        in card.inner_text()
    )
    assert "6 in all, 6 in the last 24 h (sites/work 6)" in card.inner_text()
    pattern = card.locator(".proposal-pattern").inner_text()
    assert pattern.startswith(r"RuntimeError:\s+Widget\s+\S+?\s+refused")

    card.get_by_role("button", name="Edit").click()
    card.locator("input[name=label]").fill("Widget refused")
    card.get_by_role("button", name="Approve").click()
    page.locator("#confirm", has_text='write the rule "Widget refused"').wait_for()
    page.locator("#confirm-yes").click()
    page.locator("#notice", has_text=f'added "Widget refused" to {mine.resolve()}').wait_for()
    assert (
        "6 runs from Unknown → Widget refused (retriable)" in page.locator("#notice").inner_text()
    )
    added = [line for line in difflib.ndiff(MINE.splitlines(), mine.read_text().splitlines())
             if line[:2] != "  "]  # fmt: skip
    assert added == [
        f"+   - match: '{pattern}'",
        "+     group: retriable",
        "+     label: Widget refused",
        "+     category: infrastructure",
    ]
    page.locator("#proposals", has_text="none").wait_for()  # nothing left pending

    def labelled() -> bool:
        enqueue(project, range(100 + len(project.runs()), 101 + len(project.runs())))
        return any(r.label == "Widget refused" for r in project.runs())

    wait_until(labelled, "the next such failure labelled by the new rule", timeout=1.5)
    (approved,) = proposals(project, "--state", "approved")
    assert approved["label"] == "Widget refused" and approved["decided_by"]
