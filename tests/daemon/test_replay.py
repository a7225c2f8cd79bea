"""`pipewarden replay RUN_ID`: the run's worker again, in the foreground, on the input it had,
judged by the rules in force; `--record` keeps it as a run no production count sees."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from conftest import Project, process_gone

PIPELINES = """
sites:
  stages:
    - {name: find, python: "steps:find"}
    - name: capture
      command: [python3, capture.py]
      retry: {max_attempts: 1}
"""
STEPS = """
import sys

def find(data):
    print("find saw", sorted(data.items()), file=sys.stderr)
    return {"found": "https://" + data["host"], "size": len(data["host"])}
"""
CAPTURE = """
import json, os, sys
request = json.loads(sys.stdin.readline())
print("capture saw", json.dumps(request["data"], sort_keys=True), "attempt", request["attempt"])
print("replay:", os.environ.get("PIPEWARDEN_REPLAY"), "item:", os.environ["PIPEWARDEN_ITEM"])
sys.stderr.write("EACCES: permission denied, mkdir '/run/media/store'\\n")
sys.exit(3)
"""


def _ran(project: Project) -> dict[str, object]:
    """Runs of item a.com by stage, once the daemon has taken it as far as it goes."""
    project.write("steps.py", STEPS)
    project.write("capture.py", CAPTURE)
    project.configure(PIPELINES)
    project.cli("enqueue", "sites", "a.com", "--data", '{"host": "a.com"}')
    assert project.start_daemon("--until-idle").wait(30) == 0
    return {run.stage: run for run in project.runs("a.com")}


def test_a_command_stage_is_replayed_on_the_terminal_and_judged_by_the_rules_now(
    project: Project,
):
    runs = _ran(project)
    failed = runs["capture"]
    assert (failed.status, failed.label) == ("failed", "Permission denied")
    # Since the run, a rule file of the user's says what this failure is now.
    project.write(
        "mine.yaml",
        'rules:\n  - {match: "mkdir \'/run/media", group: terminal,'
        " label: Store not mounted, category: infrastructure, advice: mount it}\n",
    )
    project.configure(PIPELINES, rules=("mine.yaml",))
    config = project.config_path.read_text()
    project.config_path.write_text(config.replace("rules: [", "rules: [mine.yaml, "))

    code, shown = project.on_a_terminal("replay", failed.id[:10])
    assert code == 1, shown  # the worker failed
    assert f"replaying run {failed.id[:8]}: sites/capture on 'a.com', attempt 1" in shown
    assert "input:   the data the run had (its input fingerprint matches)" in shown
    # The worker's stdout and its stderr, as it wrote them.
    assert 'capture saw {"found": "https://a.com", "host": "a.com", "size": 5} attempt 1\n' in shown
    assert f"replay: {failed.id} item: a.com\n" in shown
    assert "EACCES: permission denied, mkdir '/run/media/store'\n" in shown
    result = shown.split("--- the worker is done ---\n", 1)[1].splitlines()
    assert result[:3] == [
        f"{'status':<18}failed",
        result[1],  # the duration
        f"{'exit_code':<18}3",
    ]
    assert f"{'label':<18}Store not mounted" in result
    assert f"{'group_name':<18}terminal" in result
    assert f"{'category':<18}infrastructure" in result
    assert f"{'rule_id':<18}mine.yaml:2" in result
    assert "advice:  mount it" in result
    assert f"{'next':<18}failed (the daemon's decision, had this been the run)" in result
    assert any(line.startswith("was") and "[retriable · Permission denied]" in line
               for line in result), result  # fmt: skip
    assert [run.id for run in project.runs("a.com")] == [r.id for r in runs.values()]  # none new


def test_a_python_stage_is_replayed_on_the_data_it_had_before_it_merged_its_own(
    project: Project,
):
    runs = _ran(project)
    found = runs["find"]
    # The item moved on with what find merged: the replay takes that back out.
    assert json.loads(project.item("sites", "a.com").data)["size"] == 5
    done = project.cli("replay", found.id, expect=0)
    assert "input:   the data the run had (its input fingerprint matches)" in done.stdout
    assert "find saw [('host', 'a.com')]\n" in done.stderr
    assert f"{'status':<18}ok" in done.stdout
    assert f"{'next':<18}-> capture (the daemon's" in done.stdout
    assert f'{"data_out":<18}{{"found": "https://a.com", "size": 5}}' in done.stdout

    # Once a later run has replaced a value the item came with, that value is lost: the
    # replay says it cannot confirm the input, and runs on what it could rebuild.
    project.cli("enqueue", "sites", "a.com", "--data", '{"host": "b.com"}')
    assert project.start_daemon("--until-idle").wait(30) == 0
    unconfirmed = project.cli("replay", found.id, expect=0).stdout
    assert "not confirmed by the run's input fingerprint" in unconfirmed


def test_record_keeps_a_run_marked_replay_that_status_and_the_guard_do_not_count(
    project: Project,
):
    runs = _ran(project)
    failed = runs["capture"]
    before = json.loads(project.cli("status", "--json").stdout)
    done = project.cli("replay", failed.id, "--record", expect=1)
    recorded = [run for run in project.runs("a.com") if run.replay_of]
    assert len(recorded) == 1 and recorded[0].replay_of == failed.id
    replayed = recorded[0]
    assert f"recorded as run {replayed.id}, marked a replay" in done.stdout
    assert (replayed.status, replayed.label, replayed.attempt) == ("failed", "Permission denied", 1)
    after = json.loads(project.cli("status", "--json").stdout)
    for snapshot in (before, after):
        snapshot.pop("generated_at", None)
        snapshot.pop("now", None)
    assert after["pipelines"] == before["pipelines"]
    assert project.item("sites", "a.com").last_run_id == failed.id  # the item is untouched
    shown = project.cli("runs", "show", replayed.id[:8]).stdout
    assert f"{'replay_of':<18}{failed.id}" in shown
    why = project.cli("why", "a.com").stdout
    assert f"replay of run {failed.id[:8]}" in why
    tail = project.cli("runs", "tail").stdout
    assert f"(replay of {failed.id[:8]})" in tail
    store = project.store()
    try:  # who replayed what: a replay runs the worker's side effects again
        (line,) = store.db.execute_sql("SELECT who, action, target, detail FROM audit").fetchall()
    finally:
        store.close()
    assert line[0].endswith(" (cli)") and line[1:] == (
        "replay", f"run {failed.id[:8]} at sites/capture",
        f"recorded as run {replayed.id[:8]}: failed",
    )  # fmt: skip


HANG = """
import subprocess, sys, time
child = subprocess.Popen(["sleep", "60"])
print("child", child.pid, flush=True)
time.sleep(60)
"""


def test_a_replay_past_the_stage_timeout_ends_the_whole_tree(project: Project):
    project.write("hang.py", HANG)
    project.configure("""
        slow:
          stages:
            - {name: wait, command: [python3, hang.py], timeout: 1s, grace: 1s,
               retry: {max_attempts: 1}}
    """)  # fmt: skip
    project.cli("enqueue", "slow", "x")
    assert project.start_daemon("--until-idle").wait(30) == 0
    (run,) = project.runs("x")
    assert run.status == "timed_out"
    done = project.cli("replay", run.id, expect=1)
    child = int(done.stdout.split("child ", 1)[1].split()[0])
    assert process_gone(child)
    assert f"{'status':<18}timed_out" in done.stdout
    assert "Timed out after 1s" in done.stdout
    assert f"{'type':<18}" in done.stdout


def test_ctrl_c_ends_the_replay_and_everything_its_worker_started(project: Project):
    project.write("hang.py", HANG)
    project.configure("""
        slow:
          stages:
            - {name: wait, command: [python3, hang.py], timeout: 1s, retry: {max_attempts: 1}}
    """)  # fmt: skip
    project.cli("enqueue", "slow", "x")
    assert project.start_daemon("--until-idle").wait(30) == 0
    (run,) = project.runs("x")
    replay = subprocess.Popen(
        [sys.executable, "-m", "pipewarden", "replay", run.id], cwd=project.root,
        env=project.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert replay.stdout is not None
    line = ""
    while not line.startswith("child "):
        line = replay.stdout.readline()
        assert line, "the replay ended before its worker started a child"
    replay.send_signal(signal.SIGINT)
    _, err = replay.communicate(timeout=20)
    assert replay.returncode == 1
    assert err == "replay interrupted: the worker and all it started were stopped\n"
    assert process_gone(int(line.split()[1]))


def test_a_stage_whose_side_effects_must_not_repeat_is_replayed_only_with_force(
    project: Project,
):
    project.write("send.py", "import os, sys\nprint('sent', os.environ.get('PIPEWARDEN_REPLAY'))\n")
    project.configure("""
        outreach:
          stages:
            - {name: send, command: [python3, send.py], on_interrupt: hold}
    """)  # fmt: skip
    project.cli("enqueue", "outreach", "o-1")
    assert project.start_daemon("--until-idle").wait(30) == 0
    (run,) = project.runs("o-1")
    refused = project.cli("replay", run.id, expect=2)
    assert refused.stderr.startswith(
        "pipewarden: outreach/send does what must not be done twice (on_interrupt: hold):"
    )
    assert refused.stdout == ""
    forced = project.cli("replay", run.id, "--force", expect=0)
    assert f"sent {run.id}\n" in forced.stdout


def test_an_unknown_run_id_is_one_line_and_exit_2(project: Project):
    runs = _ran(project)
    done = project.cli("replay", "ffffffff", expect=2)
    assert done.stderr == (
        "pipewarden: no run with id starting 'ffffffff' (see `pipewarden runs tail`)\n"
    )
    assert done.stdout == ""
    project.configure(PIPELINES.split("    - name: capture")[0])  # capture is gone
    gone = project.cli("replay", runs["capture"].id, expect=2)
    assert gone.stderr == (
        f"pipewarden: run {runs['capture'].id[:8]} ran stage sites/capture, which"
        f" {project.config_path} no longer has: nothing to replay it with\n"
    )
