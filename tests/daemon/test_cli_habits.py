"""The CLI's habits operators bring from systemctl, journalctl and the like: --version,
options before the command, a group's own help."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from conftest import Followed, Project, free_port, wait_until
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


FOLLOWED = """
sites:
  stages:
    - {name: find, python: "steps:find"}
    - {name: capture, python: "steps:capture", retry: {max_attempts: 1}}
"""
FOLLOWED_STEPS = """
def find(data):
    return {"found": True}

def capture(data):
    raise RuntimeError("EACCES: permission denied, open '/run/media/store/shots/x.png'")
"""


def follow_a_run_that_starts_after_it(project: Project) -> None:
    followed = Followed(project, "--since", "1h")
    try:
        wait_until(lambda: followed.lines, "the header")
        assert followed.lines == [followed.lines[0]] and followed.lines[0].startswith("RUN ")
        project.cli("enqueue", "sites", "dentist-austin.com/emergency-care")
        wait_until(lambda: len(followed.lines) >= 3, "both runs of the item")
    finally:
        code = followed.stop()
    find, capture = followed.lines[1:3]
    assert "sites/find" in find and "dentist-austin.com/emergency-care" in find and " ok " in find
    assert capture.endswith(
        "[Permission denied] RuntimeError: EACCES: permission denied,"
        " open '/run/media/store/shots/x.png'"
    )  # a pipe: nothing is cut
    assert code == 0


def test_runs_tail_follow_gets_a_run_from_the_daemons_events(project: Project):
    project.write("steps.py", FOLLOWED_STEPS)
    project.configure(FOLLOWED)
    project.start_daemon()
    follow_a_run_that_starts_after_it(project)


def test_runs_that_end_before_the_event_stream_connects_are_shown_first(project: Project):
    from pipewarden.client import DaemonApi
    from pipewarden.config import load_config
    from pipewarden.runfeed import RunFilter, ended_since, follow_events

    project.write("steps.py", FOLLOWED_STEPS)
    project.configure(FOLLOWED)
    project.start_daemon()
    wait_until(lambda: (project.state_dir / "api.token").exists(), "the API's token")
    daemon = DaemonApi(load_config(project.config_path))
    store = project.store()
    read_at, running = time.time(), {run.id for run in store.running_runs()}
    # `runs tail -f` has printed what it read; both runs end before it is subscribed.
    project.cli("enqueue", "sites", "k")
    wait_until(lambda: project.item("sites", "k").state == "failed", "both runs to end")
    feed = follow_events(daemon, RunFilter(), lambda: ended_since(store, RunFilter(), read_at,
                                                                  running))  # fmt: skip
    try:
        assert [(run.stage, run.status) for run in (next(feed), next(feed))] == [
            ("find", "ok"), ("capture", "failed")]  # fmt: skip
    finally:
        feed.close()
        store.close()


def test_runs_tail_follow_polls_the_store_where_no_api_streams_events(project: Project):
    project.write("steps.py", FOLLOWED_STEPS)
    project.configure(FOLLOWED, extra="api: {enabled: false}\ndrain_grace: 5s")
    project.config_path.write_text(
        project.config_path.read_text().replace(f"api: {{port: {project.api_port}}}\n", "")
    )
    project.start_daemon()
    follow_a_run_that_starts_after_it(project)


def test_runs_tail_fits_the_terminal_and_cuts_nothing_in_a_pipe(project: Project):
    project.write("steps.py", FOLLOWED_STEPS)
    project.configure(FOLLOWED)
    project.cli("enqueue", "sites", "dentist-austin.com/emergency-care")
    assert project.start_daemon("--until-idle").wait(30) == 0
    piped = project.cli("runs", "tail").stdout.splitlines()
    assert "dentist-austin.com/emergency-care" in piped[1]
    assert piped[2].endswith("open '/run/media/store/shots/x.png'")
    for columns in (72, 100, 140):  # at 72 the key gives way too, but the line fits
        shown = tty_output(project, ["runs", "tail"], columns)
        assert all(len(line) <= columns for line in shown), shown
        assert any("[Permission denied] RuntimeError" in line for line in shown)
        key = "dentist-austin.com/emergency-care" if columns > 72 else "dentist-austin.co…"
        assert sum(key in line for line in shown) == 2, shown


def tty_output(project: Project, args: list[str], columns: int) -> list[str]:
    """What `pipewarden ARGS` prints on a terminal `columns` wide (a pty)."""
    code, shown = project.on_a_terminal(*args, columns=columns)
    assert code == 0, shown
    return shown.splitlines()


def test_a_200000_line_enqueue_through_the_daemon_leaves_health_answering(project: Project):
    project.write("steps.py", "def find(data):\n    return None\n")
    project.configure(CONFIG, extra="drain_grace: 5s\n")
    project.cli("pause", "--pipeline", "sites")  # the items wait: only the enqueue is measured
    project.write("items.jsonl", "".join(f'{{"key": "k{n}"}}\n' for n in range(200_000)))
    project.start_daemon()
    health = f"http://127.0.0.1:{project.api_port}/health"
    wait_until(lambda: _answers(health), "the API")
    # What this machine's load alone makes of an answer: on a busy host a quiet daemon's
    # /health is slow too, and the bound (0.5 s, as the issue asks, on a quiet one) grows.
    quiet = max(_answer_time(health) for _ in range(20))
    enqueue = subprocess.Popen(
        [sys.executable, "-m", "pipewarden", "enqueue", "sites", "--file", "items.jsonl"],
        cwd=project.root, env=project.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    slowest = 0.0
    while enqueue.poll() is None:
        slowest = max(slowest, _answer_time(health))
    out, err = enqueue.communicate()
    assert enqueue.returncode == 0, err
    assert out == "enqueued 200000 new item(s) into sites/find\n"
    bound = max(0.5, 4 * quiet)
    assert slowest < bound, f"/health took {slowest:.2f} s in the enqueue, {quiet:.2f} s before"


def _answer_time(url: str) -> float:
    import httpx

    started = time.monotonic()
    assert httpx.get(url, timeout=5).status_code == 200
    return time.monotonic() - started


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_every_bulk_action_has_a_dry_run_listing_the_first_20_and_a_count(project: Project):
    project.write(
        "steps.py", 'def find(data):\n    raise RuntimeError("EACCES: permission denied")\n'
    )
    project.configure(CONFIG.replace('"steps:find"}', '"steps:find", retry: {max_attempts: 1}}'))
    project.write("items.jsonl", "".join(f'{{"key": "k{n:02}"}}\n' for n in range(25)))
    new = project.cli("enqueue", "sites", "--file", "items.jsonl", "--dry-run").stdout
    assert new.splitlines()[:3] == [
        "would enqueue 25 new item(s) into sites/find:",
        "  k00",
        "  k01",
    ]
    assert new.splitlines()[-1] == "  ... and 5 more"
    project.cli("enqueue", "sites", "--file", "items.jsonl")
    assert project.start_daemon("--until-idle").wait(30) == 0

    again = project.cli("enqueue", "sites", "--file", "items.jsonl", "--dry-run").stdout
    assert again.startswith("would enqueue 0 new item(s) into sites/find\n25 item(s) are known:")
    assert "  k00 (failed)\n" in again
    retry = project.cli("retry", "--label", "Permission denied", "--dry-run").stdout.splitlines()
    assert retry[0] == ("would requeue 25 failed or retrying item(s) labelled 'Permission denied':")
    assert retry[1] == "  sites/k00 (failed at find)" and retry[-1] == "  ... and 5 more"
    assert len(retry) == 22
    prune = project.cli("prune", "--older-than", "1s", "--dry-run").stdout
    assert prune == "would prune 0 run(s) older than 1s\n"  # each run is its item's latest
    halts = project.cli("halts", "clear", "--all", "--dry-run").stdout
    assert halts == "would clear 0 halt(s)\n"
    assert project.item("sites", "k00").state == "failed"  # nothing changed


def test_a_long_enqueue_shows_progress_on_a_terminal_and_none_in_a_pipe(project: Project):
    project.write("steps.py", "def find(data):\n    return None\n")
    project.configure(CONFIG)
    project.write("items.jsonl", "".join(f'{{"key": "k{n}"}}\n' for n in range(5000)))
    shown = "\n".join(tty_output(project, ["enqueue", "sites", "--file", "items.jsonl"], 100))
    assert "enqueue:" in shown and "item/s" in shown and "%|" in shown, shown
    assert shown.rstrip().endswith("enqueued 5000 new item(s) into sites/find")
    piped = project.cli("enqueue", "sites", "--file", "items.jsonl")
    assert piped.stderr == ""


def _failed_items(project: Project, count: int, label: str, data: dict | None = None) -> None:
    """`count` items of sites failed at find with `label`, written through the store."""
    from pipewarden.store import FinishedRun, NewRun
    from pipewarden.types import ItemState, RunStatus

    store = project.store()
    try:
        store.enqueue("sites", "find", [(f"k{n}", data or {}) for n in range(count)], 1.0)

        def new_run(item_id: int, key: str, data: dict) -> NewRun:
            return NewRun(f"run-{key}", item_id, "sites/find", f"fp-{key}", "c", None, "t")

        claimed = store.claim("sites", "find", count, 2.0, new_run)
        store.finish([
            FinishedRun(
                run_id=run.run_id, item_id=item.item_id, status=RunStatus.FAILED,
                pipeline="sites", stage="find", channel=run.channel, finished_at=3.0,
                duration_s=1.0, item_stage="find", item_state=ItemState.FAILED,
                item_data=json.dumps(item.data), item_attempt=1, item_ready_at=None,
                item_channel=run.channel, error="EACCES: permission denied", label=label,
                group_name="retriable",
            )
            for item, run in claimed
        ], {})  # fmt: skip
    finally:
        store.close()


def test_a_big_retry_shows_progress_on_a_terminal_in_chunks_through_the_daemon(
    project: Project,
):
    project.write("steps.py", "def find(data):\n    return None\n")
    project.configure(CONFIG)
    _failed_items(project, 2500, "Permission denied")
    shown = tty_output(project, ["retry", "--label", "Permission denied"], 100)
    text = "\n".join(shown)
    assert "retry:" in text and "item/s" in text and "%|" in text, text
    assert shown[-1] == (
        "requeued 2500 item(s) labelled 'Permission denied'; no daemon is running (it takes"
        " effect when one starts)"
    )
    assert project.item("sites", "k2499").state == "queued"

    project.cli("pause", "--pipeline", "sites")  # through the daemon they wait, queued
    store = project.store()
    try:  # failed again, as if they had run
        store.db.execute_sql("UPDATE items SET state = 'failed' WHERE pipeline = 'sites'")
    finally:
        store.close()
    project.start_daemon()
    piped = project.cli("retry", "--label", "Permission denied")
    assert piped.stdout.startswith("requeued 2500 item(s) labelled 'Permission denied'; the")
    assert piped.stderr == ""  # no bar in a pipe
    store = project.store()
    try:  # the audit: a line per chunk of 1,000 the daemon requeued
        details = [
            row[0]
            for row in store.db.execute_sql(
                "SELECT detail FROM audit WHERE action = 'retry' AND who LIKE '%api%' ORDER BY id"
            )
        ]
    finally:
        store.close()
    assert details == ["1,000 item(s) requeued", "1,000 item(s) requeued", "500 item(s) requeued"]


def test_a_backup_shows_progress_on_a_terminal_and_none_in_a_pipe(project: Project):
    project.write("steps.py", "def find(data):\n    return None\n")
    project.configure(CONFIG)
    _failed_items(project, 600, "Permission denied", {"page": "x" * 20_000})  # 12 MB of data
    shown = tty_output(project, ["backup", str(project.root / "copy.db")], 100)
    text = "\n".join(shown)
    # a bar, and the store's size in megabytes (a backup this small may end before a rate)
    assert "backup:" in text and "%|" in text and re.search(r"/1\d\.\dM", text), text
    assert shown[-1].endswith("copy.db (integrity check: ok)")
    piped = project.cli("backup", str(project.root / "again.db"))
    assert piped.stderr == ""


def test_starting_your_own_works_as_init_prints_it_outside_the_clone(tmp_path: Path):
    """The README's "Starting your own": init, then the commands it prints, as printed."""
    folder = tmp_path / "mine"
    env = {k: v for k, v in os.environ.items() if k != "PIPEWARDEN_CONFIG"}
    init = subprocess.run(
        [sys.executable, "-m", "pipewarden", "init", str(folder), "--port", str(free_port())],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    printed = init.stdout.split("next:\n", 1)[1].splitlines()
    commands = [shlex.split(line.split("#")[0]) for line in printed]
    assert commands[0] == ["cd", str(folder)] and Path(commands[1][0]).is_absolute()
    run = lambda argv: subprocess.run(argv, cwd=folder, env=env, capture_output=True,  # noqa: E731
                                      text=True, timeout=60)  # fmt: skip
    assert run(commands[1]).stdout.splitlines()[-1] == "all good"
    assert commands[2][-1] == "&"
    daemon = subprocess.Popen(commands[2][:-1], cwd=folder, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        assert run(commands[3]).returncode == 0
        wait_until(lambda: "done" in run(commands[4]).stdout, "hello/world to be done")
    finally:
        daemon.terminate()
        daemon.wait(20)


def test_another_daemon_on_the_configs_port_does_not_refuse_a_local_enqueue(
    project: Project, tmp_path: Path
):
    configured(project)
    project.start_daemon()
    wait_until(lambda: _answers(f"http://127.0.0.1:{project.api_port}/health"), "the API")
    other = Project(tmp_path / "other")
    other.api_port = project.api_port  # a second project, written with the same port
    configured(other)
    done = other.cli("enqueue", "sites", "a")
    assert done.stdout.startswith("enqueued 1 new item(s) into sites/find")
    doctor = other.cli("doctor", expect=1).stdout
    assert f"FAIL api: port {project.api_port} is taken by another pipewarden daemon" in doctor
    assert f"ok   api: port {project.api_port} is this daemon's" in project.cli("doctor").stdout


def test_a_taken_port_is_traded_for_a_free_one():
    import socket

    from pipewarden.ports import port_or_free
    from pipewarden.setup import starter_config, with_port

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert port_or_free(port) != port
    assert "api: {port: 40001}" in with_port(starter_config(), 40001)
