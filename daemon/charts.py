"""Per stage, runs per interval over the last hours split by outcome, and the halts in that
time: what the page draws (server-side aggregates, so a browser never reads every run).

Outcomes: `ok` (skipped runs too: their input had already succeeded), `retried` (a
failure that was not its item's last word: another attempt followed or was due),
`failed` (a failure that was: its item ended failed on it), `ignored`, `deferred`.
An interrupted run is `retried` (its item went back to the queue or to a person).
Runs count in the interval in which they ended, as what they were then: the counts come
from store/rollup.py, kept as runs end, so a day's chart reads a few hundred rows rather
than every run, and a later retry adds its own runs without rewriting the past.
"""

from __future__ import annotations

from typing import Any

from pipewarden.config import Config, Stage
from pipewarden.store import Store, rollup

OUTCOMES = ("ok", "retried", "failed", "ignored", "deferred")
BUCKETS = 48  # bars per chart: half-hour bars over a day
DRAWN_AS = {"skipped": "ok", "interrupted": "retried"}  # the rollup's outcomes, as drawn


def stage_charts(
    store: Store, config: Config, pipeline: str | None, now: float, hours: int
) -> list[dict[str, Any]]:
    """A chart for each configured stage (of `pipeline`, or of all)."""
    width = hours * 3600 / BUCKETS
    start = now - hours * 3600
    return [
        _chart(store, each.name, stage, start, width)
        for each in config.pipelines.values()
        if pipeline is None or each.name == pipeline
        for stage in each.stages
    ]


def _chart(store: Store, pipeline: str, stage: Stage, start: float, width: float) -> dict[str, Any]:
    buckets = [dict.fromkeys(OUTCOMES, 0) for _ in range(BUCKETS)]
    for slot, outcome, _, count in store.ended_runs(pipeline, stage.name, start):
        middle = (slot + 0.5) * rollup.SLOT_S  # a slot's runs are drawn where it is centred
        bar = min(BUCKETS - 1, max(0, int((middle - start) // width)))
        buckets[bar][DRAWN_AS.get(outcome, outcome)] += count
    # A fixed channel is this stage's alone; a channel taken from the item's data may be
    # any, so every channel's halt is marked (reading which channels the day's runs used
    # would read every run again).
    channels = None if "{" in stage.channel else [stage.channel]
    return {
        "pipeline": pipeline, "stage": stage.name, "start": start, "width_s": width,
        "buckets": buckets,
        "halts": _halts(store, {pipeline, stage.qualified_name}, channels, start),
    }  # fmt: skip


def _halts(
    store: Store, targets: set[str], channels: list[str] | None, start: float
) -> list[dict[str, Any]]:
    """The halts on these targets and channels (None: any channel) active since `start`."""
    rows = store.halts_between(targets | set(channels or ()), channels is None, start)
    names = ("target", "label", "reason", "from", "to")
    return [dict(zip(names, row, strict=True)) for row in rows]
