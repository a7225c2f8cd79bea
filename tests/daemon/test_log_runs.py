"""`log_runs`: which runs get a line in the daemon's log (failures by default)."""

from __future__ import annotations

import json

from conftest import Project

WORKER = """
def work(data):
    if data.get("fail"):
        raise RuntimeError("HTTP 404 Not Found. Cannot capture")
    return None
"""


def run_two_items(project: Project, setting: str | None) -> str:
    """One ok item and one failed item through a daemon; returns its log."""
    project.write("worker.py", WORKER)
    extra = f"drain_grace: 5s\nlog_runs: {setting}" if setting else ""
    stage = "{name: work, python: 'worker:work', retry: {max_attempts: 1}}"
    project.configure(f"sites:\n  stages:\n    - {stage}\n", extra=extra)
    project.cli("enqueue", "sites", "good")
    project.cli("enqueue", "sites", "bad", "--data", json.dumps({"fail": True}))
    assert project.start_daemon("--until-idle").wait(60) == 0
    return project.daemon_log()


def test_by_default_only_the_runs_that_did_not_succeed_are_logged(project: Project):
    log = run_two_items(project, None)
    assert "sites/work good#1" not in log
    assert "sites/work bad#1" in log and "Permanent HTTP error" in log


def test_log_runs_info_logs_every_run(project: Project):
    log = run_two_items(project, "info")
    assert "sites/work good#1" in log and "sites/work bad#1" in log


def test_log_runs_off_logs_no_run_and_the_store_still_has_them(project: Project):
    log = run_two_items(project, "off")
    assert "good#1" not in log and "bad#1" not in log
    assert sorted(run.status for run in project.runs()) == ["failed", "ok"]


def test_a_bad_log_runs_value_is_one_line_naming_the_choices(project: Project):
    project.configure("p:\n  stages:\n    - {name: s, command: [x]}\n", extra="log_runs: loud")
    done = project.cli("doctor", expect=None)
    assert (
        "config.yaml:2:11: log_runs must be one of info, failures, off, not 'loud'" in done.stdout
    )
    assert "Traceback" not in done.stdout + done.stderr
