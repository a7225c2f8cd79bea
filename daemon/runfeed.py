"""Runs as `pipewarden runs tail` lists and follows them: the latest by filter, then each
new one as it ends — from the daemon's event stream when one runs, else by polling the
store (its lookups: store/sqlite/lookups.py).
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


def poll_store(store: Store, where: RunFilter, after: float, running: set[str]) -> Iterator[Any]:
    """Each run that ends from now on and matches `where`, as the store records it: runs
    started at or after `after`, and the `running` ones, are watched until they end
    (index reads every POLL_S)."""
    at_after: set[str] = set()  # runs started exactly at `after`, already taken
    while True:
        fresh = [row for row in store.runs_started_from(after) if row.id not in at_after]
        ended = store.runs_by_id(list(running))
        if fresh:
            if fresh[-1].started_at > after:
                after, at_after = fresh[-1].started_at, set()
            at_after |= {row.id for row in fresh if row.started_at == after}
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
