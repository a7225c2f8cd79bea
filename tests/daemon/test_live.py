"""While attempts run: live progress in `status`, `why` and the API; ETAs only where they hold."""

from __future__ import annotations

import json
import signal
import time

import httpx
from conftest import Project, wait_until
from freezegun import freeze_time
from pipewarden.config import load_config
from pipewarden.render import Paint, status_tree
from pipewarden.status import status_snapshot

STEPPER = """
import pathlib, time

def work(data, ctx):
    for step in (1, 2, 3, 4):  # the test says when each step is done
        while not pathlib.Path(f"step-{step}").exists():
            time.sleep(0.02)
        ctx.progress(step / 4, f"step {step}/4")
    while not pathlib.Path("finish").exists():
        time.sleep(0.02)
    return {"stepped": True}
"""


def api_status(project: Project) -> dict:
    return wait_until(lambda: _get_status(project), "the API to answer")


def _get_status(project: Project) -> dict | None:
    token_file = project.state_dir / "api.token"
    try:
        answer = httpx.get(
            f"http://127.0.0.1:{project.api_port}/api/status",
            headers={"Authorization": f"Bearer {token_file.read_text().strip()}"},
        )
    except (OSError, httpx.HTTPError):  # no token yet, or the API not listening yet
        return None
    return answer.json()


def running(snapshot: dict) -> list[dict]:
    return [run for p in snapshot["pipelines"] for s in p["stages"] for run in s["running"]]


def test_progress_reaches_status_why_and_the_api_while_the_attempt_runs(project: Project):
    project.write("stepper.py", STEPPER)
    project.configure(
        """
        podcast:
          stages:
            - {name: transcribe, python: "stepper:work", timeout: 1m}
        """
    )
    project.cli("enqueue", "podcast", "ep-1")
    project.start_daemon()
    wait_until(lambda: project.item("podcast", "ep-1").state == "running", "the attempt to start")

    for step in (1, 2, 3, 4):
        (project.root / f"step-{step}").touch()
        shown = f"ep-1#1 {step * 25}% step {step}/4 ("
        # The loop sleeps while the attempt runs: the write must not wait for it to wake.
        wait_until(lambda: shown in project.cli("status").stdout, f"status to show {shown}")  # noqa: B023
    (run,) = running(api_status(project))
    assert (run["progress"], run["message"]) == (1.0, "step 4/4")
    assert "transcribe#1  running 100% step 4/4" in project.cli("why", "ep-1").stdout
    assert json.loads(project.cli("why", "ep-1", "--json").stdout)["runs"][0]["progress"] == 1.0

    (project.root / "finish").touch()
    wait_until(lambda: project.item("podcast", "ep-1").state == "done", "the attempt to end")


SLOW = """
import pathlib, time

def work(data, ctx):
    time.sleep(0.5)
    ctx.progress(0.25, "a quarter")
    while not pathlib.Path("finish").exists():
        time.sleep(0.02)
    return {}
"""


def test_a_running_attempt_has_the_time_left_at_its_progress_rate(project: Project):
    project.write("slow.py", SLOW)
    project.configure(
        """
        podcast:
          stages:
            - {name: render, python: "slow:work", timeout: 1m}
        """
    )
    project.cli("enqueue", "podcast", "ep-2")
    project.start_daemon()
    wait_until(
        lambda: any(run["progress"] for run in running(api_status(project))), "the first progress"
    )

    (run,) = running(api_status(project))
    assert run["eta_s"] is not None and abs(run["eta_s"] - 3 * run["elapsed_s"]) < 1e-6
    line = next(x for x in project.cli("status").stdout.splitlines() if "ep-2#1" in x)
    assert "ep-2#1 25% a quarter (" in line and "left at its progress rate)" in line
    (project.root / "finish").touch()


SENDER = """
def send(data):
    if data["contact_method"] == "sms":
        raise RuntimeError("Twilio: rate limit exceeded (error 20429)")
    return {"sent": True}
"""


def test_no_eta_for_a_halted_channel_nor_with_the_daemon_stopped(project: Project):
    project.write("sender.py", SENDER)
    project.write(
        "halts.yaml", "halts:\n  - {when: same_label, channels: [sms], count: 1, within: 1h}\n"
    )
    project.configure(
        """
        outreach:
          stages:
            - name: send
              python: "sender:send"
              channel: "{data.contact_method}"
              concurrency: 1
              retry: {max_attempts: 1}
        """,
        rules=("halts.yaml",),
    )
    for n in range(3):
        project.cli("enqueue", "outreach", f"e-{n}", "--data", '{"contact_method": "email"}')
    daemon = project.start_daemon()
    wait_until(lambda: project.item("outreach", "e-2").state == "done", "email runs to time")
    for n in range(4):
        project.cli("enqueue", "outreach", f"s-{n}", "--data", '{"contact_method": "sms"}')
    wait_until(lambda: "halted: sms" in project.cli("status").stdout, "sms to halt")

    shown = project.cli("status").stdout
    assert "ETA" not in shown  # the only queue is behind the halt: it does not move
    assert "    3 queued wait: sms halted" in shown.splitlines()
    (stage,) = json.loads(project.cli("status", "--json").stdout)["pipelines"][0]["stages"]
    assert stage["queue"] == {
        "queued": 3, "ready": 0, "waiting": [{"why": "sms halted", "items": 3}], "eta": None,
    }  # fmt: skip

    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
    project.cli("enqueue", "outreach", "e-9", "--data", '{"contact_method": "email"}')
    stopped = project.cli("status")
    assert "daemon: not running" in stopped.stdout and "ETA" not in stopped.stdout
    (stage,) = json.loads(project.cli("status", "--json").stdout)["pipelines"][0]["stages"]
    assert (stage["queue"]["ready"], stage["queue"]["eta"]) == (1, None)


def test_an_eta_says_what_it_rests_on_and_closed_or_paused_channels_have_none(project: Project):
    project.configure(
        """
        outreach:
          stages:
            - {name: send, command: [x], channel: "{data.contact_method}", concurrency: 2}
        """,
        extra="channels:\n  form: {days: mon-fri, hours: '09:00-17:00', timezone: UTC}\n",
    )
    config = load_config(project.config_path)
    stage = config.pipeline("outreach").stages[0]
    with freeze_time("2026-11-21 12:00:00"):  # a Saturday: the form channel is closed
        now = time.time()
        store = project.store()
        items = [(f"{method}-{n}", {"contact_method": method})
                 for method in ("email", "form", "sms") for n in range(3)]  # fmt: skip
        store.enqueue("outreach", "send", items, now, stage.channel_for)
        # (a run written by hand names its stage's number too: schema 15)
        store.db.connection().execute("INSERT INTO stages (pipeline, stage) VALUES (?, ?)",
                                      ("outreach", "send"))  # fmt: skip
        for n, seconds in enumerate((1.0, 2.0, 9.0)):  # three ok runs: the median is 2s
            store.db.connection().execute(
                "INSERT INTO runs (id, pipeline, stage, item_id, item_key, attempt, status,"
                " started_at, finished_at, duration_s, stage_no) VALUES (?, 'outreach', 'send',"
                " 1, 'x', 1, 'ok', ?, ?, ?, (SELECT no FROM stages WHERE stage = 'send'))",
                (f"r{n}", now - 60, now - 60 + seconds, seconds),
            )
        pause = {"scope": "channel", "target": "sms", "kind": "pause", "created_by": "ann",
                 "reason": "paused by a person", "created_at": now}  # fmt: skip
        store.add_hold(pause)
        store.db.connection().commit()
        snapshot = status_snapshot(config, store, now, daemon_running=True)
        store.close()

    (send,) = snapshot["pipelines"][0]["stages"]
    assert send["queue"]["waiting"] == [
        {"why": "form outside business hours", "items": 3}, {"why": "sms paused", "items": 3},
    ]  # fmt: skip
    assert send["queue"]["eta"] == {
        "seconds": 4.0, "items": 3, "concurrency": 2, "median_s": 2.0, "runs": 3,
    }  # fmt: skip
    lines = status_tree(snapshot, Paint(False))
    assert lines[lines.index(next(x for x in lines if x.startswith("▸ send"))) :][:4] == [
        "▸ send  ETA 4.0s                                       9       +9       +9",
        "    ETA from 3 queued, 2 at a time, at the median 2.0s of the last 3 ok runs",
        "    3 queued wait: form outside business hours",
        "    3 queued wait: sms paused",
    ]
