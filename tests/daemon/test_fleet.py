"""A fleet: several daemons, each with its own state dir, sharing one PostgreSQL store.
Real daemons, a real server (the session's throwaway cluster), real kill -9."""

from __future__ import annotations

import signal
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import DEADLINE_S, Followed, Project, process_gone, wait_until
from pipewarden.store import Storage, open_store

FAST = "def work(data):\n    return {'seen': True}\n"
SLOW = """
import json, os, pathlib, sys, time
item = json.loads(sys.stdin.readline())
pathlib.Path(f"../started-{item['item']}-{os.getpid()}").touch()
while pathlib.Path(f"../slow-{item['item']}").exists():
    time.sleep(0.05)
print(json.dumps({"ok": True}))
"""


SENDER = """
def send(data):
    if data["contact_method"] == "sms":
        raise RuntimeError("Twilio: rate limit exceeded (error 20429)")
    return {"sent": True}
"""
SMS_HALT = "halts:\n  - {when: same_label, channels: [sms], count: 3, within: 1h}\n"


def fleet(
    root: Path, url: str, count: int, pipelines: str, extra: str = "", halts: str = ""
) -> list[Project]:
    """`count` daemons' projects: the same config and rules, each its own state dir."""
    projects = []
    for n in range(count):
        project = Project(root / f"daemon-{n}")
        project.root.mkdir()
        project.write("fast.py", FAST)
        project.write("slow.py", SLOW)
        project.write("sender.py", SENDER)
        project.write("halts.yaml", halts or "rules: []\n")
        project.configure(pipelines, extra=f"drain_grace: 2s\nstore: '{url}'\n{extra}",
                          rules=("halts.yaml",))  # fmt: skip
        projects.append(project)
    return projects


def shared(url: str) -> Storage:
    return open_store(Path("unused"), url=url)


@pytest.fixture
def stop_fleet() -> list[Project]:
    projects: list[Project] = []
    yield projects
    for project in projects:
        project.stop_all()


@pytest.mark.parametrize("daemons", [2, 3])
def test_daemons_share_the_queue_and_never_run_a_stage_of_an_item_twice(
    tmp_path: Path, pg_url: str, daemons: int, stop_fleet: list[Project]
):
    projects = fleet(tmp_path, pg_url, daemons, """
        sites:
          stages:
            - {name: one, python: "fast:work", concurrency: 2}
            - {name: two, python: "fast:work", concurrency: 2}
        """)  # fmt: skip
    stop_fleet += projects
    running = [project.start_daemon() for project in projects]
    items = 600
    projects[0].write("items.jsonl", "".join(f'{{"key": "k{n}"}}\n' for n in range(items)))
    projects[0].cli("enqueue", "sites", "--file", "items.jsonl")
    store = shared(pg_url)
    try:
        wait_until(lambda: store.item_totals().get(("sites", "two", "done")) == items,
                   "every item done", timeout=90)  # fmt: skip
        for daemon in running:
            daemon.send_signal(signal.SIGTERM)
        assert all(daemon.wait(30) == 0 for daemon in running)
        ok = [(r.stage, r.item_key, r.daemon) for r in store.Run.select().where(
            store.Run.status == "ok")]  # fmt: skip
    finally:
        store.close()
    twice = [key for key, n in Counter((stage, key) for stage, key, _ in ok).items() if n > 1]
    assert len(ok) == 2 * items and twice == []
    shares = Counter(daemon for _, _, daemon in ok)
    assert len(shares) == daemons, shares  # each daemon did a share of the work
    assert {d.rsplit(":", 1)[1] for d in shares} == {str(d.pid) for d in running}


def test_a_killed_daemons_runs_are_recovered_by_another_and_a_live_ones_never(
    tmp_path: Path, pg_url: str, stop_fleet: list[Project], kill_leftovers: list[int]
):
    a, b = fleet(tmp_path, pg_url, 2, """
        sites:
          stages:
            - {name: capture, command: [python3, slow.py], concurrency: 1, grace: 1s}
        """, extra="lease: 2s\n")  # fmt: skip
    stop_fleet += [a, b]
    for key in ("a-item", "b-item"):
        (tmp_path / f"slow-{key}").touch()
    daemon_a = a.start_daemon()
    a.cli("enqueue", "sites", "a-item")
    wait_until(lambda: list(tmp_path.glob("started-a-item-*")), "A's worker to start")
    daemon_b = b.start_daemon()
    b.cli("enqueue", "sites", "b-item")
    wait_until(lambda: list(tmp_path.glob("started-b-item-*")), "B's worker")
    store = shared(pg_url)
    try:
        (a_worker,) = [int(p.name.rsplit("-", 1)[1]) for p in tmp_path.glob("started-a-item-*")]
        kill_leftovers.append(a_worker)
        daemon_a.send_signal(signal.SIGKILL)
        daemon_a.wait(10)

        def a_run_recovered() -> bool:
            return store.item("sites", "a-item").state != "running"

        wait_until(a_run_recovered, "B to recover A's run", timeout=2 + 5 + 1)
        (interrupted,) = [r for r in store.item_runs(store.item("sites", "a-item").id)]
        assert interrupted.status == "interrupted"
        assert interrupted.error == f"daemon {interrupted.daemon} stopped heartbeating"
        assert interrupted.daemon.endswith(f":{daemon_a.pid}")
        wait_until(lambda: process_gone(a_worker), "the dead daemon's worker to be killed", 5)
        # B's own slow run was never touched, through all of B's recovery passes
        (b_run,) = store.item_runs(store.item("sites", "b-item").id)
        assert b_run.status == "running" and b_run.daemon.endswith(f":{daemon_b.pid}")
        for key in ("a-item", "b-item"):
            (tmp_path / f"slow-{key}").unlink()
        keys = ("a-item", "b-item")
        wait_until(lambda: all(store.item("sites", k).state == "done" for k in keys),
                   "the survivor to finish everything")  # fmt: skip
        statuses = [r.status for r in store.item_runs(store.item("sites", "b-item").id)]
        assert statuses == ["ok"]
    finally:
        store.close()
    assert "of a daemon that stopped heartbeating: requeued" in b.daemon_log()
    daemon_b.send_signal(signal.SIGTERM)
    assert daemon_b.wait(20) == 0


def test_a_halt_raised_on_one_daemon_stops_claims_on_every_daemon_and_is_told_once(
    tmp_path: Path, pg_url: str, stop_fleet: list[Project], http_receiver
):
    projects = fleet(tmp_path, pg_url, 2, """
        outreach:
          stages:
            - {name: send, python: "sender:send", channel: "{data.contact_method}",
               concurrency: 1, retry: {max_attempts: 1}}
        """, extra=f"notify:\n  targets: [{{url: '{http_receiver.url}'}}]\n",
        halts=SMS_HALT)  # fmt: skip
    stop_fleet += projects
    daemons = [project.start_daemon() for project in projects]
    lines = "".join(
        f'{{"key": "{m}-{n}", "data": {{"contact_method": "{m}"}}}}\n'
        for n in range(20) for m in ("sms", "email")
    )  # fmt: skip
    projects[0].write("items.jsonl", lines)
    projects[0].cli("enqueue", "outreach", "--file", "items.jsonl")
    store = shared(pg_url)
    try:

        def sms(state: str) -> int:
            return store.Item.select().where((store.Item.channel == "sms")
                                             & (store.Item.state == state)).count()  # fmt: skip

        wait_until(lambda: store.item_totals().get(("outreach", "send", "done")) == 20,
                   "email to flow on both daemons")  # fmt: skip
        wait_until(lambda: store.active_holds(), "the halt")
        failed = sms("failed")
        assert 3 <= failed <= 4  # the third failure halts; one more may have been in flight
        assert sms("queued") == 20 - failed  # on both daemons: the rest wait, unclaimed
        (hold,) = store.active_holds()
        assert hold.target == "sms"
        wait_until(lambda: "pipewarden: sms halted" in http_receiver.titles(), "its notification")
        for daemon in daemons:
            daemon.send_signal(signal.SIGTERM)
        assert all(daemon.wait(20) == 0 for daemon in daemons)
        assert sms("queued") == 20 - failed
    finally:
        store.close()
    assert http_receiver.titles().count("pipewarden: sms halted") == 1  # one daemon told it


NAPPER = "import time\n\ndef work(data):\n    time.sleep(0.05)\n    return {}\n"


@pytest.mark.parametrize("cap", ["sites/capture", "web"])  # a stage's, then a channel's
def test_global_concurrency_caps_the_fleet_never_exceeded_under_contention(
    tmp_path: Path, pg_url: str, stop_fleet: list[Project], cap: str
):
    # One slot a daemon: the cap (2) is below the fleet's 3 slots, and reaching it takes two
    # daemons (with more, the first to claim takes the whole cap at once and, recording its
    # runs' ends and its next claims in one commit, may keep it: a fleet shares a capped
    # stage by luck, not by turns).
    projects = fleet(tmp_path, pg_url, 3, """
        sites:
          stages:
            - {name: capture, python: "napper:work", concurrency: 1, channel: web}
        """, extra=f"global_concurrency: {{{cap}: 2}}\n")  # fmt: skip
    stop_fleet += projects
    for project in projects:
        project.write("napper.py", NAPPER)
    daemons = [project.start_daemon() for project in projects]
    projects[0].write("items.jsonl", "".join(f'{{"key": "k{n}"}}\n' for n in range(60)))
    projects[0].cli("enqueue", "sites", "--file", "items.jsonl")
    store = shared(pg_url)
    samples = []
    try:

        def done() -> bool:
            totals = store.item_totals()
            samples.append(totals.get(("sites", "capture", "running"), 0))
            return totals.get(("sites", "capture", "done")) == 60

        wait_until(done, "every item done", timeout=60)
        ran_on = {r.daemon for r in store.Run.select()}
    finally:
        store.close()
    for daemon in daemons:
        daemon.send_signal(signal.SIGTERM)
    assert all(daemon.wait(20) == 0 for daemon in daemons)
    assert max(samples) == 2, Counter(samples)  # reached, never exceeded (3 slots locally)
    assert len(ran_on) >= 2


def test_a_global_concurrency_changed_in_the_config_applies_at_the_reload(
    tmp_path: Path, pg_url: str, stop_fleet: list[Project]
):
    pipelines = """
        sites:
          stages:
            - {name: capture, python: "napper:work", concurrency: 3}
        """
    (project,) = fleet(
        tmp_path, pg_url, 1, pipelines, extra="global_concurrency: {sites/capture: 1}\n"
    )
    stop_fleet.append(project)
    project.write("napper.py", NAPPER.replace("0.05", "0.3"))
    daemon = project.start_daemon()
    project.write("items.jsonl", "".join(f'{{"key": "k{n}"}}\n' for n in range(40)))
    project.cli("enqueue", "sites", "--file", "items.jsonl")
    store = shared(pg_url)
    try:
        running = lambda: store.item_totals().get(("sites", "capture", "running"), 0)  # noqa: E731
        wait_until(lambda: running() == 1, "one run at a time", timeout=20)
        raised = f"drain_grace: 2s\nstore: '{pg_url}'\nglobal_concurrency: {{sites/capture: 3}}\n"
        project.configure(pipelines, extra=raised, rules=("halts.yaml",))
        project.cli("reload")  # (or the config file's watcher, first)
        wait_until(lambda: running() == 3, "three at a time after the reload", timeout=20)
    finally:
        store.close()
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(20) == 0
    assert "global_concurrency {'sites/capture': 3}" in (project.root / "daemon-0.log").read_text()


def test_postgresql_restarted_under_the_fleet_loses_nothing_and_says_so(
    tmp_path: Path, pg_cluster, pg_url: str, stop_fleet: list[Project]
):
    projects = fleet(tmp_path, pg_url, 2, """
        sites:
          stages:
            - {name: capture, python: "napper:work", concurrency: 2}
            - {name: score, python: "fast:work", concurrency: 2}
        """)  # fmt: skip
    stop_fleet += projects
    for project in projects:
        project.write("napper.py", NAPPER)
    daemons = [project.start_daemon() for project in projects]
    items = 200
    projects[0].write("items.jsonl", "".join(f'{{"key": "k{n}"}}\n' for n in range(items)))
    projects[0].cli("enqueue", "sites", "--file", "items.jsonl")
    store = shared(pg_url)
    try:
        wait_until(lambda: store.item_totals().get(("sites", "score", "done"), 0) >= 20,
                   "some items done")  # fmt: skip
    finally:
        store.close()
    pg_cluster.down("fast")  # every daemon's connections dropped mid-work
    wait_until(lambda: all("unreachable" in p.daemon_log() for p in projects),
               "each daemon to say the store is unreachable")  # fmt: skip
    pg_cluster.up()
    store = shared(pg_url)
    try:
        try:
            wait_until(lambda: store.item_totals().get(("sites", "score", "done")) == items,
                       "every item done after the restart", timeout=60)  # fmt: skip
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {store.item_totals()}") from None
        ok = Counter((r.stage, r.item_key) for r in store.Run.select().where(
            store.Run.status == "ok"))  # fmt: skip
    finally:
        store.close()
    assert len(ok) == 2 * items and max(ok.values()) == 1
    for project, daemon in zip(projects, daemons, strict=True):
        log = project.daemon_log()
        assert "unreachable" in log and "writable again" in log and "Traceback" not in log
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(20) == 0


def test_runs_tail_follow_shows_the_runs_of_every_daemon_of_the_fleet(
    tmp_path: Path, pg_url: str, stop_fleet: list[Project]
):
    """The local daemon's event stream tells only of its own runs: a follower on one host
    of the fleet never saw the others'."""
    projects = fleet(tmp_path, pg_url, 2, """
        sites:
          stages:
            - {name: one, python: "fast:work", concurrency: 2}
        """)  # fmt: skip
    stop_fleet += projects
    daemons = [project.start_daemon() for project in projects]
    followed = Followed(projects[0])
    items = 300
    try:
        wait_until(lambda: followed.lines, "the header")
        projects[0].write("items.jsonl", "".join(f'{{"key": "k{n}"}}\n' for n in range(items)))
        projects[0].cli("enqueue", "sites", "--file", "items.jsonl")
        wait_until(lambda: len(followed.lines) > items, "a line for every run", timeout=60)
    finally:
        assert followed.stop() == 0
    store = shared(pg_url)
    try:
        by_daemon = Counter(run.daemon for run in store.Run.select())
    finally:
        store.close()
    assert len(by_daemon) == 2, by_daemon  # both took a share
    shown = Counter(line.split()[4] for line in followed.lines[1:])
    assert sorted(shown) == sorted(f"k{n}" for n in range(items))
    assert set(shown.values()) == {1}
    for daemon in daemons:
        daemon.send_signal(signal.SIGTERM)


def test_a_follower_of_a_fleet_shows_a_run_committed_after_one_that_started_later(
    tmp_path: Path,
):
    """One daemon's pass claims at 1,000.0 and commits after another's that claimed at
    1,001.5: the follower, already past 1,001.5, must still show it (on any store; a
    fleet's follower looks back FLEET_LAG_S)."""
    from pipewarden.runfeed import FLEET_LAG_S, RunFilter, poll_store

    store = open_store(tmp_path)
    store.enqueue("sites", "one", [("early", {}), ("late", {})], 1.0)
    ids = {item.key: item.id for item in store.Item.select()}

    def ended(run_id: str, key: str, started_at: float) -> None:
        store.db.connection().execute(
            "INSERT INTO runs (id, pipeline, stage, item_id, item_key, attempt, status,"
            " started_at) VALUES (?, 'sites', 'one', ?, ?, 1, 'ok', ?)",
            (run_id, ids[key], key, started_at),
        )
        store.db.connection().commit()

    reader = open_store(tmp_path, read_only=True)
    followed = poll_store(reader, RunFilter(), 999.0, set(), FLEET_LAG_S)
    shown = ThreadPoolExecutor(1)  # a run never shown fails the wait, not the whole suite
    try:
        ended("1", "late", 1001.5)
        assert shown.submit(next, followed).result(DEADLINE_S).item_key == "late"
        ended("2", "early", 1000.0)
        assert shown.submit(next, followed).result(DEADLINE_S).item_key == "early"
    finally:
        shown.shutdown(wait=False)
        store.close()
