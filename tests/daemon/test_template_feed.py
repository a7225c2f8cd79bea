"""Unmatched failures mined into templates by the running daemon, kept across restarts."""

from __future__ import annotations

import difflib
import json
import re
import signal
import time
from typing import Any

from conftest import Project, wait_until

WORKER = """
def work(data, ctx):
    if data.get("n") is not None:
        raise RuntimeError(
            f"Widget {data['n']} refused by https://shop.example.com/w/{data['n']} after "
            f"{data['n'] * 7}ms\\nCall log:\\n  - attempt {data['n']}"
        )
    raise RuntimeError("HTTP 404 Not Found. Cannot capture")  # a shipped rule knows this one
"""


def start(project: Project, rules: tuple[str, ...] = ()) -> None:
    project.write("worker.py", WORKER)
    project.configure(
        "sites:\n  stages:\n    - {name: work, python: 'worker:work', retry: {max_attempts: 1}}\n",
        rules=rules,
    )
    started(project)


def started(project: Project) -> None:
    project.start_daemon()
    # `status` answers from the store before the API is up: wait for the API itself
    wait_until(lambda: "API and web page on" in project.daemon_log(), "the daemon's API")


def enqueue(project: Project, keys: range) -> None:
    lines = "".join(f'{{"key": "k{n}", "data": {{"n": {n}}}}}\n' for n in keys)
    project.write("items.jsonl", lines + '{"key": "known"}\n')
    project.cli("enqueue", "sites", "--file", "items.jsonl")


def templates(project: Project) -> list[tuple]:
    store = project.store()
    try:
        rows = store.db.execute_sql("SELECT id, template, count FROM templates").fetchall()
        members = store.db.execute_sql(
            "SELECT template_id, count(*) FROM template_runs GROUP BY template_id"
        ).fetchall()
        return [(*row, dict(members).get(row[0], 0)) for row in rows]
    finally:
        store.close()


def failed(project: Project, count: int) -> bool:
    return sum(r.status == "failed" for r in project.runs()) >= count


def test_unmatched_failures_become_one_template_that_survives_a_restart(project: Project):
    start(project)
    enqueue(project, range(1, 13))
    wait_until(lambda: failed(project, 13), "13 failed runs")
    wait_until(lambda: templates(project) and templates(project)[0][2] == 12, "12 in a template")
    ((template_id, template, count, members),) = templates(project)
    # only the unmatched ones: the 404 a shipped rule labels is not a template
    assert template == "RuntimeError: Widget <*> refused by <*> after <*>"
    assert count == 12 and members == 12
    daemon = project._daemons[-1]
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(20)
    started(project)
    enqueue(project, range(20, 25))
    wait_until(lambda: failed(project, 18), "5 more failed runs")
    wait_until(lambda: templates(project)[0][2] == 17, "the same template, 17 in it")
    assert templates(project) == [(template_id, template, 17, 17)]


MINE = """\
# Our own rules. Keep the comments!
pipelines: [sites]

rules:
  # Sites that block us.
  - match: "cloudflare"   # the wall
    group: terminal
    label: Cloudflare wall
    category: site

  - {match: "quota exceeded", group: retriable, label: Quota, category: api}
# the end
"""


def proposals(project: Project, *args: str) -> Any:
    return json.loads(project.cli("proposals", *args, "--json").stdout)


def stored_proposals(project: Project) -> list[tuple]:
    """The proposals table as it is (listing them would refresh it first)."""
    store = project.store()
    try:
        return store.db.execute_sql("SELECT template, state FROM proposals").fetchall()
    finally:
        store.close()


def test_the_daemon_proposes_on_its_own_without_anyone_listing(project: Project):
    start(project)
    enqueue(project, range(1, 7))
    wait_until(lambda: templates(project) and templates(project)[0][2] == 6, "6 in a template")
    wait_until(lambda: stored_proposals(project), "a proposal made by the daemon", timeout=15)
    assert stored_proposals(project) == [
        ("RuntimeError: Widget <*> refused by <*> after <*>", "pending")
    ]
    assert "rule(s) proposed" in project.daemon_log()


def test_a_frequent_template_is_proposed_and_approving_it_labels_the_next_failure(
    project: Project,
):
    mine = project.write("rules/mine.yaml", MINE)
    start(project, rules=(str(mine),))
    enqueue(project, range(1, 7))
    wait_until(lambda: templates(project) and templates(project)[0][2] == 6, "6 in a template")
    (proposal,) = proposals(project)
    assert proposal["state"] == "pending"
    assert proposal["template"] == "RuntimeError: Widget <*> refused by <*> after <*>"
    assert proposal["label"] == "Widget refused by after"
    assert (proposal["group"], proposal["category"]) == ("retriable", "infrastructure")  # "refused"
    assert len(proposal["examples"]) == 3
    shown = proposals(project, "show", str(proposal["id"]))
    assert shown["counts"] == {"all": 6, "last_24h": 6, "per_stage": {"sites/work": 6}}
    # the regex matches every member, as the classifier reads them (whole error texts)
    members = [r.error for r in project.runs() if r.label == "Unknown"]
    assert len(members) == 6
    assert all(re.search(proposal["pattern"], error, re.IGNORECASE) for error in members)

    done = project.cli("proposals", "approve", str(proposal["id"]), "--label", "Widget refused")
    assert f"{mine.resolve()}: added" in done.stdout
    # the backtest of the rules with it, over the week's stored failures, before the write
    assert "6 runs from Unknown → Widget refused (retriable)" in done.stdout.splitlines()
    after = mine.read_text()
    added = [line for line in difflib.ndiff(MINE.splitlines(), after.splitlines())
             if line[:2] != "  "]  # fmt: skip
    assert added == [
        f"+   - match: '{proposal['pattern']}'",
        "+     group: retriable",
        "+     label: Widget refused",
        "+     category: infrastructure",
    ], after
    assert proposals(project, "show", str(proposal["id"]))["state"] == "approved"

    def labelled() -> bool:
        enqueue(project, range(100 + len(project.runs()), 101 + len(project.runs())))
        return any(r.label == "Widget refused" for r in project.runs())

    wait_until(labelled, "the next such failure labelled by the new rule", timeout=1.5)
    again = project.cli("proposals", "approve", str(proposal["id"]), expect=2)
    assert again.stderr.startswith(f"pipewarden: proposal {proposal['id']} is approved")


def test_a_proposal_regex_catches_its_template_and_no_other(project: Project):
    from pipewarden import proposals as module

    store = project.store()
    now = time.time()
    texts = {
        1: [f"Widget {n} refused by https://a.example/{n}" for n in range(6)],
        2: [f"Widget {n} refused by https://a.example/{n} twice" for n in range(6)],
    }
    store.db.execute_sql("INSERT INTO items (id, pipeline, key, stage, state, created_at,"
                         " updated_at) VALUES (1, 'p', 'k', 's', 'failed', 0, 0)")  # fmt: skip
    for template_id, members in texts.items():
        store.db.execute_sql(
            "INSERT INTO templates VALUES (?, ?, 6, ?, ?)",
            (template_id, "<*>" if template_id == 1 else "x", now, now),
        )
        for n, text in enumerate(members):
            run_id = f"{template_id}-{n}"
            store.db.execute_sql(
                "INSERT INTO runs (id, pipeline, stage, item_id, item_key, attempt, status,"
                " started_at, error) VALUES (?, 'p', 's', 1, 'k', 1, 'failed', ?, ?)",
                (run_id, now, text),
            )  # fmt: skip
            store.db.execute_sql(
                "INSERT INTO template_runs VALUES (?, ?, 'p', 's', ?)", (run_id, template_id, now)
            )
    # template 1 as the miner wrote it: its regex would also catch template 2's texts
    store.db.execute_sql("UPDATE templates SET template = 'Widget <*> refused by <*>' WHERE id = 1")
    store.db.execute_sql(
        "UPDATE templates SET template = 'Widget <*> refused by <*> twice' WHERE id = 2"
    )
    module.refresh(store, now)
    found = {p.template_id: p for p in module.listed(store)}
    store.close()
    assert set(found) == {2}  # 1 would catch 2's members too: not proposed
    pattern = re.compile(found[2].pattern, re.IGNORECASE)
    assert all(pattern.search(text) for text in texts[2])
    assert not any(pattern.search(text) for text in texts[1])


def test_reject_is_recorded_with_who_and_when(project: Project):
    start(project)
    enqueue(project, range(1, 7))
    wait_until(lambda: templates(project) and templates(project)[0][2] == 6, "6 in a template")
    (proposal,) = proposals(project)
    done = project.cli("proposals", "reject", str(proposal["id"]))
    assert done.stdout == f"proposal #{proposal['id']} rejected\n"
    (rejected,) = proposals(project, "--state", "rejected")
    assert rejected["decided_by"].endswith("(cli)") and rejected["decided_at"] > 0
    missing = project.cli("proposals", "show", "999", expect=2)
    assert missing.stderr == "pipewarden: no proposal 999 — `pipewarden proposals` lists them\n"


def test_the_group_and_category_come_from_the_words():
    from pipewarden.proposals import suggested_kind, suggested_label

    assert suggested_kind("HTTPError: <*> Too Many Requests for <*>") == ("retriable", "rate_limit")
    assert suggested_kind("status <*> rate limited") == ("retriable", "rate_limit")
    assert suggested_kind("Your account has been suspended <*>") == ("terminal", "account")
    assert suggested_kind("user <*> banned") == ("terminal", "account")
    assert suggested_kind("page.goto: Timeout <*> exceeded") == ("retriable", "timeout")
    assert suggested_kind("frobnicated the <*>") == ("retriable", "unclassified")
    assert suggested_label("sqlite3.OperationalError: database is locked") == "Database is locked"


def test_proposals_on_the_api_validated_like_every_route(project: Project):
    import httpx

    mine = project.write("rules/mine.yaml", MINE)
    start(project, rules=(str(mine),))
    token = (project.state_dir / "api.token").read_text().strip()
    base, headers = f"http://127.0.0.1:{project.api_port}", {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=headers, timeout=10) as api:
        enqueue(project, range(1, 7))
        wait_until(lambda: templates(project) and templates(project)[0][2] == 6, "6 in a template")
        (listed,) = wait_until(lambda: api.get("/api/proposals?state=pending").json(), "a proposal")
        assert listed["counts"]["all"] == 6 and listed["state"] == "pending"
        url = f"/api/proposals/{listed['id']}"
        assert api.get(url).json()["pattern"] == listed["pattern"]
        bad = api.post(f"{url}/approve", json={"group": "sometimes"})
        assert bad.status_code == 400 and "'group' must be one of" in bad.json()["error"]
        assert api.post(f"{url}/approve", json={"colour": "red"}).status_code == 400
        assert api.get("/api/proposals/abc").status_code == 400
        done = api.post(
            f"{url}/approve", json={"label": "Widget refused", "file": "rules/mine.yaml"}
        )
        assert done.status_code == 200, done.text
        assert done.json()["added"][2] == "    label: Widget refused"
        assert api.get(url).json()["decided_by"].endswith(")")  # who, as the API tells it
        again = api.post(f"{url}/reject", json={})
        assert again.status_code == 400 and "is approved (by " in again.json()["error"]
