"""Runs counted as they end: status -v's rates and percentiles, read from the counts, agree
with the runs themselves; an older store is counted when it is migrated."""

from __future__ import annotations

import json
import random
import sqlite3
import time
from collections import Counter
from pathlib import Path

from pipewarden.status import telemetry
from pipewarden.store import STORE_FILE, FinishedRun, NewRun, open_store, rollup
from pipewarden.store.sqlite.schema import MIGRATIONS
from pipewarden.types import ItemState, RunStatus

P, S = "sites", "find"
NOW = 1_800_000_000.0


def test_a_percentile_read_from_the_buckets_is_within_five_percent_of_the_exact_one():
    chance = random.Random(7)
    durations = [chance.lognormvariate(0, 1.5) for _ in range(5000)]
    buckets = Counter(rollup.bucket(d) for d in durations)
    ordered = sorted(durations)
    for fraction in (0.5, 0.9, 0.95, 0.99):
        exact = ordered[int(fraction * len(ordered))]
        assert abs(rollup.percentile(buckets, fraction) / exact - 1) < 0.05, fraction


def _fill(
    state_dir: Path, runs: list[tuple[float, RunStatus, float]], now: float = NOW,
    url: str | None = None,
) -> None:  # fmt: skip
    """Items run once each: (seconds before `now` it ended, status, duration)."""
    store = open_store(state_dir, url=url)
    store.enqueue(P, S, [(f"k{n}", {}) for n in range(len(runs))], now - 90_000)
    claimed = store.claim(
        P, S, len(runs), now - 90_000,
        lambda item_id, key, data: NewRun(item_id, None, f"fp-{key}", "c", None),
    )  # fmt: skip
    store.finish(
        [FinishedRun(
            run_id=run.run_id, item_id=item.item_id, status=status, pipeline=P, stage=S,
            channel=None, finished_at=now - ago, duration_s=duration, item_stage=S,
            item_state=ItemState.DONE if status is RunStatus.OK else ItemState.FAILED,
            item_data=json.dumps({}), item_attempt=1, item_ready_at=None, item_channel=None,
        ) for (item, run), (ago, status, duration) in zip(claimed, runs, strict=True)],
        {},
    )  # fmt: skip
    store.close()


def _runs(chance: random.Random, count: int) -> list[tuple[float, RunStatus, float]]:
    return [
        (chance.uniform(0, 86_000), chance.choice([RunStatus.OK] * 9 + [RunStatus.FAILED]),
         chance.uniform(0.2, 3.0))
        for _ in range(count)
    ]  # fmt: skip


def test_status_telemetry_from_the_counts_agrees_with_the_runs(tmp_path: Path):
    runs = _runs(random.Random(3), 2000)
    _fill(tmp_path, runs)
    store = open_store(tmp_path, read_only=True)
    shown = telemetry(store, P, S, NOW)
    store.close()

    for window, seconds in (("1h", 3600), ("24h", 86_400)):
        # The window starts at its first slot's start: up to five minutes more than asked.
        first = rollup.slot(NOW - seconds) * rollup.SLOT_S
        inside = [(status, d) for ago, status, d in runs if NOW - ago >= first]
        ok = sum(1 for status, _ in inside if status is RunStatus.OK)
        durations = sorted(d for _, d in inside)
        assert shown[window]["runs"] == len(inside) > 0
        assert shown[window]["success_rate"] == ok / len(inside)
        for name, fraction in (("p50_s", 0.5), ("p95_s", 0.95)):
            exact = durations[min(len(durations) - 1, int(fraction * len(durations)))]
            assert abs(shown[window][name] / exact - 1) < 0.05, (window, name)


def test_a_store_from_before_the_counts_is_counted_when_it_is_migrated(tmp_path: Path):
    # The migration counts the runs of the last days before the real clock.
    _fill(tmp_path, _runs(random.Random(5), 300), now=time.time())
    (_, backfills) = next(s for s in MIGRATIONS if "CREATE TABLE run_slots" in s[0])
    with sqlite3.connect(tmp_path / STORE_FILE) as db:
        counted_live = sorted(db.execute("SELECT * FROM run_slots"))
        db.execute("DELETE FROM run_slots")  # as the step that made the table found it
        db.execute(backfills)
        assert sorted(db.execute("SELECT * FROM run_slots")) == counted_live
    assert len(counted_live) > 100
