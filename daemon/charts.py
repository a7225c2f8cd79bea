"""Per stage, runs per interval over the last hours split by outcome, and the halts in that
time: what the page draws (server-side aggregates, so a browser never reads every run).

Outcomes: `ok` (skipped runs too: their input had already succeeded), `retried` (a
failure that was not its item's last word: another attempt followed or is due),
`failed` (a failure that is: its item ended failed on it), `ignored`, `deferred`.
An interrupted run is `retried` (its item went back to the queue or to a person).
Runs count in the interval in which they ended.
"""

from __future__ import annotations

from typing import Any

from pipewarden.config import Config, Stage
from pipewarden.store import Store

OUTCOMES = ("ok", "retried", "failed", "ignored", "deferred")
BUCKETS = 48  # bars per chart: half-hour bars over a day
_OUTCOME_SQL = """CASE
    WHEN runs.status IN ('ok', 'skipped') THEN 'ok'
    WHEN runs.status = 'ignored' THEN 'ignored'
    WHEN runs.status = 'deferred' THEN 'deferred'
    WHEN items.state = 'failed' AND items.last_run_id = runs.id THEN 'failed'
    ELSE 'retried' END"""


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
    rows = store.db.execute_sql(
        f"SELECT CAST((runs.finished_at - ?) / ? AS INTEGER) AS slot, {_OUTCOME_SQL}, COUNT(*)"
        " FROM runs LEFT JOIN items ON items.id = runs.item_id"
        " WHERE runs.pipeline = ? AND runs.stage = ? AND runs.finished_at >= ?"
        " AND runs.status NOT IN ('running') AND runs.replay_of IS NULL GROUP BY 1, 2",
        (start, width, pipeline, stage.name, start),
    ).fetchall()
    for slot, outcome, count in rows:
        buckets[min(slot, BUCKETS - 1)][outcome] += count
    channels = [row[0] for row in store.db.execute_sql(
        "SELECT DISTINCT channel FROM runs WHERE pipeline = ? AND stage = ? AND finished_at >= ?"
        " AND channel IS NOT NULL", (pipeline, stage.name, start))]  # fmt: skip
    if "{" not in stage.channel:  # a fixed channel may be halted before any run here
        channels.append(stage.channel)
    return {
        "pipeline": pipeline, "stage": stage.name, "start": start, "width_s": width,
        "buckets": buckets,
        "halts": _halts(store, {pipeline, stage.qualified_name, *channels}, start),
    }  # fmt: skip


def _halts(store: Store, targets: set[str], start: float) -> list[dict[str, Any]]:
    """The halts on these targets that were active at some point since `start`."""
    marks = f"({', '.join('?' * len(targets))})"
    rows = store.db.execute_sql(
        f"SELECT target, label, reason, created_at, cleared_at FROM holds WHERE kind = 'halt'"
        f" AND target IN {marks} AND (cleared_at IS NULL OR cleared_at >= ?) ORDER BY created_at",
        (*sorted(targets), start),
    ).fetchall()
    names = ("target", "label", "reason", "from", "to")
    return [dict(zip(names, row, strict=True)) for row in rows]
