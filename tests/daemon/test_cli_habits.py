"""The CLI's habits operators bring from systemctl, journalctl and the like: --version,
options before the command, a group's own help."""

from __future__ import annotations

import json

from conftest import Project
from pipewarden import __version__

CONFIG = """
sites:
  stages:
    - {name: find, python: "steps:find"}
"""


def test_version_is_printed_and_exits_0(project: Project):
    done = project.cli("--version")
    assert done.stdout == f"pipewarden {__version__}\n"


def test_global_options_are_taken_before_the_command(project: Project):
    project.write("steps.py", "def find(data):\n    return None\n")
    project.configure(CONFIG)
    elsewhere = project.root / "elsewhere.yaml"
    project.config_path.rename(elsewhere)
    state = project.root / "state"
    before = project.cli("--config", str(elsewhere), "--state-dir", str(state), "status")
    assert f"state {state}" in before.stdout
    after = project.cli("status", "--config", str(elsewhere), "--state-dir", str(state))
    assert before.stdout == after.stdout
    # given in both places, the one after the command wins, as it is the nearer
    both = project.cli("--state-dir", "/nowhere", "status", "--config", str(elsewhere),
                       "--state-dir", str(state))  # fmt: skip
    assert f"state {state}" in both.stdout


def test_a_command_group_alone_prints_its_own_help(project: Project):
    for group, commands in (("runs", ("tail", "show")), ("rules", ("check", "test", "packs"))):
        done = project.cli(group, expect=2)
        assert done.stdout.startswith(f"usage: pipewarden {group} [-h] COMMAND ...")
        assert all(f"    {name} " in done.stdout for name in commands)


def configured(project: Project) -> Project:
    project.write("steps.py", "def find(data):\n    return None\n")
    project.configure(CONFIG.replace('"steps:find"}', '"steps:find", channel: web}'))
    return project


def test_typos_name_the_known_values_and_exit_2(project: Project):
    configured(project)
    project.cli("enqueue", "sites", "a")
    paused = project.cli("pause", "--channel", "nosuch", expect=2)
    assert paused.stderr == (
        "pipewarden: no channel 'nosuch' is known — known channels: web;"
        " to name one no item has had yet, add --force\n"
    )
    assert "paused channel later" in project.cli("pause", "--channel", "later", "--force").stdout
    assert "resumed channel later" in project.cli("resume", "--channel", "later").stdout
    project.cli("resume", "--channel", "nosuch", expect=2)
    cleared = project.cli("halts", "clear", "nosuch", expect=2)
    assert cleared.stderr == "pipewarden: no active halt on 'nosuch' — halted now: none yet\n"
    tail = project.cli("runs", "tail", "--status", "bogus", expect=2)
    assert "no status 'bogus' — known statuses: running, ok, failed, timed_out" in tail.stderr


def test_typos_are_refused_the_same_through_a_running_daemon(project: Project):
    configured(project)
    project.start_daemon()
    paused = project.cli("pause", "--channel", "nosuch", expect=2)
    assert "no channel 'nosuch' is known — known channels: web;" in paused.stderr
    assert project.cli("halts", "clear", "web", expect=2).stderr == (
        "pipewarden: no active halt on 'web' — halted now: none yet\n"
    )
    forced = project.cli("pause", "--channel", "later", "--force")
    assert (
        forced.stdout
        == "paused channel later: its items stay queued; the running daemon has been told\n"
    )


def test_check_says_ok_warning_or_critical_in_one_line_and_its_exit_code(project: Project):
    configured(project)
    down = project.cli("check", expect=2)
    assert down.stdout == "pipewarden CRITICAL: daemon not running\n"
    daemon = project.start_daemon()
    ok = project.cli("check", expect=0)
    assert ok.stdout.startswith(f"pipewarden OK: daemon running (pid {daemon.pid}), 1 pipeline(s)")
    project.cli("pause", "--pipeline", "sites")
    paused = project.cli("check", expect=1)
    assert paused.stdout == "pipewarden WARNING: pipeline sites paused\n"
    as_json = json.loads(project.cli("check", "--json", expect=1).stdout)
    assert as_json["status"] == "warning" and as_json["code"] == 1
    assert as_json["problems"] == [{"level": "warning", "what": "pipeline sites paused"}]
    daemon.terminate()
    daemon.wait(20)
    stopped = project.cli("check", expect=2)
    assert stopped.stdout == "pipewarden CRITICAL: daemon not running; pipeline sites paused\n"


def snapshot_with(states: list[dict], queue: dict | None = None, runs_1h: int = 0) -> dict:
    stage = {"name": "find", "states": states, "queue": queue,
             "telemetry": {"1h": {"runs": runs_1h}}}  # fmt: skip
    return {"daemon": {"running": True, "pid": 1, "store_fault": None}, "holds": [],
            "rules": None, "pipelines": [{"name": "sites", "stages": [stage]}]}  # fmt: skip


def test_check_finds_failures_rising_and_a_growing_backlog():
    from pipewarden.check import verdict

    rising = verdict(snapshot_with([{"state": "failed", "total": 40, "d24": 30, "d1": 8}]))
    assert rising["line"] == (
        "pipewarden CRITICAL: sites/find failures rising (8 in the last hour, 1.0/h before)"
    )
    steady = verdict(snapshot_with([{"state": "failed", "total": 400, "d24": 240, "d1": 10}]))
    assert steady["code"] == 0
    queue = {"queued": 50, "ready": 50, "waiting": []}
    growing = verdict(snapshot_with([{"state": "queued", "total": 50, "d24": 50, "d1": 30}],
                                    queue, runs_1h=12))  # fmt: skip
    assert growing["line"] == (
        "pipewarden WARNING: sites/find backlog growing (30 queued in the last hour, 12 run)"
    )
    keeping_up = snapshot_with([{"state": "queued", "total": 50, "d24": 50, "d1": 30}], queue, 40)
    assert verdict(keeping_up)["code"] == 0
