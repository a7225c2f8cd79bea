"""Idle means idle: work that waits behind a pause, a halt or a time costs no store
transaction until something can run (counted through the store's interface)."""

from __future__ import annotations

import asyncio

import pytest
from conftest import Project
from pipewarden.clock import Clock
from pipewarden.config import load_config
from pipewarden.daemon import Daemon
from pipewarden.rules import load_rules

QUIET_S = 2.0  # how long a held daemon is watched for writes


async def until(predicate, what: str, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    "hold",
    [("--stage", "sites/work"), ("--channel", "web"), ("--pipeline", "sites")],
    ids=["paused stage", "paused channel", "paused pipeline"],
)
def test_a_held_queue_makes_no_store_transaction(project: Project, hold: tuple[str, str]):
    project.write("w.py", "def work(data):\n    return {}\n")
    project.configure(
        "sites:\n  stages:\n    - {name: work, python: 'w:work', channel: web}\n",
        extra="drain_grace: 5s\n",
    )
    for key in ("a", "b", "c"):
        project.cli("enqueue", "sites", key)
    project.cli("pause", *hold)
    config = load_config(project.config_path)
    daemon = Daemon(config, load_rules(config.rule_paths, config.path.parent), Clock())

    async def scenario() -> int:
        running = asyncio.create_task(daemon.run(watch_files=False))
        await until(lambda: daemon._scheduler is not None and daemon.store.writes > 0, "a pass")
        await asyncio.sleep(0.3)  # the start's own writes settle (reload record, first pass)
        before = daemon.store.writes
        await asyncio.sleep(QUIET_S)  # the measurement: nothing may happen meanwhile
        quiet = daemon.store.writes - before
        daemon.request_stop("test done")
        assert await running == 0
        return quiet

    assert asyncio.run(scenario()) == 0
    assert project.item("sites", "a").state == "queued"  # still waiting, nothing lost


def test_items_deferred_to_a_later_time_make_no_transaction_until_then(project: Project):
    project.write("w.py", "def work(data):\n    return {}\n")
    project.configure(
        "sites:\n  stages:\n    - {name: work, python: 'w:work', channel: sms}\n",
        extra="drain_grace: 5s\n"
        "channels:\n  sms: {days: mon-sun, hours: '00:00-00:01', timezone: UTC}\n",
    )
    project.cli("enqueue", "sites", "a")
    config = load_config(project.config_path)
    daemon = Daemon(config, load_rules(config.rule_paths, config.path.parent), Clock())
    if config.channels["sms"].is_open(Clock().now()):
        pytest.skip("the test's closed hours are open this very minute (00:00 UTC)")

    async def scenario() -> int:
        running = asyncio.create_task(daemon.run(watch_files=False))
        await until(lambda: project.item("sites", "a").state == "deferred", "the deferral")
        await asyncio.sleep(0.3)
        before = daemon.store.writes
        await asyncio.sleep(QUIET_S)
        quiet = daemon.store.writes - before
        daemon.request_stop("test done")
        assert await running == 0
        return quiet

    assert asyncio.run(scenario()) == 0
