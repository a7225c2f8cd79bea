"""Runs counted per stage, five-minute slot, outcome and duration bucket, as they end.

`status -v` (success rate, p50/p95 over the last hour and day) and the page's charts
(runs per interval by outcome) read these counts instead of every run: a busy store ends
hundreds of thousands of runs a day, and reading them took 20 s. Each finish adds to a
handful of rows in the same transaction as the runs it counts, so the counts are never
behind the runs. A duration is kept as its bucket, an eighth of a power of two wide, so a
percentile read back is within 5 % of the exact one.

Outcomes are as the page's charts draw them, decided when the run ended: `ok`, `skipped`
(its input had already succeeded: drawn as ok, no duration of its own), `retried` (a
failure another attempt followed), `failed` (its item ended failed on it), `ignored`,
`deferred`, `interrupted` (the daemon stopped under it; drawn as retried).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

from pipewarden.types import ItemState, RunStatus

SLOT_S = 300  # seconds per slot
BUCKETS_PER_DOUBLING = 8
OUTCOMES = ("ok", "skipped", "retried", "failed", "ignored", "deferred", "interrupted")
BACKFILL_S = 86_400 + SLOT_S  # a store migrated to the counts has its last day counted

# (pipeline, stage, slot, outcome, bucket) -> runs
Key = tuple[str, str, int, str, int]


def outcome(status: str, item_state: str, item_stage: str, stage: str) -> str:
    """What a run that ended with `status` was, its item now `item_state` at `item_stage`."""
    if status == RunStatus.OK:
        return "ok"
    if status in (RunStatus.SKIPPED, RunStatus.IGNORED, RunStatus.DEFERRED):
        return str(status)
    if status == RunStatus.INTERRUPTED:
        return "interrupted"
    ended_here = item_state == ItemState.FAILED and item_stage == stage
    return "failed" if ended_here else "retried"


def bucket(duration_s: float | None) -> int:
    """0 for under a millisecond (or unknown), else 1 + eighths of doublings above 1 ms."""
    if duration_s is None or not duration_s >= 0.001:  # NaN too
        return 0
    return 1 + int(BUCKETS_PER_DOUBLING * math.log2(duration_s * 1000))


def bucket_seconds(index: int) -> float:
    """A duration that stands for the bucket: its geometric middle."""
    if index == 0:
        return 0.0
    return 0.001 * 2 ** ((index - 1 + 0.5) / BUCKETS_PER_DOUBLING)


def slot(when: float) -> int:
    return int(when // SLOT_S)


def counted(rows: Iterable[tuple[str, str, float, str, float | None]]) -> Counter[Key]:
    """(pipeline, stage, finished_at, outcome, duration_s) of ended runs, counted by key."""
    return Counter(
        (pipeline, stage, slot(finished_at), what, bucket(duration))
        for pipeline, stage, finished_at, what, duration in rows
    )


def percentile(buckets: Counter[int], fraction: float) -> float | None:
    """The duration below which `fraction` of the counted runs ended."""
    total = sum(buckets.values())
    if total == 0:
        return None
    rank = min(total - 1, int(fraction * total))
    seen = 0
    for index in sorted(buckets):
        seen += buckets[index]
        if seen > rank:
            return bucket_seconds(index)
    return None  # not reached: rank < total
