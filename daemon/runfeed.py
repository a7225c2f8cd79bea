"""Runs as `pipewarden runs tail` lists and follows them: the latest by filter, then each
new one as it ends — from the daemon's event stream when one runs, else (and always for a
fleet's shared store, whose other daemons' runs the local one never hears of) by polling
the store (its lookups: store/sqlite/lookups.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipewarden.client import DaemonApi
    from pipewarden.store import Store

POLL_S = 0.5  # how often the store is read when no daemon streams its events
# A fleet's follower looks this far back from the latest start it saw: one daemon's pass
# may commit its runs after another's that began later.
FLEET_LAG_S = 2.0


@dataclass(frozen=True)
class RunFilter:
    pipeline: str | None = None
    stage: str | None = None
    status: str | None = None
    since: float | None = None  # started at or after this UNIX time

    def matches(self, run: Any) -> bool:
        return (
            (self.pipeline is None or run.pipeline == self.pipeline)
            and (self.stage is None or run.stage == self.stage)
            and (self.status is None or run.status == self.status)
        )


def latest_runs(store: Store, limit: int | None, where: RunFilter) -> list[Any]:
    """The latest runs that match, oldest first (`limit` None: every one since `since`)."""
    runs = store.runs_matching(limit, where.pipeline, where.stage, where.status, where.since)
    return list(reversed(runs))


def poll_store(
    store: Store, where: RunFilter, after: float, running: set[str], lag_s: float = 0.0
) -> Iterator[Any]:
    """Each run that ends from now on and matches `where`, as the store records it: runs
    started at or after `after`, and the `running` ones, are watched until they end
    (index reads every POLL_S). `lag_s`: how much earlier than the latest start seen a run
    may still appear (a fleet's daemons commit their claims in no common order)."""
    seen: dict[str, float] = {}  # the runs taken lately: their starts
    since = after
    while True:
        fresh = [row for row in store.runs_started_from(since) if row.id not in seen]
        ended = store.runs_by_id(list(running))
        seen.update((row.id, row.started_at) for row in fresh)
        if fresh:
            since = max(since, max(row.started_at for row in fresh) - lag_s)
            seen = {run: start for run, start in seen.items() if start >= since}
        for row in [*ended, *fresh]:
            if row.status == "running":
                running.add(row.id)
                continue
            running.discard(row.id)
            if where.matches(row):
                yield row
        time.sleep(POLL_S)


def ended_since(store: Store, where: RunFilter, after: float, running: set[str]) -> list[Any]:
    """The runs that match and ended since `after`: those started since, and those that were
    `running` then, once they are done."""
    rows = [*store.runs_started_from(after), *store.runs_by_id(list(running))]
    return [row for row in rows if row.status != "running" and where.matches(row)]


def follow_events(
    daemon: DaemonApi, where: RunFilter, catch_up: Callable[[], list[Any]] = list
) -> Iterator[Any]:
    """Each run that ends, as the daemon's event stream tells it; returns when the stream
    ends (the daemon stopped). Once the stream is connected, `catch_up()` first: the runs
    that ended before it was (each shown once, though its event may follow)."""
    caught: set[str] = set()
    with daemon.http(timeout=None) as client, client.stream("GET", "/api/events") as answer:
        if answer.status_code != 200:
            return
        event = ""
        for line in answer.iter_lines():
            if line == ": connected":  # subscribed: what ended before is in the store
                for run in catch_up():
                    caught.add(run.id)
                    yield run
            elif line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event == "run_finished":
                run = run_of_event(json.loads(line.removeprefix("data: ")))
                if where.matches(run) and run.id not in caught:
                    yield run


def run_of_event(data: dict[str, Any]) -> Any:
    """A `run_finished` event as the runs table takes a run (it started its duration ago)."""
    duration = data.get("duration_s")
    return SimpleNamespace(
        id=data["run_id"], pipeline=data["pipeline"], stage=data["stage"],
        item_key=data["key"], attempt=data["attempt"], status=data["status"],
        started_at=time.time() - (duration or 0.0), duration_s=duration,
        error=data.get("error"), label=data.get("label"),
    )  # fmt: skip
