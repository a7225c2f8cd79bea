"""The CLI as a user types it: enqueue, status, runs tail/show, clear errors, exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import REPO, Project

CONFIG = """
sites:
  stages:
    - {name: find, python: "steps:find"}
    - {name: capture, python: "steps:capture", retry: {max_attempts: 1}}
"""
STEPS = """
def find(data):
    if data.get("social"):
        raise ValueError("Social media platform")

def capture(data):
    if data.get("locked"):
        raise RuntimeError("EACCES: permission denied")
"""


def prepared(project: Project) -> Project:
    project.write("steps.py", STEPS)
    project.configure(CONFIG)
    return project


def test_enqueue_reports_what_was_new(project: Project):
    prepared(project)
    project.write("items.jsonl", '{"key": "a"}\n\n# a comment\n{"key": "b", "data": {"n": 1}}\n')
    assert project.cli("enqueue", "sites", "--file", "items.jsonl").stdout == (
        "enqueued 2 new item(s) into sites/find\n"
    )
    again = project.cli("enqueue", "sites", "--file", "items.jsonl", "--json")
    assert json.loads(again.stdout) == {
        "pipeline": "sites", "new": [], "restarted": [], "unchanged": ["a", "b"], "held": [],
        "data_replaced": [],
    }  # fmt: skip


def test_enqueue_mistakes_are_one_line_with_exit_2(project: Project):
    prepared(project)
    bad_data = project.cli("enqueue", "sites", "a", "--data", "{nope", expect=2)
    assert bad_data.stderr.startswith("pipewarden: --data is not valid JSON")
    project.write("items.jsonl", '{"key": "a"}\n{"key": 7}\n')
    bad_file = project.cli("enqueue", "sites", "--file", "items.jsonl", expect=2)
    assert bad_file.stderr == (
        'pipewarden: items.jsonl:2:1: each line must be {"key": "...", "data": {...}}\n'
    )
    unknown = project.cli("enqueue", "nosuch", "a", expect=2)
    assert "no pipeline named 'nosuch' — known pipelines: sites" in unknown.stderr
    for done in (bad_data, bad_file, unknown):
        assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1


def test_status_and_runs_after_a_run(project: Project):
    prepared(project)
    for key, data in [("ok", "{}"), ("fb", '{"social": true}'), ("locked", '{"locked": true}')]:
        project.cli("enqueue", "sites", key, "--data", data)
    assert project.start_daemon("--until-idle").wait(30) == 0

    status = project.cli("status").stdout.splitlines()
    assert status[1].startswith("rules: version ") and "(41 rules), loaded 20" in status[1]
    assert status[3:] == [
        "sites                                              Total     Δ24h      Δ1h",
        "─" * 74,
        "▸ find                                                 1       +1       +1",
        "  └─ ignored                                           1       +1       +1",
        "     └─ Social media                                   1       +1       +1",
        "▸ capture                                              2       +2       +2",
        "  ├─ done                                              1       +1       +1",
        "  └─ failed                                            1       +1       +1",
        "     └─ Retries exhausted                              1       +1       +1",
        "        └─ Permission denied                           1       +1       +1",
    ]
    as_json = json.loads(project.cli("status", "--json").stdout)
    capture = as_json["pipelines"][0]["stages"][1]
    assert [(s["state"], s["total"]) for s in capture["states"]] == [("done", 1), ("failed", 1)]
    (retriable,) = capture["states"][1]["groups"]
    assert [(r["label"], r["total"]) for r in retriable["labels"]] == [("Permission denied", 1)]

    tail = project.cli("runs", "tail", "--status", "failed").stdout.splitlines()
    assert len(tail) == 2 and "[Permission denied] RuntimeError: EACCES" in tail[1]
    runs = json.loads(project.cli("runs", "tail", "--json").stdout)
    assert len(runs) == 5 and {r["status"] for r in runs} == {"ok", "ignored", "failed"}

    failed = next(r for r in runs if r["status"] == "failed")
    shown = project.cli("runs", "show", failed["id"][:8]).stdout
    assert f"id                {failed['id']}" in shown
    assert "rule_id           " in shown and "traceback:" in shown
    assert "RuntimeError: EACCES: permission denied" in shown


def test_runs_show_lists_the_candidates_of_an_ambiguous_prefix(project: Project):
    prepared(project)
    store = project.store()
    store.enqueue("sites", "find", [("a", {})], 1.0)
    conn = store.db.connection()
    for run_id in ("abcd1111", "abcd2222"):
        conn.execute(
            "INSERT INTO runs (id, pipeline, stage, item_id, item_key, attempt, status, started_at)"
            " VALUES (?, 'sites', 'find', 1, 'a', 1, 'ok', 1)",
            (run_id,),
        )
    conn.commit()
    store.close()
    done = project.cli("runs", "show", "abcd", expect=2)
    assert "'abcd' matches 2 runs; give more characters:" in done.stderr
    assert "abcd1111" in done.stderr and "abcd2222" in done.stderr
    missing = project.cli("runs", "show", "ffff", expect=1)
    assert "no run with id starting 'ffff'" in missing.stderr


def test_the_demo_shows_runs_retries_a_watchdog_kill_and_the_tree(tmp_path: Path):
    for name in ("config.example.yaml", "rules", "examples"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name)
        else:
            shutil.copy(source, tmp_path / name)
    project = Project(tmp_path)
    project.config_path = tmp_path / "config.example.yaml"
    with project.config_path.open("a") as config:  # its own port, whatever else runs here
        config.write(f"api: {{port: {project.api_port}}}\n")
    project.state_dir = tmp_path / ".pipewarden-example"
    project.cli("enqueue", "sites", "--file", "examples/sites.jsonl")
    project.cli("enqueue", "outreach", "--file", "examples/outreach.jsonl")
    assert project.start_daemon("--until-idle").wait(90) == 0

    statuses = {(r.item_key, r.stage, r.attempt): r.status for r in project.runs()}
    assert statuses[("cafe-oslo.no", "capture", 1)] == "timed_out"  # the hung capture, killed
    assert statuses[("florist-lyon.fr", "capture", 2)] == "ok"  # rate limited once, then retried
    assert project.item("sites", "garage-porto.pt").state == "failed"
    assert project.item("sites", "facebook.com/joes-diner").state == "ignored"
    assert project.item("outreach", "cafe-oslo.no/sms").state == "deferred"
    assert project.item("outreach", "toy-store.dk/form").state == "queued"  # behind the halt
    status = project.cli("status").stdout
    assert "     ├─ Retries exhausted" in status and "     │  └─ Permission denied" in status
    assert "halted: form — 3× Cloudflare blocked within 10m since " in status


def test_items_at_a_stage_no_longer_in_the_config_stay_visible(project: Project):
    prepared(project)
    store = project.store()
    store.enqueue("sites", "retired", [("a", {})], 1.0)
    store.enqueue("gone", "x", [("b", {})], 1.0)
    store.close()
    lines = project.cli("status").stdout.splitlines()
    assert any(line.startswith("▸ retired (not in the config)   ") for line in lines)
    assert any(line.startswith("gone (not in the config)   ") for line in lines)
