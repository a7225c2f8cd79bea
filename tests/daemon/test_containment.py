"""No worker process outlives its attempt; every byte a worker writes is bounded.

Real workers that background, setsid, double-fork, hold pipes, close stdout, write tens of
megabytes; a daemon killed with -9 and restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Project, process_gone, wait_until
from pipewarden.containment import Containment
from pipewarden.limits import MESSAGE_KEPT, OUTPUT_KEPT, REPLY_LINE_MAX, TRACEBACK_KEPT
from pipewarden.pipes import StderrReader, StdoutReader
from pipewarden.processes import spawn
from pipewarden.store import NewRun


@pytest.fixture
def pid_files(project: Project) -> Iterator[None]:
    """Whatever a test's workers wrote to *.pid files is killed at the end, pass or fail."""
    yield
    for path in project.root.glob("*.pid"):
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            os.kill(int(path.read_text()), signal.SIGKILL)


def pid_in(project: Project, name: str) -> int:
    path = project.root / name
    return int(wait_until(lambda: path.exists() and path.read_text().strip(), f"{name}"))


def finished(project: Project, key: str) -> list:
    return [run for run in project.runs(key) if run.status != "running"]


def proc_field(pid: int, index: int) -> str:
    """Field `index` (1-based, as in proc(5)) of /proc/PID/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rfind(")") + 2 :].split()[index - 3]


def children_of(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):
            found += [int(p) for p in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return found


def zombies_of(pid: int) -> list[int]:
    zombies = []
    for child in children_of(pid):
        with contextlib.suppress(FileNotFoundError):
            if proc_field(child, 3) == "Z":
                zombies.append(child)
    return zombies


def sentinel_of(daemon_pid: int) -> int | None:
    """The daemon's sentinel process (started before any worker)."""
    for child in children_of(daemon_pid):
        with contextlib.suppress(FileNotFoundError):
            if b"pipewarden._sentinel" in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
    return None


def one_stage(project: Project, worker: str, *settings: str, extra: str = "") -> None:
    """Pipeline `sites` of one stage `work`: `worker` and `settings` are its YAML lines."""
    lines = ["- name: work", worker, "retry: {max_attempts: 1}", *settings]
    stage = "\n".join([lines[0], *(f"  {line}" for line in lines[1:])])
    project.configure("sites:\n  stages:\n" + textwrap.indent(stage, "    "), extra=extra)


# -- escaped processes --------------------------------------------------------------------
@pytest.mark.parametrize(
    "how",
    [
        "sleep 300 </dev/null >/dev/null 2>&1 & echo $! > child.pid",
        "(setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $! > child.pid)",
    ],
    ids=["backgrounded", "setsid-double-fork"],
)
def test_a_child_a_worker_leaves_behind_is_gone_when_its_run_ends_ok(
    project: Project, pid_files: None, how: str
):
    project.write("escape.sh", f"read line\n{how}\nexit 0\n")
    one_stage(project, "command: [sh, escape.sh]")
    project.cli("enqueue", "sites", "a")
    daemon = project.start_daemon()

    (run,) = wait_until(lambda: finished(project, "a"), "the run to end")

    assert run.status == "ok"
    assert process_gone(pid_in(project, "child.pid")), "the escaped child outlived the run"
    assert project.item("sites", "a").state == "done"
    wait_until(lambda: not zombies_of(daemon.pid), "the daemon to reap what it killed", 5)


def test_children_caught_in_the_middle_of_an_execve_as_their_runs_end_go_with_them(
    project: Project, pid_files: None
):
    # Each child leaves the worker's session and execs again and again: a process in the
    # middle of an execve reads as having no environment, so no mark, for a moment. Missed
    # as its run ends, it would live on until the sweep found it, and say so in the log.
    project.write("again.sh", '[ "$1" -gt 0 ] && exec sh again.sh $(($1 - 1))\nexec sleep 300\n')
    project.write(
        "escape.sh",
        """
        read line
        for i in 1 2 3; do
          (setsid sh again.sh 5000 </dev/null >/dev/null 2>&1 & echo $! > $PIPEWARDEN_RUN_ID-$i.pid)
        done
        exit 0
        """,
    )
    one_stage(project, "command: [sh, escape.sh]")
    keys = [f"item-{n}" for n in range(12)]
    for key in keys:
        project.cli("enqueue", "sites", key)
    project.start_daemon()

    runs = [wait_until(lambda k=key: finished(project, k), f"{key}'s run")[0] for key in keys]

    assert {run.status for run in runs} == {"ok"}
    pids = [pid_in(project, f"{run.id}-{n}.pid") for run in runs for n in (1, 2, 3)]
    wait_until(lambda: all(process_gone(pid) for pid in pids), "the children to be gone", 5)
    assert "left behind by an attempt that ended" not in project.daemon_log()


def test_an_escaped_child_with_no_environment_is_ended_by_the_sweep(
    project: Project, pid_files: None
):
    # No mark and a session of its own: nothing ties it to its run but having been
    # orphaned to the daemon while no attempt claims it. The sweep looks twice, then kills.
    project.write(
        "escape.sh",
        """
        read line
        (setsid env -i sleep 300 </dev/null >/dev/null 2>&1 & echo $! > child.pid)
        while grep -q PIPEWARDEN /proc/$(cat child.pid)/environ; do sleep 0.01; done
        """,
    )
    one_stage(project, "command: [sh, escape.sh]")
    project.cli("enqueue", "sites", "a")
    project.start_daemon()

    (run,) = wait_until(lambda: finished(project, "a"), "the run to end")

    assert run.status == "ok"
    child = pid_in(project, "child.pid")
    wait_until(lambda: process_gone(child), "the sweep to end the child", 5)
    assert f"killing process {child}, left behind" in project.daemon_log()


def test_what_escapes_a_pool_worker_ends_with_the_item_and_the_worker_lives_on(
    project: Project, pid_files: None
):
    project.write(
        "pool.py",
        """
        import os, subprocess

        def work(data):
            subprocess.run(
                f"sleep 300 </dev/null >/dev/null 2>&1 & echo $! > {data['name']}.pid",
                shell=True, check=True,
            )
            return {"worker": os.getpid()}
        """,
    )
    one_stage(project, "python: pool:work", "concurrency: 1")
    project.cli("enqueue", "sites", "a", "--data", '{"name": "a"}')
    project.cli("enqueue", "sites", "b", "--data", '{"name": "b"}')
    project.start_daemon()

    (a,) = wait_until(lambda: finished(project, "a"), "the first run to end")
    assert process_gone(pid_in(project, "a.pid")), "the child escaped from item a outlived it"
    (b,) = wait_until(lambda: finished(project, "b"), "the second run to end")
    assert process_gone(pid_in(project, "b.pid"))
    assert (a.status, b.status) == ("ok", "ok")
    assert a.pid == b.pid and not process_gone(a.pid), "the pool worker itself was stopped"


def test_a_pool_items_escaped_child_ends_with_it_and_the_next_items_lives_on(
    project: Project, pid_files: None
):
    """A pool worker sent its next item with the current one has started that item by the
    time the daemon ends the last: a child escaped from each is in the worker's process
    group, and only the run it carries tells whose it is."""
    project.write(
        "two.sh",
        """
        PIPEWARDEN_RUN_ID=run-a sh -c 'sleep 300 </dev/null >/dev/null 2>&1 & echo $! > a.pid'
        PIPEWARDEN_RUN_ID=run-b sh -c 'sleep 300 </dev/null >/dev/null 2>&1 & echo $! > b.pid'
        exec sleep 300
        """,
    )
    keeper = Containment()  # as the daemon's: a subreaper, so the escaped children are ours

    async def scenario() -> tuple[bool, bool, bool]:
        keeper.enable(project.root)
        env = {"PATH": os.environ["PATH"], **keeper.env("worker-1", None)}
        child = spawn(["/bin/sh", "two.sh"], project.root, env)
        keeper.track(child, "worker-1", "run-a")
        try:
            child.attach(StdoutReader(), StderrReader())
            a, b = pid_in(project, "a.pid"), pid_in(project, "b.pid")
            wait_until(lambda: {proc_field(a, 4), proc_field(b, 4)} == {str(os.getpid())},
                       "the children to escape to the subreaper")  # fmt: skip
            await keeper.end(child, 1.0, whole=False, spared_runs={"run-b"})  # run-a ended
            after_a = (process_gone(a), process_gone(b))
            await keeper.end(child, 1.0, whole=False)  # run-b ended
            return (*after_a, process_gone(b))
        finally:
            await keeper.end(child, 1.0)
            child.close()
            keeper.untrack(child)
            keeper.disable()

    a_gone_with_a, b_gone_with_a, b_gone_with_b = asyncio.run(scenario())
    assert a_gone_with_a, "what run-a started outlived it"
    assert not b_gone_with_a, "what run-b started was killed when run-a ended"
    assert b_gone_with_b, "what run-b started outlived it"


def test_a_child_holding_the_pipes_does_not_turn_an_ok_into_a_timeout(
    project: Project, pid_files: None
):
    project.write(
        "holder.sh",
        """
        read line
        setsid sleep 300 &
        echo $! > holder.pid
        echo '{"ok": true, "data": {"sent": 1}}'
        """,
    )
    one_stage(project, "command: [sh, holder.sh]", "timeout: 5s")
    project.cli("enqueue", "sites", "a")
    project.start_daemon()

    (run,) = wait_until(lambda: finished(project, "a"), "the run to end")

    assert run.status == "ok", run.error
    assert run.duration_s < 2.5  # not the 5 s timeout
    assert project.item("sites", "a").state == "done"
    assert process_gone(pid_in(project, "holder.pid")), "the pipe holder outlived the run"


def test_a_worker_that_replied_keeps_its_reply_and_is_stopped_at_the_timeout(project: Project):
    project.write(
        "linger.py",
        """
        import json, sys, time
        sys.stdin.readline()
        print(json.dumps({"ok": True}), flush=True)
        time.sleep(600)
        """,
    )
    one_stage(project, "command: [python3, linger.py]", "timeout: 1s", "grace: 1s")
    project.cli("enqueue", "sites", "a")
    project.start_daemon()

    (run,) = wait_until(lambda: finished(project, "a"), "the run to end")

    assert run.status == "ok"
    assert run.signal == signal.SIGTERM and process_gone(run.pid)
    assert 0.9 <= run.duration_s <= 3.0


def test_a_pool_worker_that_closes_stdout_and_keeps_running_times_out(project: Project):
    project.write(
        "closer.py",
        """
        import os, time

        def work(data):
            os.closerange(0, 1024)  # the protocol's pipe with the rest
            time.sleep(600)
        """,
    )
    one_stage(project, "python: closer:work", "timeout: 2s", "grace: 1s")
    project.cli("enqueue", "sites", "a")
    project.start_daemon()

    (run,) = wait_until(lambda: finished(project, "a"), "the run to end", 10)

    assert run.status == "timed_out"
    assert run.error.startswith("Timed out after 2s")
    assert run.duration_s <= 2 + 1 + 1.5
    assert process_gone(run.pid)


def test_a_timed_out_command_keeps_its_stderr_tail(project: Project):
    project.write(
        "hang.py",
        """
        import sys, time
        sys.stdin.readline()
        print("about to hang: waiting for lock", file=sys.stderr, flush=True)
        time.sleep(600)
        """,
    )
    one_stage(project, "command: [python3, hang.py]", "timeout: 1s", "grace: 1s")
    project.cli("enqueue", "sites", "a")
    project.start_daemon()

    (run,) = wait_until(lambda: finished(project, "a"), "the run to end")

    assert run.status == "timed_out"
    assert run.traceback == "about to hang: waiting for lock"


def test_shutdown_with_an_escaped_child_holding_the_pipes_is_clean(
    project: Project, pid_files: None
):
    project.write(
        "stuck.sh",
        """
        read line
        (setsid sleep 300 & echo $! > holder.pid)
        sleep 600
        """,
    )
    one_stage(project, "command: [sh, stuck.sh]", "grace: 1s", extra="drain_grace: 1s")
    project.cli("enqueue", "sites", "a")
    daemon = project.start_daemon()
    holder = pid_in(project, "holder.pid")

    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(10) == 0

    log = project.daemon_log()
    assert "Traceback" not in log and "Exception ignored" not in log, log
    assert process_gone(holder)
    assert [run.status for run in project.runs("a")] == ["interrupted"]


# -- bounded sizes ----------------------------------------------------------------------------
def test_a_failure_reply_over_the_line_limit_is_a_protocol_error_not_ok(project: Project):
    project.write(
        "huge.py",
        f"""
        import json, sys
        sys.stdin.readline()
        sys.stdout.write(json.dumps({{"ok": False, "error": "x" * {17 * 2**20}}}) + "\\n")
        """,
    )
    one_stage(project, "command: [python3, huge.py]")
    project.cli("enqueue", "sites", "a")
    project.start_daemon()

    (run,) = wait_until(lambda: finished(project, "a"), "the run to end")

    assert run.status == "failed"
    assert run.error_type == "ProtocolError"
    assert f"over the limit of {REPLY_LINE_MAX} bytes" in run.error
    assert project.item("sites", "a").state == "failed"


def test_fifty_megabytes_of_output_keep_64_kib_each_and_the_daemon_stays_small(project: Project):
    project.write(
        "loud.py",
        """
        import sys
        sys.stdin.readline()
        out, err = sys.stdout.buffer, sys.stderr.buffer
        for _ in range(5):
            out.write(b"o" * 10_000_000 + b"\\n")
            err.write(b"e" * 10_000_000 + b"\\n")
        out.write(b"{" + b"x" * 10_000_000 + b"\\n")  # looks like a message, is not one
        out.write(b"last output\\n")
        err.write(b"last words \\xff\\xfe\\n")
        sys.exit(3)
        """,
    )
    one_stage(project, "command: [python3, loud.py]")
    project.cli("enqueue", "sites", "a")
    daemon = project.start_daemon()

    (run,) = wait_until(lambda: finished(project, "a"), "the run to end")

    assert len(run.output.encode()) <= OUTPUT_KEPT
    assert len(run.traceback.encode()) <= TRACEBACK_KEPT
    status = Path(f"/proc/{daemon.pid}/status").read_text()
    peak_kib = int(status.split("VmHWM:")[1].split()[0])
    assert peak_kib < 100 * 1024, f"the daemon's RSS peaked at {peak_kib} KiB"
    store = sum(p.stat().st_size for p in project.state_dir.glob("pipewarden.db*"))
    assert store < 5 * 2**20
    assert run.status == "failed"
    assert run.error == "last words \\xff\\xfe"
    assert run.output.startswith("… ") and run.output.endswith("x\nlast output")
    assert run.traceback.startswith("… ") and run.traceback.endswith("e\nlast words \\xff\\xfe")


def test_a_progress_message_is_kept_within_its_limit(project: Project):
    project.write(
        "chatty.py",
        """
        import json, sys
        sys.stdin.readline()
        print(json.dumps({"progress": 0.5, "message": "m" * 1_000_000 + " halfway"}))
        print(json.dumps({"ok": True}))
        """,
    )
    one_stage(project, "command: [python3, chatty.py]")
    project.cli("enqueue", "sites", "a")
    project.start_daemon()

    (run,) = wait_until(lambda: finished(project, "a"), "the run to end")

    assert run.status == "ok"
    assert len(run.message.encode()) <= MESSAGE_KEPT
    assert run.message.startswith("… ") and run.message.endswith("m halfway")


def test_binary_stderr_is_kept_readable(project: Project):
    project.write(
        "binary.py",
        """
        import sys
        sys.stdin.readline()
        sys.stderr.buffer.write(b"bad bytes: \\xff\\xfe\\x00\\n")
        sys.exit(1)
        """,
    )
    one_stage(project, "command: [python3, binary.py]")
    project.cli("enqueue", "sites", "a")
    project.start_daemon()

    (run,) = wait_until(lambda: finished(project, "a"), "the run to end")

    assert run.traceback == "bad bytes: \\xff\\xfe\x00"
    assert "\ufffd" not in run.traceback


# -- kill -9 of the daemon ----------------------------------------------------------------------
SIDE_EFFECT = """
import json, os, pathlib, subprocess, sys, time
if sys.argv[1:2] == ["grandchild"]:
    run, who = sys.argv[2], "grandchild"
else:
    run, who = json.loads(sys.stdin.readline())["run"], "worker"
    subprocess.Popen([sys.executable, __file__, "grandchild", run], start_new_session=True)
pathlib.Path(f"{who}-{run}.pid").write_text(str(os.getpid()))
time.sleep(3)
pathlib.Path(f"{who}-{run}.done").touch()
if who == "worker":
    print(json.dumps({"ok": True}))
"""


def start_side_effect(project: Project) -> tuple[subprocess.Popen[bytes], str, list[int]]:
    project.write("effect.py", SIDE_EFFECT)
    one_stage(project, "command: [python3, effect.py]", "timeout: 30s")
    project.cli("enqueue", "sites", "sms")
    daemon = project.start_daemon()
    (run,) = wait_until(lambda: project.runs("sms"), "the run to start")
    pids = [pid_in(project, f"{who}-{run.id}.pid") for who in ("worker", "grandchild")]
    return daemon, run.id, pids


def finish_after_restart(project: Project, first_run: str) -> None:
    """Restart; the requeued copy takes 3 s, so the old processes' 3 s are long past."""
    assert project.start_daemon("--until-idle").wait(30) == 0
    runs = project.runs("sms")
    assert [(r.id == first_run, r.status) for r in runs] == [(True, "interrupted"), (False, "ok")]
    assert (project.root / f"worker-{runs[1].id}.done").exists()
    assert project.item("sites", "sms").state == "done"
    for who in ("worker", "grandchild"):
        assert not (project.root / f"{who}-{first_run}.done").exists(), f"the old {who} ran on"


def test_after_kill_9_the_worker_dies_with_it_and_the_restart_kills_what_it_left(
    project: Project, kill_leftovers: list[int]
):
    daemon, first_run, pids = start_side_effect(project)
    kill_leftovers += pids
    (row,) = wait_until(lambda: [r for r in project.runs("sms") if r.pgid], "the pid recorded")
    assert (row.pid, row.pgid, row.proc_start) == (pids[0], pids[0], int(proc_field(pids[0], 22)))
    if (sentinel := sentinel_of(daemon.pid)) is not None:
        os.kill(sentinel, signal.SIGKILL)  # so only the restart can act
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(10)
    worker, grandchild = pids  # the command dies in the kernel with its daemon (PDEATHSIG)
    wait_until(lambda: process_gone(worker), "the command worker to die with its daemon", 2)
    assert not process_gone(grandchild)  # in a session of its own: the restart's to find

    finish_after_restart(project, first_run)

    assert all(process_gone(pid) for pid in pids)
    log = project.daemon_log()
    assert "after an unclean stop: killed 1 leftover process(es)" in log
    assert log.index("killed 1 leftover") < log.index("recovered run")


def test_a_killed_daemons_workers_die_with_it(project: Project, kill_leftovers: list[int]):
    daemon, first_run, pids = start_side_effect(project)
    kill_leftovers += pids

    daemon.send_signal(signal.SIGKILL)
    daemon.wait(10)

    wait_until(lambda: all(process_gone(pid) for pid in pids), "the sentinel to kill them", 2)
    finish_after_restart(project, first_run)
    assert "after an unclean stop: killed 0 leftover process(es)" in project.daemon_log()


def test_recovery_kills_a_recorded_group_only_while_its_leader_is_the_same_process(
    project: Project,
):
    one_stage(project, "command: [python3, -c, 'import sys; sys.stdin.read()']")
    # Unmarked (environment cleared), in sessions of their own, as a worker that ran
    # `env -i` would be: only the process group recorded on the run can find them.
    same = subprocess.Popen(["sleep", "60"], start_new_session=True, env={})
    reused = subprocess.Popen(["sleep", "60"], start_new_session=True, env={})
    try:
        store = project.store()
        store.enqueue("sites", "work", [("a", {}), ("b", {})], time.time())
        claimed = store.claim("sites", "work", 2, time.time(), new_run)
        (_, run_a), (_, run_b) = claimed
        start = int(proc_field(same.pid, 22))
        # b: a pid the system gave to another process since: the start time tells them apart.
        store.record_processes(
            [(run_a.run_id, same.pid, same.pid, start), (run_b.run_id, reused.pid, reused.pid, 1)]
        )
        store.close()

        assert project.start_daemon("--until-idle").wait(30) == 0

        assert same.wait(5) == -signal.SIGKILL
        assert reused.poll() is None, "a process that merely reused a recorded pid was killed"
        assert "killed 1 leftover process(es)" in project.daemon_log()
        assert {project.item("sites", key).state for key in "ab"} == {"done"}
    finally:
        for proc in (same, reused):
            proc.kill()
            proc.wait()


def new_run(item_id: int, key: str, data: dict) -> NewRun:
    return NewRun(item_id, "work", f"fp-{key}", "cfg", None)
