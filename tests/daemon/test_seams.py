"""The item's life at its seams: enqueue keeps data, checkpoints give stages what they saw,
held items are let go or failed, probes spend no item, a cleared halt counts anew, and an
edited worker module takes effect."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
from conftest import Project, wait_until
from freezegun import freeze_time
from pipewarden.guard import Guard
from pipewarden.rules import HaltRule
from pipewarden.store import FinishedRun, NewRun, Store
from pipewarden.types import ItemState, RunStatus


def item_json(project: Project, pipeline: str, key: str) -> dict:
    return json.loads(project.cli("item", pipeline, key, "--json").stdout)


# -- 1. enqueue never loses data ------------------------------------------------------------
FETCH = """
def fetch(data):
    return {"fetched": data["url"]}
"""


def test_enqueueing_a_finished_key_again_keeps_its_data_unless_data_is_given(project: Project):
    project.write("steps.py", FETCH)
    project.configure("p:\n  stages:\n    - {name: fetch, python: 'steps:fetch'}\n")
    project.cli("enqueue", "p", "k1", "--data", '{"url": "https://a.example/"}')
    assert project.start_daemon("--until-idle").wait(30) == 0

    again = project.cli("enqueue", "p", "k1")
    assert "1 known item(s) started again" in again.stdout
    assert "1 with the data they had (none given)" in again.stdout
    kept = {"url": "https://a.example/", "fetched": "https://a.example/"}
    assert item_json(project, "p", "k1")["data"] == kept
    assert project.start_daemon("--until-idle").wait(30) == 0
    assert item_json(project, "p", "k1")["state"] == "done"  # it had its url to fetch

    replaced = project.cli("enqueue", "p", "k1", "--data", '{"url": "https://b.example/"}')
    assert "1 with the data given, which replaces theirs" in replaced.stdout
    assert item_json(project, "p", "k1")["data"] == {"url": "https://b.example/"}  # not merged
    helped = project.cli("enqueue", "--help").stdout
    assert "it replaces the item's data (it does not merge)" in " ".join(helped.split())


# -- 2, 3. checkpoints are exact ------------------------------------------------------------
STAGES = """
def a(data):
    with open("a.log", "a") as log:
        log.write("a\\n")
    return {"a": data["x"] + 1}

def b(data):
    with open("b.log", "a") as log:
        log.write("b\\n")
    return {"b": data["a"] * 10}
"""


def configure_a_b(project: Project) -> None:
    project.write("steps.py", STAGES)
    project.configure(
        """
        p:
          stages:
            - {name: a, python: "steps:a"}
            - {name: b, python: "steps:b", retry: {max_attempts: 1}}
        """
    )


def lines(project: Project, name: str) -> int:
    path = project.root / name
    return path.read_text().count("\n") if path.exists() else 0


def test_a_skipped_stage_gives_the_next_one_its_output_and_force_redoes_every_stage(
    project: Project,
):
    configure_a_b(project)
    item = ("enqueue", "p", "k", "--data", '{"x": 1}')
    project.cli(*item)
    assert project.start_daemon("--until-idle").wait(30) == 0
    done = {"x": 1, "a": 2, "b": 20}
    assert item_json(project, "p", "k")["data"] == done

    project.cli(*item)
    assert project.start_daemon("--until-idle").wait(30) == 0
    story = item_json(project, "p", "k")
    assert [(r["stage"], r["status"]) for r in story["runs"]][2:] == [
        ("a", "skipped"), ("b", "skipped"),
    ]  # fmt: skip
    assert (story["state"], story["data"]) == ("done", done)  # b saw a's output, as before
    assert (lines(project, "a.log"), lines(project, "b.log")) == (1, 1)

    forced = project.cli(*item, "--force")
    assert "(every stage redone: --force)" in forced.stdout
    assert project.start_daemon("--until-idle").wait(30) == 0
    story = item_json(project, "p", "k")
    assert [(r["stage"], r["status"]) for r in story["runs"]][4:] == [("a", "ok"), ("b", "ok")]
    assert (story["state"], story["data"]) == ("done", done)
    assert (lines(project, "a.log"), lines(project, "b.log")) == (2, 2)


def test_a_skipped_run_ends_in_the_pass_that_claimed_it(project: Project):
    configure_a_b(project)
    project.start_daemon()
    project.cli("enqueue", "p", "k", "--data", '{"x": 1}')
    wait_until(lambda: (project.item("p", "k") or "").state == "done", "the first pass")

    project.cli("enqueue", "p", "k", "--data", '{"x": 1}')  # wakes the daemon once
    wait_until(lambda: project.item("p", "k").state == "done", "the skips", timeout=5)
    skipped = [r for r in project.runs("k") if r.status == "skipped"]
    assert [r.stage for r in skipped] == ["a", "b"]
    assert all(r.finished_at is not None for r in skipped)


# -- 4. held items --------------------------------------------------------------------------
SENDER = """
import json, pathlib, sys, time
item = json.loads(sys.stdin.readline())
pathlib.Path(f"started-{item['item']}").touch()
while pathlib.Path("hang").exists():
    time.sleep(0.05)
print(json.dumps({"ok": True, "data": {"sent": item["attempt"]}}))
"""


def hold_two(project: Project) -> None:
    """Two sends held for a person: interrupted at a stage whose side effects must not repeat."""
    project.write("send.py", SENDER)
    project.configure(
        """
        outreach:
          stages:
            - {name: send, command: [python3, send.py], concurrency: 2, on_interrupt: hold}
        """,
        extra="drain_grace: 100ms\n",
    )
    project.write("hang", "")
    project.cli("enqueue", "outreach", "o-1")
    project.cli("enqueue", "outreach", "o-2")
    daemon = project.start_daemon()
    wait_until(lambda: all((project.root / f"started-{k}").exists() for k in ("o-1", "o-2")),
               "both sends to start")  # fmt: skip
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
    assert {project.item("outreach", k).state for k in ("o-1", "o-2")} == {"held"}


def test_a_held_item_is_released_or_failed_by_a_person(project: Project):
    hold_two(project)
    listed = project.cli("release", "outreach", "--all-held", "--dry-run").stdout
    assert listed == "would have released 2 held item(s) of outreach: o-1, o-2\n"
    why = project.cli("why", "o-1").stdout
    assert "`pipewarden release outreach o-1` runs it again (attempt 1)" in why
    assert "or `pipewarden fail outreach o-1 --reason TEXT` ends it" in why
    retry = project.cli("retry", "--label", "Interrupted").stdout
    assert "2 held item(s) labelled 'Interrupted' wait for a person" in retry
    assert "pipewarden release PIPELINE KEY..." in retry
    enqueued = project.cli("enqueue", "outreach", "o-1").stdout
    assert "1 held for a person (left as they are: `pipewarden release outreach KEY...`" in enqueued

    (project.root / "hang").unlink()
    project.start_daemon()
    dry = project.cli("release", "outreach", "o-1", "--dry-run").stdout
    assert dry == "would have released 1 held item(s) of outreach: o-1\n"
    assert project.item("outreach", "o-1").state == "held"
    released = project.cli("release", "outreach", "o-1").stdout
    assert released.startswith("released 1 held item(s) of outreach (back in the queue at the")
    assert "the running daemon has been told" in released
    wait_until(lambda: project.item("outreach", "o-1").state == "done", "the released send")
    interrupted, sent = project.runs("o-1")
    assert (interrupted.status, interrupted.attempt) == ("interrupted", 1)
    assert (sent.status, sent.attempt) == ("ok", 1)  # the same attempt, not a retry spent

    failed = project.cli("fail", "outreach", "o-2", "o-1", "--reason", "sent by hand", expect=1)
    assert "failed 1 held item(s) of outreach (failed, with the reason given): o-2" in failed.stdout
    assert "not held: o-1 (it is done)" in failed.stdout
    item = project.item("outreach", "o-2")
    assert (item.state, item.last_error, item.last_label) == (
        "failed", "sent by hand", "Failed by a person",
    )  # fmt: skip
    status = project.cli("status").stdout
    assert "Terminal" in status and "Failed by a person" in status
    nothing = project.cli("release", "outreach", "--all-held").stdout
    assert nothing == "no held item of outreach was released\n"


def test_release_and_fail_on_the_api_take_keys_or_all_held(project: Project):
    hold_two(project)
    (project.root / "hang").unlink()
    project.start_daemon()
    base = f"http://127.0.0.1:{project.api_port}"
    auth = {"Authorization": f"Bearer {(project.state_dir / 'api.token').read_text().strip()}"}
    wait_until(lambda: _answers(base), "the API")

    both = httpx.post(f"{base}/api/release", headers=auth,
                      json={"pipeline": "outreach", "keys": ["o-1"], "all_held": True})  # fmt: skip
    assert both.status_code == 400 and "give 'keys' or 'all_held'" in both.json()["error"]
    silent = httpx.post(f"{base}/api/fail", headers=auth,
                        json={"pipeline": "outreach", "all_held": True, "reason": " "})  # fmt: skip
    assert silent.status_code == 400 and "--reason must say why" in silent.json()["error"]
    answer = httpx.post(f"{base}/api/release", headers=auth,
                        json={"pipeline": "outreach", "all_held": True}).json()  # fmt: skip
    assert answer == {"pipeline": "outreach", "released": ["o-1", "o-2"], "dry_run": False,
                      "not_held": {}}  # fmt: skip
    for key in ("o-1", "o-2"):
        wait_until(lambda key=key: project.item("outreach", key).state == "done", "the sends")


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


# -- 5. probes and cleared halts ------------------------------------------------------------
BLOCKED = """
import pathlib

def send(data):
    if not pathlib.Path("sms-fixed").exists():
        raise RuntimeError("Twilio: message blocked by the carrier (error 30007)")
    return {"sent": True}
"""


def configure_sms(project: Project, halts: str) -> None:
    project.write("sender.py", BLOCKED)
    project.write("halts.yaml", f"halts:\n  - {halts}\n")
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


def enqueue_sms(project: Project, count: int) -> None:
    project.write("sms.jsonl", "".join(
        f'{{"key": "sms-{n}", "data": {{"contact_method": "sms"}}}}\n' for n in range(count)
    ))  # fmt: skip
    project.cli("enqueue", "outreach", "--file", "sms.jsonl")


def states(project: Project) -> dict[str, int]:
    store = project.store()
    try:
        rows = store.db.connection().execute("SELECT state, COUNT(*) FROM items GROUP BY state")
        return dict(rows.fetchall())
    finally:
        store.close()


def cooldown(project: Project) -> float | None:
    """The active halt's probe cool-down (doubled by each failed probe)."""
    store = project.store()
    try:
        holds = store.active_holds()
        return holds[0].cooldown_s if holds else None
    finally:
        store.close()


def probes(project: Project) -> list:
    return [run for run in project.runs() if run.probe_of is not None]


def test_a_failed_probe_puts_its_item_back_and_keeps_the_halt(project: Project):
    configure_sms(project, "{when: same_label, channels: [sms], count: 3, within: 1h, "
                           "probe_after: 500ms}")  # fmt: skip
    enqueue_sms(project, 6)
    project.start_daemon()
    wait_until(lambda: cooldown(project) == 1.0, "a probe to fail")

    assert states(project) == {"failed": 3, "queued": 3}  # the probe's item waits, not failed
    probe = probes(project)[0]
    assert probe.status == "failed"
    item = project.item("outreach", probe.item_key)
    assert (item.state, item.attempt) == ("queued", 0)  # its attempt not spent
    assert "halted: sms" in project.cli("status").stdout
    assert f"its item {probe.item_key} is back in the queue (attempt 1 not spent)" in (
        project.daemon_log()
    )
    why = project.cli("why", probe.item_key).stdout
    assert "probe of the halt on sms: it failed, so the halt stays; its item waits" in why
    assert "its last run was a probe of the halt and failed: it waits in the queue" in why

    (project.root / "sms-fixed").touch()
    wait_until(lambda: states(project).get("done") == 3, "a good probe to let the rest through")
    assert states(project) == {"failed": 3, "done": 3}


def test_a_cleared_halt_needs_its_whole_threshold_of_new_failures(project: Project):
    configure_sms(project, "{when: same_label, channels: [sms], count: 3, within: 1h}")
    enqueue_sms(project, 7)
    project.start_daemon()
    wait_until(lambda: "halted: sms" in project.cli("status").stdout, "the halt")
    assert states(project) == {"failed": 3, "queued": 4}

    project.cli("halts", "clear", "sms")
    wait_until(lambda: "halted: sms" in project.cli("status").stdout, "the halt to come back")
    assert states(project) == {"failed": 6, "queued": 1}  # three new failures, not one
    assert "halted: sms — 3× " in project.cli("status").stdout  # counted from the clear


def recorded(store: Store, status: RunStatus, cost: float | None = None) -> FinishedRun:
    """One finished run of outreach/send, as the scheduler records it, at the current time."""
    now = time.time()
    key = f"k{store.db.connection().execute('SELECT COUNT(*) FROM items').fetchone()[0]}"
    store.enqueue("outreach", "send", [(key, {})], now)
    ((claimed, new_run),) = store.claim(
        "outreach",
        "send",
        1,
        now,
        lambda item_id, key, data: NewRun(item_id, "send", "fp", "cfg", None),
    )
    item_id = claimed.item_id
    run = FinishedRun(
        run_id=new_run.run_id, item_id=item_id, status=status, pipeline="outreach", stage="send",
        channel="send", finished_at=now, duration_s=0.1, item_stage="send",
        item_state=ItemState.FAILED, item_data="{}", item_attempt=1, item_ready_at=None,
        item_channel="send", error="boom", label="Boom", cost=cost,
    )  # fmt: skip
    store.finish([run], {})
    return run


def test_a_cleared_stage_or_budget_halt_counts_from_the_clear(tmp_path: Path):
    store = Store(tmp_path)
    rules = (HaltRule("r.yaml:1", "all_failed", count=3),
             HaltRule("r.yaml:2", "budget", pipelines=("outreach",), budget=1.0))  # fmt: skip
    guard = Guard(store, rules, {"outreach": ["send"]})
    with freeze_time("2026-11-21 10:00:00") as frozen:
        for _ in range(3):
            frozen.tick(1)
            halts = guard.check([recorded(store, RunStatus.FAILED)], time.time(), [])
        assert [h.target for h in halts] == ["outreach/send"]
        frozen.tick(1)
        store.clear_holds("outreach/send", ("halt",), "a person", time.time())
        for _ in range(2):
            frozen.tick(1)
            assert guard.check([recorded(store, RunStatus.FAILED)], time.time(), []) == []
        frozen.tick(1)
        (again,) = guard.check([recorded(store, RunStatus.FAILED)], time.time(), [])
        assert again.reason == "the last 3 runs all failed"

        frozen.tick(1)
        (budget,) = guard.check([recorded(store, RunStatus.OK, cost=1.5)], time.time(), [])
        assert budget.reason == "budget spent: 1.50 of 1.00 today"
        frozen.tick(1)
        store.clear_holds("outreach", ("halt",), "a person", time.time())
        frozen.tick(1)
        assert guard.check([recorded(store, RunStatus.OK, cost=0.6)], time.time(), []) == []
        frozen.tick(1)
        (spent,) = guard.check([recorded(store, RunStatus.OK, cost=0.6)], time.time(), [])
        assert spent.reason == "budget spent: 1.20 of 1.00 since its halt was cleared"
    store.close()


# -- 10. what a person changes takes effect -------------------------------------------------
POOLED = """
import os, pathlib, time
import helper

def work(data):
    while data.get("wait") and not pathlib.Path("go").exists():
        time.sleep(0.05)
    return {"version": helper.VERSION, "pid": os.getpid()}
"""


def test_an_edited_module_gets_new_pool_workers_after_their_current_item(project: Project):
    project.write("worker.py", POOLED)
    project.write("helper.py", "VERSION = 1\n")
    project.configure("p:\n  stages:\n    - {name: s, python: 'worker:work', concurrency: 1}\n")
    project.start_daemon()
    project.cli("enqueue", "p", "first")
    wait_until(lambda: (project.item("p", "first") or "").state == "done", "the first item")
    project.cli("enqueue", "p", "slow", "--data", '{"wait": true}')
    wait_until(lambda: project.item("p", "slow").state == "running", "the slow item to start")

    project.write("helper.py", "VERSION = 2\n")  # a file the stage's module imports
    change = "stage p/s replaced: helper.py changed — its pool workers finish their current item"
    wait_until(lambda: change in project.cli("status").stdout, "status to say so")
    assert change in project.daemon_log()
    project.cli("enqueue", "p", "next")
    project.cli("enqueue", "p", "first")  # its input passed before, but the code is new
    (project.root / "go").touch()

    for key in ("slow", "next", "first"):
        wait_until(lambda key=key: project.item("p", key).state == "done", f"{key} to be done")
    data = {key: json.loads(project.item("p", key).data) for key in ("slow", "next", "first")}
    assert data["slow"]["version"] == 1  # the old worker finished its current item
    assert data["next"]["version"] == data["first"]["version"] == 2
    assert data["next"]["pid"] != data["slow"]["pid"]
    assert [r.status for r in project.runs("first")] == ["ok", "ok"]  # not skipped
    (slow,), (following,) = project.runs("slow"), project.runs("next")
    assert following.started_at >= slow.finished_at  # concurrency 1, across the swap too
