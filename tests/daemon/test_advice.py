"""A rule's advice and runbook where a person looks: `why`, `runs show`, `status -v`, the
API's status (the tray's halt entries), the halt's and the failures' notifications."""

from __future__ import annotations

import time

import httpx
import pytest
from conftest import HttpReceiver, Project, wait_until
from pipewarden.tray.model import tray_state

ADVICE = "mount /mnt/capture, then `pipewarden retry --label 'Disk not mounted'`"
RUNBOOK = "https://wiki.example/disks"
RULES = f"""
rules:
  - match: "disk is not mounted"
    group: terminal
    label: Disk not mounted
    advice: "{ADVICE}"
    runbook: {RUNBOOK}
halts:
  - {{when: same_label, channels: [sms], count: 2, within: 1h}}
"""
WORKER = """
def send(data):
    raise RuntimeError("capture disk is not mounted")
"""


def failed_with_advice(project: Project, http_receiver: HttpReceiver) -> None:
    project.write("sender.py", WORKER)
    project.write("advice.yaml", RULES)
    project.configure(
        """
        outreach:
          stages:
            - {name: send, python: "sender:send", channel: sms, concurrency: 1}
        """,
        extra=f"notify:\n  digest_wait: 300ms\n  targets:\n    - url: '{http_receiver.url}'\n"
        "drain_grace: 5s\n",
        rules=("advice.yaml",),
    )
    for key in ("a", "b", "c"):
        project.cli("enqueue", "outreach", key)


def bodies(receiver: HttpReceiver) -> dict[str, str]:
    return {body["title"]: body["message"] for body in receiver.bodies}


def test_the_rules_advice_is_in_the_notifications_and_the_daemons_status(
    project: Project, http_receiver: HttpReceiver
):
    failed_with_advice(project, http_receiver)
    project.start_daemon()
    wait_until(lambda: "pipewarden: sms halted" in http_receiver.titles(), "the halt")
    halt = bodies(http_receiver)["pipewarden: sms halted"]
    assert f"advice:  {ADVICE}\nrunbook: {RUNBOOK}" in halt
    digest = wait_until(
        lambda: next((m for t, m in bodies(http_receiver).items() if "failure" in t), None),
        "the failures' digest",
    )
    last = "  last error: RuntimeError: capture disk is not mounted"
    assert digest.endswith(f"{last}\n  advice:  {ADVICE}\n  runbook: {RUNBOOK}")

    token = (project.state_dir / "api.token").read_text().strip()
    snapshot = httpx.get(
        f"http://127.0.0.1:{project.api_port}/api/status",
        headers={"Authorization": f"Bearer {token}"}, timeout=10,
    ).json()  # fmt: skip
    (hold,) = snapshot["holds"]
    assert (hold["advice"], hold["runbook"]) == (ADVICE, RUNBOOK)
    assert snapshot["advice"] == {"Disk not mounted": {"advice": ADVICE, "runbook": RUNBOOK}}
    # the tray's halt entry, from that snapshot: the advice under it, the runbook a click away
    (halts,) = [entry for entry in tray_state(snapshot).menu if entry.text == "Halts"]
    since = time.strftime("%H:%M", time.localtime(hold["created_at"]))
    assert [(e.text, e.action) for e in halts.children] == [
        (f"sms — 2× Disk not mounted since {since}", "clear:sms"),
        (f"    {ADVICE}", None),
        (f"    runbook: {RUNBOOK}", f"runbook:{RUNBOOK}"),
    ]
    assert tray_state(snapshot).halt_notes == (f"{hold['reason']} — {ADVICE} — {RUNBOOK}",)


def test_why_runs_show_and_status_v_say_what_to_do(project: Project, http_receiver: HttpReceiver):
    failed_with_advice(project, http_receiver)
    project.cli("run", "--until-idle")
    why = project.cli("why", "a").stdout
    assert (
        f"what to do about 'Disk not mounted':\n  advice:  {ADVICE}\n  runbook: {RUNBOOK}\n" in why
    )
    (run, *_) = project.runs("a")
    shown = project.cli("runs", "show", run.id[:8]).stdout
    assert shown.endswith(f"\nadvice:  {ADVICE}\nrunbook: {RUNBOOK}\n")
    status = project.cli("status", "-v").stdout
    assert f"what the rules advise:\n  Disk not mounted\n    advice:  {ADVICE}\n" in status
    assert "what the rules advise" not in project.cli("status").stdout


@pytest.mark.parametrize(
    ("error", "label", "advised"),
    [
        ("Error: EACCES: permission denied, mkdir '/run/media/store/shots'", "Permission denied",
         "pipewarden retry --label 'Permission denied'"),
        ("browserType.launchPersistentContext: Target page, context or browser has been closed",
         "Browser launch conflict", "its own userDataDir"),
        ("Contact opted out of SMS", "Opted out", "never contact them again"),
    ],
)  # fmt: skip
def test_the_shipped_rules_say_what_to_do_where_the_fix_is_known(
    project: Project, error: str, label: str, advised: str
):
    project.configure("p:\n  stages:\n    - {name: s, command: ['true']}\n")
    shown = project.cli("rules", "test", error).stdout
    assert label in shown and advised in shown, shown


def test_rules_read_for_their_advice_give_the_same_advice_and_never_classify(project: Project):
    from pipewarden.finds import advice_by_label
    from pipewarden.rules import load_rules

    path = project.write("advice.yaml", RULES)
    full = load_rules([path], project.root)
    advice_only = load_rules([path], project.root, lint=False, patterns=False)

    assert advice_by_label(advice_only) == advice_by_label(full) != {}
    assert [r.id for r in advice_only.rules] == [r.id for r in full.rules]
    with pytest.raises(RuntimeError, match="cannot classify"):
        advice_only.rules[0].pattern.search("capture disk is not mounted", 1.0)
