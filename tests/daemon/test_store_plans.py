"""Every query of the hot path and the status paths reads through an index: the schema
keeps only the indexes these need, several of them partial, and a partial index serves
only a query that repeats its WHERE. A full scan here would be seconds on a large store."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pipewarden.runfeed import ended_since
from pipewarden.store import NewRun, Store
from pipewarden.store.records import FAILURES, RunFilter

P, S = "sites", "find"
# items and runs by any name: their tables, the view's (r, i), aliases, Peewee's (t1, t2, ...)
WALK = re.compile(r"SCAN (items|runs|run_rows|r|i|later|newer|t\d+)\b")


def describe(item_id: int, key: str, data: dict) -> NewRun:
    return NewRun(item_id, "web", f"fp-{key}", "cfg", None)


OPERATIONS: dict[str, Callable[[Store], object]] = {
    "claim": lambda s: s.claim(P, S, 2, 10.0, describe, ["sms"]),
    "next_ready_at": lambda s: s.next_ready_at([(P, S)], ["sms"]),
    "defer_channel": lambda s: s.defer_channel("sms", 99.0, 10.0, "Closed"),
    "earlier_success": lambda s: s.earlier_success(1, P, S, "0123456789abcdef"),
    "running_processes": lambda s: s.running_processes(),
    "running_runs": lambda s: s.running_runs(),
    "recent failed runs": lambda s: s.recent_runs(10, status="failed"),
    "label_failures": lambda s: s.label_failures("web", "Timeout", 0.0, 3),
    "item runs": lambda s: s.internal_failures_in_a_row(1, "1", 3),
    "failure_texts": lambda s: s.failure_texts(0.0),
    "state_counts": lambda s: s.state_counts(0.0, 0.0),
    "label_counts": lambda s: s.label_counts(0.0, 0.0),
    "deferred_reasons": lambda s: s.deferred_reasons(P, S, 0.0, 0.0),
    "requeue_by_label": lambda s: s.requeue_by_label("Timeout", 10.0, dry_run=True),
    "held_count": lambda s: s.held_count("Timeout"),
    "held_items": lambda s: s.held_items(P, 10),
    "labelled_failures": lambda s: s.labelled_failures("Timeout", P, S, 1.0, 5),
    "change_held": lambda s: s.change_held(P, None, 10.0, dry_run=True),
    "item_channels": lambda s: s.item_channels(),
    "cost_since": lambda s: s.cost_since(P, [S], 0.0),
    # what finds a run by its id (schema 15: by number, or an older id by runs_by_old_id)
    "runs_by_id": lambda s: s.runs_by_id(["1", "2", "1f0e2d3c4b5a69788796a5b4c3d2e1f0"]),
    "runs_with_prefix": lambda s: s.runs_with_prefix("9"),
    "later_ok": lambda s: s.later_ok("2"),
    "run_facts": lambda s: s.run_facts(["1", "2"]),
    "template_errors": lambda s: s.template_errors(1, 3),
    "record_processes": lambda s: s.record_processes([("1", 10, 10, 100)]),
    "unclaim": lambda s: s.unclaim([("5", 5)]),
    "finish": lambda s: s.finish([], {"1": (0.5, "half")}),
    # a stage's runs, by its number (schema 15: runs_by_stage, runs_by_stage_end)
    "count_runs": lambda s: s.count_runs(P, S, "ok", 0.0),
    "last_run_statuses": lambda s: s.last_run_statuses(P, S, 5, 0.0),
    "recent_durations": lambda s: s.recent_durations(P, S, 5),
    "a stage's recent runs": lambda s: s.recent_runs(10, stage=S, pipeline=P),
    "a stage's runs since": lambda s: s.runs_matching(None, P, S, None, 1.0),
    "the page's runs of a stage": lambda s: s.find_runs(
        RunFilter(pipeline=P, stage=S), ["id", "status"], 80, 50
    ),
    # runs by start (schema 18: by number, from run_minutes' mark; no index of started_at)
    "the page's runs since": lambda s: s.find_runs(RunFilter(since=1.0), ["id"], 80, 50),
    "the page's next page": lambda s: s.find_runs(RunFilter(before=(2.0, "3")), ["id"], 80, 50),
    "runs since": lambda s: s.runs_matching(None, None, None, None, 1.0),
    "runs_started_from": lambda s: s.runs_started_from(1.0),
    "runs tail's catching up": lambda s: ended_since(s, RunFilter(), 1.0, {"1"}),
    "runs_started_since": lambda s: s.runs_started_since(1.0),
    "export since": lambda s: list(s.export_runs(1.0)),
    "prune_batch": lambda s: s.prune_batch(3.0),
    "prunable_runs": lambda s: s.prunable_runs(3.0, 5),
}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path)
    store.enqueue(P, S, [(f"k{n}", {}) for n in range(20)], 1.0)
    store.enqueue(P, S, [("sms", {})], 1.0, channel_for=lambda data: "sms")
    store.claim(P, S, 5, 2.0, describe)
    store.add_template_runs([("1", 1, P, S, 2.0), ("2", 1, P, S, 2.0)])
    yield store
    store.close()


def plans(store: Store, operation: Callable[[Store], object]) -> list[tuple[str, str]]:
    """(statement, its query plan) of every read and write the operation made."""
    conn: sqlite3.Connection = store.db.connection()
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        operation(store)
    finally:
        conn.set_trace_callback(None)
    found = []
    for sql in statements:
        if sql.split()[0].upper() in ("SELECT", "UPDATE", "DELETE", "WITH"):
            plan = conn.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()
            found.append((sql, "; ".join(row[3] for row in plan)))
    return found


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_each_query_reads_items_and_runs_through_an_index(store: Store, name: str):
    found = plans(store, OPERATIONS[name])
    assert found, f"{name} ran no query"
    for sql, plan in found:
        # items, runs, or either by Peewee's alias of a query's table (t1, t2, ...)
        scans = [step for step in plan.split("; ") if WALK.match(step)]
        assert not scans, f"{name}: {sql}\n  walks every row: {plan}"


# Lists newest first that must read their index in its order, never sort what it holds:
# a status's runs are in number order in runs_by_status (schema 22), each status apart.
IN_ORDER: dict[str, Callable[[Store], object]] = {
    "the page's failures": lambda s: s.find_runs(RunFilter(status=FAILURES), ["id"], 80, 50),
    "the page's failed runs": lambda s: s.find_runs(RunFilter(status="failed"), ["id"], 80, 50),
    "the page's failures since": lambda s: s.find_runs(
        RunFilter(status=FAILURES, since=1.0), ["id"], 80, 50
    ),
    "recent failed runs": lambda s: s.recent_runs(10, status="failed"),
}


@pytest.mark.parametrize("name", sorted(IN_ORDER))
def test_a_status_s_runs_are_listed_newest_first_without_a_sort(store: Store, name: str):
    found = plans(store, IN_ORDER[name])
    assert found, f"{name} ran no query"
    for sql, plan in found:
        assert "USE TEMP B-TREE FOR ORDER BY" not in plan, f"{name}: {sql}\n  sorts: {plan}"
