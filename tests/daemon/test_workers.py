"""Workers in real child processes: the watchdog, deaths, the protocol, error texts."""

from __future__ import annotations

import json
import re
import time

from conftest import Project, process_gone, wait_until


def finished_runs(project: Project, key: str) -> list:
    return [run for run in project.runs(key) if run.status != "running"]


def test_hung_worker_and_the_child_it_started_are_killed_by_the_watchdog(project: Project):
    # The worker ignores SIGTERM, as a wedged browser may: only SIGKILL after the grace ends it.
    project.write(
        "hang.py",
        """
        import json, os, pathlib, signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        json.loads(sys.stdin.readline())
        child = subprocess.Popen(["sleep", "600"])
        pathlib.Path("pids").write_text(f"{os.getpid()} {child.pid}")
        time.sleep(600)
        """,
    )
    project.configure(
        """
        sites:
          stages:
            - name: capture
              command: [python3, hang.py]
              timeout: 1s
              grace: 1s
              retry: {max_attempts: 3, backoff: 1h}
        """
    )
    project.cli("enqueue", "sites", "hung.example")
    project.start_daemon()
    pids = wait_until(lambda: (project.root / "pids").exists(), "the worker to start")
    pids = [int(p) for p in (project.root / "pids").read_text().split()]

    (run,) = wait_until(lambda: finished_runs(project, "hung.example"), "the run to end")

    assert all(process_gone(pid) for pid in pids), "worker or its child survived the watchdog"
    assert run.status == "timed_out"
    assert run.error == "Timed out after 1s (killed by SIGKILL after 1s grace)"
    assert run.label == "Timeout" and run.group_name == "retriable"
    assert 1.9 <= run.duration_s <= 3.0
    item = project.item("sites", "hung.example")
    assert item.state == "retrying"
    assert item.ready_at > time.time() + 3000  # the backoff of 1h, not spent immediately
    assert item.last_error.startswith("Timed out after 1s")


POOL_WORKER = """
import os, time

def work(data):
    if data.get("hang"):
        time.sleep(600)
    if data.get("die"):
        os.kill(os.getpid(), 9)
    return {"pid": os.getpid()}
"""

POOL_CONFIG = """
sites:
  stages:
    - name: work
      python: poolworker:work
      concurrency: 1
      timeout: 1s
      grace: 1s
      retry: {max_attempts: 2, backoff: 1h}
"""


def test_a_hung_pool_worker_is_replaced_and_the_next_item_runs(project: Project):
    project.write("poolworker.py", POOL_WORKER)
    project.configure(POOL_CONFIG)
    project.cli("enqueue", "sites", "first", "--data", '{"hang": true}')
    project.start_daemon()
    wait_until(lambda: project.runs("first"), "the first run to start")
    project.cli("enqueue", "sites", "second")

    (hung,) = wait_until(lambda: finished_runs(project, "first"), "the hung run to end")
    (second,) = wait_until(lambda: finished_runs(project, "second"), "the second run")

    assert hung.status == "timed_out" and hung.error.startswith("Timed out after 1s")
    assert process_gone(hung.pid)
    assert second.status == "ok"
    assert second.pid != hung.pid, "the killed pool worker was not replaced"
    assert project.item("sites", "second").state == "done"


def test_an_item_sent_with_one_that_hangs_goes_back_untouched_and_runs_once(project: Project):
    """After a run of quick items that went through, a pool worker is sent its next item
    with the current one. The current one hangs and is killed: the worker never read the
    next, which goes back to the queue with its attempt unspent, and runs once."""
    project.write(
        "poolworker.py",
        POOL_WORKER.replace("def work(data):\n", "def work(data):\n    started(data)\n")
        + "\ndef started(data):\n"
        "    with open('started.log', 'a') as log:\n"
        "        log.write(data['key'] + '\\n')\n",
    )
    project.configure(POOL_CONFIG)
    lines = [{"key": f"quick-{n:02}", "data": {"key": f"quick-{n:02}"}} for n in range(20)]
    lines += [{"key": "hung", "data": {"key": "hung", "hang": True}}]
    lines += [{"key": "after", "data": {"key": "after"}}]
    project.write("items.jsonl", "\n".join(json.dumps(line) for line in lines))
    project.cli("enqueue", "sites", "--file", str(project.root / "items.jsonl"))
    project.start_daemon()

    (hung,) = wait_until(lambda: finished_runs(project, "hung"), "the hung run to end")
    (after,) = wait_until(lambda: finished_runs(project, "after"), "the item after it to run")

    assert hung.status == "timed_out"
    assert (after.status, after.attempt, len(project.runs("after"))) == ("ok", 1, 1)
    assert (project.root / "started.log").read_text().split().count("after") == 1
    assert "1 item(s) handed ahead went back to the queue untouched" in project.daemon_log()


def test_a_pool_worker_that_dies_mid_item_fails_the_run_with_how_it_died(project: Project):
    project.write("poolworker.py", POOL_WORKER)
    project.configure(POOL_CONFIG)
    project.cli("enqueue", "sites", "doomed", "--data", '{"die": true}')
    project.start_daemon()

    (run,) = wait_until(lambda: finished_runs(project, "doomed"), "the run to end")

    assert run.status == "failed"
    assert run.error == "worker exited with signal 9 (SIGKILL)"
    assert run.signal == 9
    assert project.item("sites", "doomed").state == "retrying"


def test_a_failed_command_with_no_output_still_has_an_error_text(project: Project):
    project.configure(
        """
        sites:
          stages:
            - name: silent
              command: [python3, -c, "import sys; sys.exit(3)"]
              retry: {max_attempts: 1}
        """
    )
    project.cli("enqueue", "sites", "quiet.example")
    project.start_daemon("--until-idle").wait(30)

    (run,) = project.runs("quiet.example")
    assert run.status == "failed"
    assert run.error == "exit code 3, no output"
    assert run.exit_code == 3
    item = project.item("sites", "quiet.example")
    assert item.state == "failed" and item.last_error == "exit code 3, no output"


def test_a_command_fails_with_its_last_stderr_line_and_keeps_the_tail(project: Project):
    project.write(
        "fail.py",
        """
        import sys
        print("loading page")
        print("step 1 ok", file=sys.stderr)
        sys.exit("HTTP 503 from upstream")
        """,
    )
    project.configure(
        """
        sites:
          stages:
            - name: capture
              command: [python3, fail.py]
              retry: {max_attempts: 1}
        """
    )
    project.cli("enqueue", "sites", "down.example")
    project.start_daemon("--until-idle").wait(30)

    (run,) = project.runs("down.example")
    assert run.error == "HTTP 503 from upstream"
    assert run.label == "Server error" and run.rule_id.endswith("sites.yaml:40")
    assert run.traceback == "step 1 ok\nHTTP 503 from upstream"
    assert run.output == "loading page"


def test_python_workers_speak_the_protocol_for_plain_functions(project: Project):
    project.write(
        "steps.py",
        """
        def enrich(data, ctx):
            print("a stray print must not corrupt the protocol")
            ctx.progress(0.5, "halfway")
            return {"enriched": data["n"] * 2, "attempt": ctx.attempt}

        def check(data):
            if data["n"] > 1:
                raise TimeoutError("upstream did not answer")
        """,
    )
    project.configure(
        """
        other:
          stages:
            - {name: enrich, python: "steps:enrich"}
            - {name: check, python: "steps:check", retry: {max_attempts: 1}}
        """
    )
    project.cli("enqueue", "other", "one", "--data", '{"n": 1}')
    project.cli("enqueue", "other", "two", "--data", '{"n": 2}')
    project.start_daemon("--until-idle").wait(30)

    one = project.item("other", "one")
    assert one.state == "done"
    assert '"enriched": 2' in one.data and '"attempt": 1' in one.data
    enrich_run = project.runs("one")[0]
    assert enrich_run.message == "halfway"
    failed = project.runs("two")[-1]
    assert failed.error == "TimeoutError: upstream did not answer"
    assert failed.error_type == "TimeoutError"
    # No message rule of pipeline `other` matches: the exception type decides.
    assert (failed.label, failed.category, failed.type) == ("Timeout", "infrastructure", "timeout")
    assert "Traceback (most recent call last)" in failed.traceback
    assert 'raise TimeoutError("upstream did not answer")' in failed.traceback


def test_retry_after_from_a_worker_is_honoured(project: Project):
    project.write(
        "limited.py",
        """
        import json, sys
        json.loads(sys.stdin.readline())
        print(json.dumps({"ok": False, "error": "status code 429", "retry_after": 120}))
        """,
    )
    project.configure(
        """
        sites:
          stages:
            - name: call
              command: [python3, limited.py]
              retry: {max_attempts: 3, backoff: 1s, jitter: 0}
        """
    )
    project.cli("enqueue", "sites", "api.example")
    before = time.time()
    project.start_daemon()
    wait_until(lambda: finished_runs(project, "api.example"), "the run to end")

    item = project.item("sites", "api.example")
    assert item.state == "retrying" and item.last_label == "Rate limited"
    assert before + 119 <= item.ready_at <= time.time() + 121
    shown = project.cli("item", "sites", "api.example").stdout
    assert "state       retrying at stage call (1 attempt(s) made there)" in shown
    assert re.search(
        r"next        retry at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(in 1\d\d\.\ds\)", shown
    )
    assert "last label  Rate limited (retriable)" in shown


def test_a_command_pool_worker_in_any_language_speaks_json_lines(project: Project):
    # A long-lived command: reads items one after another, answers each with a result line.
    project.write(
        "loop.sh",
        """
        while IFS= read -r line; do
          echo "not json: just output"
          echo '{"progress": 0.5, "message": "working"}'
          echo "{\\"ok\\": true, \\"data\\": {\\"by\\": \\"$$\\", \\"region\\": \\"$REGION\\"}}"
        done
        """,
    )
    project.write("work/.keep", "")
    project.configure(
        """
        sites:
          stages:
            - name: shell
              command: [sh, ../loop.sh]
              mode: pool
              cwd: work
              env: {REGION: eu-west}
        """
    )
    project.write("items.jsonl", '{"key": "a"}\n{"key": "b"}\n{"key": "c"}\n')
    project.cli("enqueue", "sites", "--file", "items.jsonl")
    project.start_daemon("--until-idle").wait(30)

    items = [project.item("sites", key) for key in "abc"]
    assert [i.state for i in items] == ["done"] * 3
    datas = [json.loads(i.data) for i in items]
    assert {d["region"] for d in datas} == {"eu-west"}
    assert len({d["by"] for d in datas}) == 1  # one long-lived process served them all
    run = project.runs("a")[0]
    assert (run.output, run.message, run.progress) == ("not json: just output", "working", 1.0)


def test_a_pool_worker_that_never_reads_its_item_is_stopped_by_the_watchdog(project: Project):
    # The item is larger than a pipe holds: its request cannot all be written, and the
    # watchdog alone must end the attempt (the write waits for nobody).
    project.configure(
        """
        sites:
          stages:
            - {name: deaf, command: [sleep, "60"], mode: pool, timeout: 1s}
        """
    )
    project.write("items.jsonl", json.dumps({"key": "big", "data": {"text": "x" * 200_000}}))
    project.cli("enqueue", "sites", "--file", "items.jsonl")
    project.start_daemon()

    (run,) = wait_until(lambda: finished_runs(project, "big"), "the deaf run to end")

    assert run.status == "timed_out" and run.error.startswith("Timed out after 1s")
    assert process_gone(run.pid)
