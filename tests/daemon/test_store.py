"""The store: pragmas, forward migrations in place, refusing a newer schema."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from pipewarden.errors import StoreError
from pipewarden.store import SCHEMA_VERSION, STORE_FILE, Claimed, NewRun, Store
from pipewarden.store.records import FinishedRun
from pipewarden.store.sqlite.schema import MIGRATIONS
from pipewarden.types import ItemState, RunStatus


def test_a_new_store_is_wal_with_foreign_keys_and_the_latest_schema(tmp_path: Path):
    store = Store(tmp_path)
    conn = store.db.connection()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 10_000
    assert store.schema_version() == SCHEMA_VERSION
    indexes = {row[1] for row in conn.execute("SELECT * FROM sqlite_master WHERE type='index'")}
    assert {"runs_by_stage", "runs_by_status", "runs_by_item"} <= indexes
    store.close()


def test_a_version_1_store_is_upgraded_in_place_keeping_its_rows(tmp_path: Path):
    conn = sqlite3.connect(tmp_path / STORE_FILE)
    for statement in MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        "INSERT INTO items (pipeline, key, stage, state, created_at, updated_at)"
        " VALUES ('sites', 'old.example', 'find', 'done', 1, 1)"
    )
    conn.execute(
        "INSERT INTO runs (id, pipeline, stage, item_id, item_key, attempt, status, started_at)"
        " VALUES ('abc123', 'sites', 'find', 1, 'old.example', 1, 'ok', 1)"
    )
    conn.commit()
    conn.close()

    store = Store(tmp_path)

    assert store.schema_version() == SCHEMA_VERSION
    (run,) = store.runs_with_prefix("abc1")
    assert (run.item_key, run.status, run.progress, run.message) == (
        "old.example",
        "ok",
        None,
        None,
    )
    assert store.item("sites", "old.example").state == "done"
    store.close()


def test_runs_recorded_before_run_ids_were_numbers_stay_findable_and_checkpointed(
    tmp_path: Path,
):
    conn = sqlite3.connect(tmp_path / STORE_FILE)
    for step in MIGRATIONS[:10]:  # the schema before compact run keys
        for statement in step:
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 10")
    conn.execute(
        "INSERT INTO items (pipeline, key, stage, state, data, last_run_id, created_at,"
        " updated_at) VALUES ('sites', 'old.example', 'find', 'done', '{}', ?, 1, 1)",
        ("9f" * 16,),
    )
    conn.execute(
        "INSERT INTO runs (id, pipeline, stage, item_id, item_key, attempt, status, started_at,"
        " finished_at, input_fingerprint, trace_id, data_out) VALUES (?, 'sites', 'find', 1,"
        " 'old.example', 1, 'ok', 1, 2, ?, ?, '{\"x\": 1}')",
        ("9f" * 16, "0123456789abcdef" * 2, "ab" * 16),
    )
    conn.commit()
    conn.close()

    store = Store(tmp_path)
    (old,) = store.runs_with_prefix("9f9f9f")
    assert (old.id, old.trace_id) == ("9f" * 16, "ab" * 16)
    # A new run's fingerprint is the first 16 hex digits of what the old run kept.
    assert store.earlier_success(1, "sites", "find", "0123456789abcdef") == ("9f" * 16, '{"x": 1}')
    assert store.earlier_success(1, "sites", "find", "0123456789abcdee") is None
    store.enqueue("sites", "find", [("new.example", {})], 3.0)
    ((_, new),) = store.claim("sites", "find", 1, 4.0, _describe)
    assert new.run_id == "2"  # after the old run's row
    store.close()


def _describe(item_id: int, key: str, data: dict) -> NewRun:
    return NewRun(item_id, "find", "fp", "cfg", None)


def _describe_on(channel: str) -> Callable[[int, str, dict], NewRun]:
    """The runs of a stage whose channel is `channel`, with a real fingerprint and hash."""
    return lambda item_id, key, data: NewRun(item_id, channel, f"{item_id:016x}", "0" * 16, None)


def test_a_store_from_a_newer_pipewarden_is_refused(tmp_path: Path):
    Store(tmp_path).close()
    conn = sqlite3.connect(tmp_path / STORE_FILE)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer than this pipewarden"):
        Store(tmp_path)


def test_enqueue_is_idempotent_on_key(tmp_path: Path):
    store = Store(tmp_path)
    assert store.enqueue("sites", "find", [("a", {}), ("b", {})], 1.0).new == ["a", "b"]
    again = store.enqueue("sites", "find", [("b", {"x": 1}), ("c", {})], 2.0)
    assert (again.new, again.restarted, again.unchanged) == (["c"], [], ["b"])
    assert store.item("sites", "b").data == "{}"  # still queued: left as it was
    store.close()


def _leaf_pages(store: Store, table: str) -> int:
    conn = store.db.connection()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # dbstat reads the main file's pages
    query = "SELECT count(*) FROM dbstat WHERE name = ? AND pagetype = 'leaf'"
    return conn.execute(query, (table,)).fetchone()[0]


def test_claims_and_finishes_rewrite_item_and_run_rows_in_place(tmp_path: Path):
    """A claim grows its item's row and a finish its run's: each reserved that room before
    (schemas 15 and 19), so no page splits and the pages stay as full as they were made."""
    store = Store(tmp_path)
    store.enqueue("p", "s", [(f"item-{n}", {"n": n}) for n in range(3000)], 1796297985.2)
    items_pages = _leaf_pages(store, "items")
    claimed = []
    while batch := store.claim("p", "s", 64, 1796297986.3, _describe_on("s")):
        claimed += batch
    assert len(claimed) == 3000 and _leaf_pages(store, "items") == items_pages
    runs_pages = _leaf_pages(store, "run_rows")
    assert runs_pages > 50
    store.finish([_ok(item, run) for item, run in claimed], {})
    assert (_leaf_pages(store, "items"), _leaf_pages(store, "run_rows")) == (
        items_pages, runs_pages)  # fmt: skip
    store.close()


def _ok(item: Claimed, run: NewRun) -> FinishedRun:
    """A no-op worker's end, as the scheduler records it: the item done, its data kept; its
    worker's pid and start as a host up for weeks has them (3 and 4 bytes)."""
    return FinishedRun(
        run_id=run.run_id, item_id=item.item_id, status=RunStatus.OK, pipeline="p", stage="s",
        channel=run.channel, finished_at=1796297986.4, duration_s=0.0002, item_stage="s",
        item_state=ItemState.DONE, item_data=None, item_attempt=item.attempt,
        item_ready_at=None, item_channel=run.channel, pid=1234567, pgid=1234567,
        proc_start=123456789,
        data_out="{}",
    )  # fmt: skip


def test_a_clock_stepped_back_costs_each_run_the_same_marks(tmp_path: Path):
    """Schema 18's marks after the clock stepped back a week: each run writes its own
    minute's marks (and a late run's), never the week of minutes recorded ahead of it."""
    store = Store(tmp_path)
    week = 7 * 86_400.0
    store.enqueue("p", "s", [(f"item-{n}", {}) for n in range(40)], 1.0)
    for n in range(20):  # a week of runs, one every 500 minutes
        store.claim("p", "s", 1, 1_000_000.0 + n * week / 20, _describe)
    conn = store.db.connection()
    ahead = conn.execute("SELECT minute, first_run, last_run FROM run_minutes").fetchall()
    changes = conn.total_changes
    store.claim("p", "s", 20, 1_000_000.0 - 60.0, _describe)  # a week back: 20 late runs
    # the claim's own rows: 20 items, 20 runs, a minute's and a late minute's marks per run
    # (an upsert each), the counts; not 20 x 20 minutes' marks rewritten
    assert conn.total_changes - changes < 100
    assert conn.execute("SELECT minute, first_run, last_run FROM run_minutes"
                        " WHERE minute > 16665").fetchall() == ahead  # fmt: skip
    assert conn.execute("SELECT * FROM late_runs").fetchall() == [(16665, 40)]
    store.close()


def test_the_index_of_items_set_aside_holds_no_queued_or_running_item(tmp_path: Path):
    """items_label_recent (schema 20) is read only for items waiting for a time or a person
    or ended other than done: a backlog and its claims write nothing into it."""
    store = Store(tmp_path)
    store.enqueue("p", "s", [(f"item-{n}", {}) for n in range(500)], 1796297985.2)
    store.claim("p", "s", 200, 1796297986.3, _describe_on("s"))
    conn = store.db.connection()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    entries = (
        "SELECT sum(ncell) FROM dbstat WHERE name = 'items_label_recent' AND pagetype = 'leaf'"
    )
    assert conn.execute(entries).fetchone()[0] == 0
    assert store.held_items(None, 5) == ([], {})
    store.close()


def test_a_run_row_keeps_none_of_the_names_its_stage_and_item_have(tmp_path: Path):
    """Schema 21: a run's pipeline, stage, item key, daemon and config hash are read back
    through the `runs` view from where each is kept once, not written into every run row."""
    store = Store(tmp_path)
    store.daemon = "host.example:4242"
    pipeline, stage, key = "p" * 100, "s" * 100, "https://example.com/" + "k" * 480
    store.enqueue(pipeline, stage, [(f"{key}{n}", {}) for n in range(200)], 1796297985.2)
    describe = lambda item_id, key, data: NewRun(item_id, "web", f"{item_id:016x}", "9" * 16, None)  # noqa: E731
    claimed = store.claim(pipeline, stage, 200, 1796297986.3, describe)
    store.finish([_ok(item, run) for item, run in claimed], {})
    conn = store.db.connection()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (payload,) = conn.execute("SELECT sum(payload) FROM dbstat WHERE name = 'run_rows'").fetchone()
    assert payload / 200 < 80  # the key alone is 500 bytes
    shown = conn.execute(
        "SELECT pipeline, stage, item_key, daemon, config_hash, duration_s, pgid, data_out"
        " FROM runs WHERE run_no = 7"
    ).fetchone()
    assert shown == (pipeline, stage, f"{key}6", "host.example:4242", "9" * 16, 0.0002,
                     1234567, "{}")  # fmt: skip
    store.close()


def test_the_runs_view_takes_inserts_updates_and_deletes_as_the_table_did(tmp_path: Path):
    """What a person's sqlite3 (or a test) writes into `runs` lands where run_rows keeps
    each column, and reads back as written."""
    store = Store(tmp_path)
    store.enqueue("sites", "find", [("a.example", {})], 1.0)
    conn = store.db.connection()
    columns = ("id", "pipeline", "stage", "item_id", "item_key", "attempt", "status",
               "started_at", "finished_at", "duration_s", "pid", "pgid", "data_out", "daemon",
               "config_fp", "trace_kept", "failure")  # fmt: skip
    written = ("c0ffee", "sites", "fetch", 1, "a.example", 1, "failed", 2.5, 3.75, 1.25, 40,
               31, "{}", "old-host:7", 5, "ab" * 16, '{"label": "Timeout"}')  # fmt: skip
    conn.execute(
        f"INSERT INTO runs ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
        written,
    )
    read = f"SELECT {', '.join(columns[:-1])}, label, trace_id FROM runs WHERE id = 'c0ffee'"
    assert conn.execute(read).fetchone() == (*written[:-1], "Timeout", "ab" * 16)
    conn.execute(
        "UPDATE runs SET stage = 'find', daemon = 'new-host:8', duration_s = 0.5, pid = 41,"
        " data_out = '{\"x\": 1}', id = 'c0ffee-2' WHERE id = 'c0ffee'"
    )
    (run,) = store.runs_by_id(["c0ffee-2"])
    assert (run.stage, run.daemon, run.duration_s, run.pid, run.pgid, run.data_out) == (
        "find", "new-host:8", 0.5, 41, 31, '{"x": 1}')  # fmt: skip
    assert (run.trace_id, run.label, run.started_at) == ("ab" * 16, "Timeout", 2.5)
    conn.execute("DELETE FROM runs WHERE id = 'c0ffee-2'")
    assert conn.execute("SELECT count(*) FROM run_rows").fetchone() == (0,)
    store.close()


def test_a_claim_and_a_finish_of_many_items_are_a_few_statements_not_one_per_row(
    tmp_path: Path,
):
    """Each statement SQLite steps through lets go of the GIL, and the writer thread must
    win it back from the busy event loop: a pass's rows go in chunks, not one per row.
    (Python traces a statement again, its values bound, at each trigger it fires.)"""
    store = Store(tmp_path)
    store.enqueue("p", "s", [(f"item-{n}", {"n": n}) for n in range(100)], 1796297985.2)
    statements: list[str] = []
    conn = store.db.connection()
    conn.set_trace_callback(lambda sql: sql.startswith("--") or statements.append(sql))
    claimed = store.claim("p", "s", 100, 1796297986.3, _describe_on("s"))
    claim_statements = len(statements)
    store.finish([_ok(item, run) for item, run in claimed], {})
    conn.set_trace_callback(None)
    assert len(claimed) == 100
    claim_steps = len(list(itertools.groupby(statements[:claim_statements])))
    finish_steps = len(list(itertools.groupby(statements[claim_statements:])))
    assert (claim_steps <= 30, finish_steps <= 30) == (True, True), (claim_steps, finish_steps)
    item = store.item("p", "item-99")
    assert item is not None and (item.state, item.attempt) == (ItemState.DONE, 1)
    (run,) = store.item_runs(item.id)
    assert (run.status, run.finished_at, run.duration_s, run.pid) == (
        RunStatus.OK, 1796297986.4, 0.0002, 1234567)  # fmt: skip
    store.close()


def test_rows_of_one_target_in_a_chunked_write_apply_in_their_order(tmp_path: Path):
    from pipewarden.store.sqlite.batches import execute_rows

    conn = sqlite3.connect(tmp_path / "t.db")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER, seen TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, 0, '')", [(i,) for i in range(50)])
    rows = [(i % 40, f"{i};") for i in range(90)]  # ids 0..9 three times, 10..39 twice
    execute_rows(
        conn,
        "WITH v(id, mark) AS (VALUES {rows})"
        " UPDATE t SET n = n + 1, seen = seen || v.mark FROM v WHERE t.id = v.id",
        rows,
    )
    got = dict(conn.execute("SELECT id, seen FROM t WHERE n > 0").fetchall())
    assert got == {i: "".join(f"{j};" for j in range(i, 90, 40)) for i in range(40)}
