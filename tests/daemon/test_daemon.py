"""The daemon's life: kill -9 and restart, SIGTERM drain, one daemon per state dir."""

from __future__ import annotations

import json
import os
import signal
import time

from conftest import HttpReceiver, Project, wait_until

SLOW_WORKER = """
import json, os, pathlib, sys, time
item = json.loads(sys.stdin.readline())
pathlib.Path(f"started-{item['item']}-{os.getpid()}").touch()
if pathlib.Path(f"slow-{item['item']}").exists():
    time.sleep(600)
time.sleep(float(item["data"].get("sleep", 0)))
print(json.dumps({"ok": True}))
"""


def started_pids(project: Project, key: str) -> list[int]:
    return [int(p.name.rsplit("-", 1)[1]) for p in project.root.glob(f"started-{key}-*")]


def configure_slow(
    project: Project, on_interrupt: str = "requeue", notify_url: str | None = None
) -> None:
    project.write("slow.py", SLOW_WORKER)
    project.configure(
        f"""
        sites:
          stages:
            - name: capture
              command: [python3, slow.py]
              concurrency: 4
              grace: 1s
              on_interrupt: {on_interrupt}
            - name: score
              command: [python3, slow.py]
        """,
        extra="drain_grace: 2s\n"
        + (f"notify:\n  targets: [{{url: '{notify_url}'}}]\n" if notify_url else ""),
    )


def test_kill_9_mid_run_then_restart_interrupts_the_run_and_finishes_the_item(
    project: Project, kill_leftovers: list[int], http_receiver: HttpReceiver
):
    configure_slow(project, notify_url=http_receiver.url)
    project.write("slow-a.example", "")
    project.cli("enqueue", "sites", "a.example")
    daemon = project.start_daemon()
    (worker_pid,) = wait_until(lambda: started_pids(project, "a.example"), "the worker to start")
    kill_leftovers.append(worker_pid)  # its own process group outlives the daemon

    daemon.send_signal(signal.SIGKILL)
    daemon.wait(10)
    assert [r.status for r in project.runs("a.example")] == ["running"]
    (project.root / "slow-a.example").unlink()
    assert project.start_daemon("--until-idle").wait(30) == 0

    first, capture, score = project.runs("a.example")
    assert first.status == "interrupted"
    assert first.error == "daemon stopped while running"
    assert (capture.status, capture.stage, capture.attempt) == ("ok", "capture", 1)
    assert (score.status, score.stage) == ("ok", "score")
    assert project.item("sites", "a.example").state == "done"
    assert "recovered run" in project.daemon_log() and "requeued" in project.daemon_log()
    wait_until(lambda: http_receiver.titles(), "the recovery notification")
    assert http_receiver.titles() == ["pipewarden: recovered 1 run(s) after an unclean stop"]


def test_kill_9_under_load_loses_no_item(project: Project):
    project.write("fast.py", "def work(data):\n    return {'seen': True}\n")
    project.configure(
        """
        sites:
          stages:
            - {name: one, python: "fast:work", concurrency: 2}
            - {name: two, python: "fast:work", concurrency: 2}
        """
    )
    project.write("items.jsonl", "".join(f'{{"key": "k{n}"}}\n' for n in range(300)))
    project.cli("enqueue", "sites", "--file", "items.jsonl")
    daemon = project.start_daemon()
    wait_until(lambda: len(project.runs()) > 100, "some runs to be recorded")
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(10)

    assert project.start_daemon("--until-idle").wait(60) == 0

    store = project.store()
    states = {item.key: item.state for item in store.Item.select()}
    ok_runs = store.Run.select().where(store.Run.status == "ok").count()
    store.close()
    assert len(states) == 300 and set(states.values()) == {"done"}
    assert ok_runs >= 600  # every item passed both stages (a few maybe twice: at least once)


def test_sigterm_lets_quick_runs_finish_and_requeues_the_rest(project: Project):
    configure_slow(project)
    project.write("slow-stuck", "")
    project.cli("enqueue", "sites", "quick", "--data", '{"sleep": 1}')
    project.cli("enqueue", "sites", "stuck")
    daemon = project.start_daemon()
    wait_until(
        lambda: started_pids(project, "quick") and started_pids(project, "stuck"),
        "both workers to start",
    )

    stopping = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
    took = time.monotonic() - stopping

    assert took < 2 + 1 + 2  # drain grace + the stage's kill grace + start-up slack
    (quick,) = project.runs("quick")
    assert quick.status == "ok"
    (stuck,) = project.runs("stuck")
    assert stuck.status == "interrupted"
    assert "interrupted after drain grace" in stuck.error
    item = project.item("sites", "stuck")
    assert (item.state, item.attempt) == ("queued", 0)  # requeued without spending a retry
    assert all(not os.path.exists(f"/proc/{pid}") for pid in started_pids(project, "stuck"))
    assert project.item("sites", "quick").stage == "score"


def test_a_stop_after_the_worker_replied_records_its_result_not_an_interruption(
    project: Project,
):
    """A process worker that replied, then lingered, when the drain grace ran out: its work
    was done. Recorded as interrupted, the item was requeued (held, where side effects must
    never repeat) and its side effect ran again after the restart."""
    project.write(
        "lingers.py",
        """
        import json, os, pathlib, sys, time
        item = json.loads(sys.stdin.readline())
        with open("effects", "a") as effects:
            effects.write(item["item"] + "\\n")
        print(json.dumps({"ok": True, "data": {"sent": True}}), flush=True)
        pathlib.Path(f"replied-{os.getpid()}").touch()
        time.sleep(600)
        """,
    )
    project.configure(
        """
        sites:
          stages:
            - {name: send, command: [python3, lingers.py], on_interrupt: hold, grace: 1s}
        """,
        extra="drain_grace: 1s\n",
    )
    project.cli("enqueue", "sites", "a")
    daemon = project.start_daemon()
    wait_until(lambda: list(project.root.glob("replied-*")), "the worker to reply")

    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(15) == 0

    (run,) = project.runs("a")
    assert (run.status, run.error) == ("ok", None)
    item = project.item("sites", "a")
    assert item.state == "done" and json.loads(item.data) == {"sent": True}
    assert (project.root / "effects").read_text() == "a\n"
    pids = [int(p.name.split("-")[1]) for p in project.root.glob("replied-*")]
    assert all(not os.path.exists(f"/proc/{pid}") for pid in pids)


def test_an_interrupted_stage_marked_hold_waits_for_a_person(project: Project):
    configure_slow(project, on_interrupt="hold")
    project.write("slow-sms", "")
    project.cli("enqueue", "sites", "sms")
    daemon = project.start_daemon()
    wait_until(lambda: started_pids(project, "sms"), "the worker to start")

    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(15) == 0

    assert project.item("sites", "sms").state == "held"
    assert project.runs("sms")[0].status == "interrupted"


def test_a_second_daemon_on_the_same_state_dir_is_refused(project: Project):
    configure_slow(project)
    first = project.start_daemon()
    second = project.cli("run", expect=1)
    assert f"another pipewarden daemon (pid {first.pid}) is running" in second.stderr
    assert "Traceback" not in second.stderr
    status = project.cli("status")
    assert f"daemon: running (pid {first.pid})" in status.stdout
