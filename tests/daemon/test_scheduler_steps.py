"""The scheduler's loop stepped by a test at times it chooses: each step claims, records
and retries exactly as the running daemon does, with real workers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pytest
from conftest import Project, process_gone, wait_until
from pipewarden import slots
from pipewarden.classifier import Classifier
from pipewarden.clock import Clock
from pipewarden.config import Config, load_config
from pipewarden.events import BATCH_S
from pipewarden.guard import Guard, stages_by_pipeline
from pipewarden.notifier import Notifier
from pipewarden.rules import load_rules
from pipewarden.scheduler import WORKING_LINGER_S, Scheduler
from pipewarden.slots import CLEAN_TO_PIPELINE, StageSlot
from pipewarden.store import Storage, open_configured, open_store
from pipewarden.workers import WorkerPool

WORKER = """
def work(data, ctx):
    if ctx.attempt == 1:
        raise ConnectionResetError("connection reset by peer")
    return {"fetched": True}
"""
POOL_STAGE = "sites:\n  stages:\n    - {name: fetch, python: 'w:work', mode: pool}\n"
START = 1_900_000_000.0  # the test's wall time: a day in 2030


class SetClock(Clock):
    """Wall time set by the test; monotonic time stays real for durations."""

    def __init__(self, now: float):
        self.wall = now

    def now(self) -> float:
        return self.wall


def scheduler_over(config: Config, store: Storage, clock: Clock) -> Scheduler:
    """The daemon's scheduler over `store`, with the config's rules, stepped by the test."""
    rules = load_rules(config.rule_paths, config.path.parent)
    return Scheduler(
        config, store, Classifier(rules), Guard(store, rules.halts, stages_by_pipeline(config)),
        Notifier(store, config.notify, clock), clock, None, rng=random.Random(1),
    )  # fmt: skip


async def settled(scheduler: Scheduler, timeout: float = 20.0) -> None:
    """Until every attempt the last step started has ended (its worker is a real process)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while scheduler.in_flight:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the attempts did not end")
        await asyncio.sleep(0.01)


async def until(predicate: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    """Until `predicate()` holds, the loop running meanwhile."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def test_stepping_the_loop_claims_finishes_and_retries_at_the_chosen_times(project: Project):
    project.write("w.py", WORKER)
    project.configure(
        "sites:\n  stages:\n    - name: fetch\n      python: 'w:work'\n"
        "      retry: {max_attempts: 3, backoff: 60s, jitter: 0}\n"
    )
    config = load_config(project.config_path)
    store = open_store(config.state_dir)
    clock = SetClock(START)
    store.enqueue("sites", "fetch", [("a.example", {})], START)
    scheduler = scheduler_over(config, store, clock)

    async def steps() -> None:
        assert await scheduler.step()  # claims: the run row is written before the worker runs
        assert store.item("sites", "a.example").state == "running"
        await settled(scheduler)  # judged as it ended, at START: due again at START + 60
        clock.wall = START + 5
        assert await scheduler.step()  # records the failure
        item = store.item("sites", "a.example")
        assert (item.state, item.ready_at, item.last_label) == (
            "retrying",
            START + 60,
            "Connection dropped",
        )
        clock.wall = START + 59
        assert await scheduler.step()  # not due yet: nothing is claimed
        assert store.item("sites", "a.example").state == "retrying"
        clock.wall = START + 65
        assert await scheduler.step()  # due: the second attempt starts
        await settled(scheduler)
        assert await scheduler.step()
        await scheduler.drain(1.0, "test done")

    try:
        asyncio.run(steps())
        item = store.item("sites", "a.example")
        assert (item.state, item.attempt) == ("done", 2)
        runs = store.item_runs(item.id)
        assert [(r.attempt, r.status, r.started_at) for r in runs] == [
            (1, "failed", START), (2, "ok", START + 65),
        ]  # fmt: skip
    finally:
        scheduler.writer.close()
        store.close()


GATED = """
import pathlib
import time


def work(data, ctx):
    if ctx.key == "a":  # the first item waits for the test, then fails or succeeds
        while not pathlib.Path("gate").exists():
            time.sleep(0.01)
        if pathlib.Path("fail").exists():
            raise ConnectionResetError("connection reset by peer")
    return {}
"""
HALT_AT_ONCE = """
halts:
  - when: same_label
    channels: [web]
    count: 1
    within: 1h
"""


@contextlib.contextmanager
def stepped(
    project: Project, more: str = "", worker: str = GATED
) -> Iterator[tuple[Scheduler, object]]:
    """A scheduler over a pool stage of one worker, its first items queued (see warm_up);
    its writer and store closed at the end, pass or fail."""
    project.write("w.py", worker)
    project.write("halt.yaml", HALT_AT_ONCE)
    project.configure(
        "sites:\n  stages:\n    - name: fetch\n      python: 'w:work'\n      mode: pool\n"
        f"      channel: web\n      retry: {{max_attempts: 3, backoff: 60s, jitter: 0}}\n{more}",
        rules=(str(project.root / "halt.yaml"),),
    )
    config = load_config(project.config_path)
    store = open_store(config.state_dir)
    (stage,) = config.pipelines["sites"].stages
    store.enqueue("sites", "fetch", [("w1", {}), ("w2", {})], START, stage.channel_for)
    clock = SetClock(START)
    scheduler = scheduler_over(config, store, clock)
    try:
        yield scheduler, store
    finally:
        scheduler.writer.close()
        store.close()


async def warm_up(scheduler: Scheduler, store) -> None:
    """Two quick items through the stage, so that its pace is known (items are claimed
    ahead for a quick stage only); then a (held by the test), b and c are queued."""
    for _ in range(2):
        assert await scheduler.step()
        await settled(scheduler)
    assert await scheduler.step()
    assert [store.item("sites", key).state for key in ("w1", "w2")] == ["done", "done"]
    (stage,) = scheduler.config.pipelines["sites"].stages
    store.enqueue("sites", "fetch", [("a", {}), ("b", {}), ("c", {})], START, stage.channel_for)


def untouched(store, key: str) -> bool:
    """Queued at its first attempt, with no run of it recorded: as if never claimed."""
    item = store.item("sites", key)
    return (item.state, item.attempt, store.item_runs(item.id)) == ("queued", 0, [])


def test_a_halt_raised_while_an_item_is_handed_ahead_puts_it_back_untouched(project: Project):
    with stepped(project) as (scheduler, store):
        (project.root / "fail").touch()

        async def steps() -> None:
            await warm_up(scheduler, store)
            assert await scheduler.step()  # a goes to the worker, b and c are handed ahead of it
            assert [store.item("sites", k).state for k in "bc"] == ["running"] * 2  # rows first
            (project.root / "gate").touch()
            await settled(scheduler)  # a failed: b waits for the guard's judgement, not sent
            assert await scheduler.step()  # a's failure halts web; b goes back in that commit
            assert [h.target for h in store.active_holds()] == ["web"]
            assert untouched(store, "b") and untouched(store, "c")
            assert scheduler.in_flight == 0
            await scheduler.drain(1.0, "test done")

        asyncio.run(steps())
        assert untouched(store, "b") and untouched(store, "c")


def test_a_pause_seen_while_an_item_is_handed_ahead_puts_it_back_untouched(project: Project):
    with stepped(project) as (scheduler, store):

        async def steps() -> None:
            await warm_up(scheduler, store)
            assert await scheduler.step()
            assert [store.item("sites", k).state for k in "bc"] == ["running"] * 2
            project.cli("pause", "--stage", "sites/fetch")
            assert await scheduler.step()  # sees the pause: b and c go back while a still runs
            assert untouched(store, "b") and untouched(store, "c")
            assert store.item("sites", "a").state == "running"
            (project.root / "gate").touch()
            await settled(scheduler)  # a went through; the worker is given nothing after it
            assert await scheduler.step()
            assert store.item("sites", "a").state == "done"
            assert scheduler.in_flight == 0
            await scheduler.drain(1.0, "test done")

        asyncio.run(steps())
        assert untouched(store, "b") and untouched(store, "c")


def test_a_stop_puts_back_what_was_handed_ahead(project: Project):
    with stepped(project) as (scheduler, store):

        async def steps() -> None:
            await warm_up(scheduler, store)
            assert await scheduler.step()
            assert [store.item("sites", k).state for k in "bc"] == ["running"] * 2
            (project.root / "gate").touch()
            assert await scheduler.drain(10.0, "test done")  # a ends; b and c are never sent

        asyncio.run(steps())
        assert store.item("sites", "a").state == "done"
        assert untouched(store, "b") and untouched(store, "c")


def test_an_on_interrupt_hold_stage_is_never_handed_an_item_ahead(project: Project):
    with stepped(project, "      on_interrupt: hold\n") as (scheduler, store):

        async def steps() -> None:
            await warm_up(scheduler, store)
            assert await scheduler.step()
            assert store.item("sites", "a").state == "running"
            assert untouched(store, "b") and untouched(store, "c")  # a crash holds nothing unrun
            (project.root / "gate").touch()
            assert await scheduler.drain(10.0, "test done")

        asyncio.run(steps())


def test_a_quick_stage_is_handed_about_50_ms_of_work_ahead_per_worker(project: Project):
    """No-op items: a commit covers many (each pays less for it); slower ones: a few, so
    that none shows as running long before it runs; a slow stage: none."""
    project.configure(
        "sites:\n  stages:\n    - name: fetch\n      python: 'w:work'\n      mode: pool\n"
        "      concurrency: 2\n"
    )
    config = load_config(project.config_path)
    (stage,) = config.pipelines["sites"].stages
    slot = StageSlot(config.pipelines["sites"], stage, WorkerPool(stage))
    assert slot.ahead_allowed == 0  # its pace is not known yet
    ahead = {}
    for pace in (0.0001, 0.0004, 0.001, 0.005, 0.1, 0.6):
        slot.pace = pace
        ahead[pace] = slot.ahead_allowed
    assert ahead == {
        0.0001: 2 * 256,
        0.0004: 2 * 125,
        0.001: 2 * 50,
        0.005: 2 * 10,
        0.1: 2 * 8,
        0.6: 0,
    }


class SetMonotonicClock(SetClock):
    """Wall and monotonic time both set by the test."""

    def __init__(self, now: float):
        super().__init__(now)
        self.mono = 1000.0

    def monotonic(self) -> float:
        return self.mono


def test_the_loop_counts_as_working_between_a_quick_stages_items(project: Project):
    """The API's reads keep to their share of the loop while work runs (loopshare.py). A
    quick stage's workers spend most of a busy run between items, waiting for the commit
    that claims the next: nothing is in flight then, yet the loop is as busy as ever."""
    project.write("w.py", WORKER)
    project.configure(POOL_STAGE)
    config = load_config(project.config_path)
    store = open_store(config.state_dir)
    clock = SetMonotonicClock(START)
    store.enqueue("sites", "fetch", [("a.example", {})], START)
    scheduler = scheduler_over(config, store, clock)

    async def steps() -> list[tuple[int, bool]]:
        seen = [(scheduler.in_flight, scheduler.working)]
        assert await scheduler.step()
        seen.append((scheduler.in_flight, scheduler.working))
        await settled(scheduler)
        seen.append((scheduler.in_flight, scheduler.working))
        clock.mono += WORKING_LINGER_S + 0.01
        seen.append((scheduler.in_flight, scheduler.working))
        await scheduler.drain(1.0, "test done")
        return seen

    try:
        # before any attempt; one under way; just ended; ended longer ago than the linger
        assert asyncio.run(steps()) == [(0, False), (1, True), (0, True), (0, False)]
    finally:
        scheduler.writer.close()
        store.close()


def test_a_runs_finish_is_told_to_the_event_stream_only_once_it_is_committed(project: Project):
    """`runs tail -f` subscribes, then reads from the store what ended before: an event sent
    before its run was committed reached neither (the follower subscribed after it, and
    read the store before the commit) and the run was never shown."""
    project.write("w.py", WORKER)
    project.configure(POOL_STAGE)
    config = load_config(project.config_path)
    store = open_store(config.state_dir)
    reader = open_store(config.state_dir, read_only=True)  # as a follower reads it
    clock = SetClock(START)
    store.enqueue("sites", "fetch", [("a.example", {})], START)
    scheduler = scheduler_over(config, store, clock)
    told: list[tuple[str, str]] = []  # (the event's status, the store's then)

    def told_as_committed(batch: bytes, events: int, last_id: int) -> None:
        for frame in batch.decode().split("\n\n"):
            if "event: run_finished" in frame:
                event = json.loads(frame.partition("data: ")[2])
                (run,) = reader.runs_by_id([event["run_id"]])
                told.append((event["status"], run.status))

    scheduler.events.subscribe().push = told_as_committed  # checked as the batch is sent

    async def steps() -> None:
        assert await scheduler.step()
        await settled(scheduler)
        await asyncio.sleep(BATCH_S * 2)  # a batch would go out now: the end is not committed
        assert await scheduler.step()  # records the failure
        await asyncio.sleep(BATCH_S * 2)  # the batch goes out
        await scheduler.drain(1.0, "test done")

    try:
        asyncio.run(steps())
        assert told == [("failed", "failed")]
    finally:
        scheduler.writer.close()
        store.close()
        reader.close()


def test_a_claim_whose_commit_landed_unheard_is_given_back_and_run_once(
    project: Project, pg_cluster, pg_url: str
):
    """PostgreSQL commits a pass that claimed an item, and the connection drops before the
    daemon hears so. The pass counts as failed: kept, its item would stay running with
    no worker (the fleet recovers only a dead daemon's runs) — stuck for good."""
    from lost_reply import LostReplyProxy

    server = urlsplit(pg_url)
    proxy = LostReplyProxy(server.port)
    project.write("w.py", "def work(data, ctx):\n    return {'fetched': True}\n")
    project.configure(
        POOL_STAGE,
        extra=f"store: '{proxy.url(server.path.lstrip('/'), server.username)}'\n",
    )
    config = load_config(project.config_path)
    store = open_configured(config)
    clock = SetClock(START)
    store.enqueue("sites", "fetch", [("a.example", {})], START)
    scheduler = scheduler_over(config, store, clock)

    async def steps() -> None:
        proxy.lose_next_commit_answer()
        assert not await scheduler.step()  # the claim's commit: landed, its answer lost
        assert proxy.lost.is_set() and scheduler.in_flight == 0
        for _ in range(3):  # gives the claim back, then claims again; the worker runs
            assert await scheduler.step()
            await settled(scheduler)
        await scheduler.drain(1.0, "test done")

    try:
        asyncio.run(steps())
        item = store.item("sites", "a.example")
        assert (item.state, item.attempt) == ("done", 1)
        assert [run.status for run in store.item_runs(item.id)] == ["ok"]
    finally:
        scheduler.writer.close()
        store.close()
        proxy.close()


async def clean_streak(scheduler: Scheduler, store, keys: str = "abc") -> None:
    """CLEAN_TO_PIPELINE quick items through the stage: its pace is known and its workers
    are sent their next items with the current one; then `keys` are queued (a, held by the
    test, first)."""
    (stage,) = scheduler.config.pipelines["sites"].stages
    warm = [(f"w{n:02}", {}) for n in range(CLEAN_TO_PIPELINE)]
    store.enqueue("sites", "fetch", warm, START, stage.channel_for)
    while store.pending_count([], [], []) or scheduler.in_flight:
        assert await scheduler.step()
        await settled(scheduler)
    store.enqueue("sites", "fetch", [(key, {}) for key in keys], START, stage.channel_for)


def sent_at_most(monkeypatch, depth: int) -> None:
    """A pipelining worker is sent `depth` items ahead of its reply, whatever its pace."""
    monkeypatch.setattr(slots, "PIPELINE_MAX", depth)
    monkeypatch.setattr(slots, "PIPELINE_S", 1.0)


@pytest.mark.parametrize("depth", [1, 3])
def test_the_items_sent_with_one_that_raises_a_halt_run_and_the_rest_go_back(
    project: Project, monkeypatch, depth: int
):
    """A pool that pipelines sends the next items (b, or b c d) with a: they have their
    worker's attention the moment a replies, before the guard judges a. What no worker
    holds yet goes back untouched."""
    sent_at_most(monkeypatch, depth)
    sent, rest = "bcd"[:depth], "xy"
    with stepped(project) as (scheduler, store):
        (project.root / "fail").touch()

        async def steps() -> None:
            await clean_streak(scheduler, store, "a" + sent + rest)
            assert await scheduler.step()  # a goes to the worker, and those sent with it
            (project.root / "gate").touch()
            await settled(scheduler)  # a failed; those the worker had read went through
            assert await scheduler.step()  # a's failure halts web; the rest go back
            assert [h.target for h in store.active_holds()] == ["web"]
            await scheduler.drain(1.0, "test done")

        asyncio.run(steps())
        assert store.item("sites", "a").state == "retrying"
        for key in sent:
            item = store.item("sites", key)
            assert (item.state, [run.status for run in store.item_runs(item.id)]) == (
                "done",
                ["ok"],
            ), key
        assert all(untouched(store, key) for key in rest)


@pytest.mark.parametrize("depth", [1, 3])
def test_the_items_sent_with_one_that_gets_no_reply_go_back_untouched(
    project: Project, monkeypatch, depth: int
):
    """a never replies (the stop cuts it short): its worker never read what was sent with
    it."""
    sent_at_most(monkeypatch, depth)
    with stepped(project) as (scheduler, store):

        async def steps() -> None:
            await clean_streak(scheduler, store, "abcde")
            assert await scheduler.step()  # a goes to the worker, and those sent with it
            assert await scheduler.drain(0.5, "test done")  # a is interrupted mid-item

        asyncio.run(steps())
        a = store.item("sites", "a")
        assert [run.status for run in store.item_runs(a.id)] == ["interrupted"]
        assert all(untouched(store, key) for key in "bcde")


DIES_AFTER_B = GATED.replace(
    '        while not pathlib.Path("gate")',
    '        pathlib.Path("a.started").touch()\n        while not pathlib.Path("gate")',
).replace(
    "    return {}",
    """    if ctx.key == "b":  # replies, then its worker is killed before it reads the next
        import os, threading
        pathlib.Path("worker.pid").write_text(str(os.getpid()))
        threading.Timer(0.05, os.kill, (os.getpid(), 9)).start()
    return {}""",
)


async def killed_after_b(project: Project, scheduler: Scheduler, store, keys: str = "abc"):
    """a goes to the worker with the items sent after it; a and b reply, then the worker
    is killed, all before the daemon reads a's reply (the test holds the loop meanwhile)."""
    await clean_streak(scheduler, store, keys)
    assert await scheduler.step()
    await until(lambda: (project.root / "a.started").exists(), "a to start")
    (project.root / "gate").touch()
    pid_file = project.root / "worker.pid"
    worker = int(wait_until(lambda: pid_file.exists() and pid_file.read_text(), "b"))
    wait_until(lambda: process_gone(worker), "the worker to die")  # the loop waits
    await settled(scheduler)
    assert await scheduler.step()
    await scheduler.drain(1.0, "test done")


def test_an_item_sent_ahead_that_replied_before_its_worker_died_keeps_its_result(
    project: Project,
):
    """a and b both reply, then the worker dies, all before the daemon reads a's reply (the
    test holds the loop): b's reply stands. Failed as a lost item, it would run again."""
    with stepped(project, worker=DIES_AFTER_B) as (scheduler, store):
        asyncio.run(killed_after_b(project, scheduler, store))
        for key in "ab":
            item = store.item("sites", key)
            assert (item.state, [r.status for r in store.item_runs(item.id)]) == ("done", ["ok"])


DIES_DURING_C = DIES_AFTER_B.replace(
    "    return {}",
    """    if ctx.key == "c":  # read at once after b's reply, busy when its worker is killed
        time.sleep(30)
    return {}""",
    1,
)


def test_items_sent_after_one_its_dead_worker_never_replied_to_go_back_untouched(
    project: Project, monkeypatch
):
    """b, c and d are sent with a. a and b reply, c is under way when the worker dies: c
    may have started, so it fails as its worker died (it is not run again untold); d,
    behind it, was never begun and goes back untouched, as does e, never sent."""
    sent_at_most(monkeypatch, 3)
    with stepped(project, worker=DIES_DURING_C) as (scheduler, store):
        asyncio.run(killed_after_b(project, scheduler, store, "abcde"))
        for key in "ab":
            item = store.item("sites", key)
            assert (item.state, [r.status for r in store.item_runs(item.id)]) == ("done", ["ok"])
        c = store.item("sites", "c")
        (run,) = store.item_runs(c.id)
        assert (c.state, run.status, run.error) == (
            "retrying",
            "failed",
            "worker exited with signal 9 (SIGKILL)",
        )
        assert untouched(store, "d") and untouched(store, "e")


REPLIES_THEN_LINGERS = """
import os, sys, time
sys.stdin.readline()
os.write(1, b'{"progress": 0.5}\\n{"ok": true, "data": {"sent": true}}\\n')  # one read
time.sleep(600)
"""


def test_a_stop_in_the_very_turn_a_reply_came_records_the_result(project: Project, monkeypatch):
    """The drain's cancel and the worker's reply met in one turn of the loop: the attempt
    was woken cancelled with its reply in hand, and recorded as interrupted, so an item
    whose work was done was queued to run again."""
    project.write("replies.py", REPLIES_THEN_LINGERS)
    project.configure(
        "sites:\n  stages:\n    - name: send\n      command: [python3, replies.py]\n"
        "      mode: pool\n      grace: 1s\n"
    )
    config = load_config(project.config_path)
    store = open_store(config.state_dir)
    (stage,) = config.pipelines["sites"].stages
    store.enqueue("sites", "send", [("a", {})], START, stage.channel_for)
    scheduler = scheduler_over(config, store, SetClock(START))

    def stopped_at_progress(run_id: str, progress: object) -> None:
        for task in scheduler._tasks:  # the stop, in the read that brings the reply
            task.cancel()

    monkeypatch.setattr(scheduler, "_record_progress", stopped_at_progress)

    async def steps() -> None:
        assert await scheduler.step()
        await until(lambda: not scheduler._tasks, "the attempt to end")
        assert await scheduler.drain(5.0, "test done")

    try:
        asyncio.run(steps())
        item = store.item("sites", "a")
        (run,) = store.item_runs(item.id)
        assert (run.status, run.error) == ("ok", None)
        assert item.state == "done" and json.loads(item.data) == {"sent": True}
    finally:
        scheduler.writer.close()
        store.close()
