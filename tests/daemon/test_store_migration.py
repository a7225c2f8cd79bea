"""Schema 15 rebuilds the runs table (issue 13: fewer bytes per run): a store the schema-14
code wrote reads back the same through the CLI afterwards, run for run and item for item."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from pipewarden.store import SCHEMA_VERSION, STORE_FILE, NewRun, Store
from pipewarden.store.records import RunFilter
from pipewarden.store.sqlite.schema import MIGRATIONS

OLD_ID = "c0ffee" + "0" * 26  # a run recorded before run ids were numbers (schema 13)
OLD_FINGERPRINT = "0123456789abcdef" * 2  # and the 32 hex digits it kept
HIGH_FINGERPRINT = "f0e1d2c3b4a59687"  # the sign bit set once packed into 64 bits
CONFIG = "8899aabbccddeeff"

# (rowid, column values) as the schema-14 code wrote them: claim inserts the rowid and its
# number as the id, finish updates the end; the rest are earlier schemas' rows kept.
_RUNS: list[tuple[int, dict[str, Any]]] = [
    (1, {"id": OLD_ID, "item_id": 3, "item_key": "old.example", "status": "ok",
         "started_at": 100.25, "finished_at": 101.5, "duration_s": 1.25,
         "input_fingerprint": OLD_FINGERPRINT, "trace_kept": "ab" * 16, "data_out": '{"x": 1}'}),
    (2, {"id": "2", "item_id": 1, "item_key": "ok.example", "status": "ok", "started_at": 200.5,
         "finished_at": 200.75, "duration_s": 0.000317, "pid": 4427, "pgid": 4427,
         "proc_start": 3265820, "input_fingerprint": HIGH_FINGERPRINT, "config_hash": CONFIG,
         "rows_in": 1, "progress": 1.0, "data_out": "{}", "daemon": "vm:4413"}),
    (3, {"id": "3", "item_id": 2, "item_key": "bad.example", "status": "failed",
         "started_at": 300.0, "finished_at": 301.0, "duration_s": 1.0, "exit_code": 1,
         "error": "Timeout: upstream took 30s", "error_type": "TimeoutError",
         "traceback": "Traceback (most recent call last):\n  boom", "output": "half a line\x00",
         "group_name": "retriable", "label": "Slow upstream", "category": "network",
         "type": "timeout", "rule_id": "net-slow", "rules_version": "v2",
         "original_group": "terminal", "original_label": "Timeout", "original_category": "net",
         "original_type": "t", "original_rule_id": "r1", "original_rules_version": "v1",
         "reclassified_at": 1796187287.5944312, "input_fingerprint": "00000000000000ff",
         "config_hash": CONFIG,
         "cost": 0.5, "rows_out": 3, "message": "fetching", "channel": "upstream"}),
    (4, {"id": "4", "item_id": 2, "item_key": "bad.example", "attempt": 2, "status": "timed_out",
         "started_at": 400.0, "finished_at": 430.0, "duration_s": 30.0, "signal": 9,
         "error": "killed after 30s", "group_name": "retriable", "label": "Timeout",
         "input_fingerprint": "not hex at all", "config_hash": "cfg", "probe_of": 7}),
    (5, {"id": "5", "item_id": 1, "item_key": "ok.example", "status": "ok", "started_at": 500.0,
         "finished_at": 500.5, "duration_s": 0.5, "replay_of": "2", "trace_kept": "cd" * 16,
         "input_fingerprint": HIGH_FINGERPRINT, "data_out": "{}"}),
    (6, {"id": "6", "item_id": 4, "item_key": "run.example", "status": "running",
         "started_at": 600.0, "input_fingerprint": "1111111111111111", "config_hash": CONFIG,
         "daemon": "vm:1"}),
]  # fmt: skip
_ITEMS = [  # (key, state, last run, data, last error, label, group)
    ("ok.example", "done", "2", '{"n": 1}', None, None, None),
    ("bad.example", "failed", "4", "{}", "killed after 30s", "Timeout", "retriable"),
    ("old.example", "done", OLD_ID, '{"x": 1}', None, None, None),
    ("run.example", "running", "6", "{}", None, None, None),
]


def _step_14_store(path: Path) -> None:
    conn = sqlite3.connect(path)
    for step in MIGRATIONS[:14]:
        for statement in step:
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 14")
    for key, state, last_run, data, error, label, group in _ITEMS:
        conn.execute(
            "INSERT INTO items (pipeline, key, stage, state, data, attempt, channel, last_run_id,"
            " last_error, last_label, last_group, created_at, updated_at)"
            " VALUES ('sites', ?, 'find', ?, ?, 1, 'find', ?, ?, ?, ?, 1, 2)",
            (key, state, data, last_run, error, label, group),
        )
    for rowid, values in _RUNS:
        row = {"rowid": rowid, "pipeline": "sites", "stage": "find", "attempt": 1,
               "channel": "find", **values}  # fmt: skip
        conn.execute(
            f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
            list(row.values()),
        )
    conn.execute("INSERT INTO templates VALUES (1, 'Timeout: upstream took <*>', 1, 301, 301)")
    conn.execute("INSERT INTO template_runs VALUES ('3', 1, 'sites', 'find', 301)")
    conn.commit()
    conn.close()


def _as_schema_14_read_them(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every run as schema 14's export wrote it, and every item row."""
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    runs = [dict(row) for row in conn.execute("SELECT * FROM runs ORDER BY started_at")]
    items = [dict(row) for row in conn.execute("SELECT * FROM items ORDER BY id")]
    conn.close()
    for run in runs:
        del run["trace_kept"]
    return runs, items


def _write_config(project: Any) -> None:
    project.configure("""
        sites:
          stages:
            - {name: find, command: ["true"]}
    """)


def test_a_schema_14_store_reads_back_the_same_after_the_runs_table_is_rebuilt(project):
    _write_config(project)
    project.state_dir.mkdir(mode=0o700)
    _step_14_store(project.state_dir / STORE_FILE)
    runs, items = _as_schema_14_read_them(project.state_dir / STORE_FILE)

    assert f"migrated from schema 14 to {SCHEMA_VERSION}" in project.cli("migrate").stdout
    exported = project.cli("export", "runs", "--format", "jsonl").stdout.splitlines()
    assert [list(json.loads(line).items()) for line in exported] == [
        list(run.items()) for run in runs
    ]  # every column, in the order schema 14 gave them
    header = project.cli("export", "runs", "--format", "csv").stdout.splitlines()[0]
    assert header.split(",") == list(runs[0])
    for run in runs:
        shown = json.loads(project.cli("runs", "show", run["id"], "--json").stdout)
        assert {name: shown[name] for name in shown if name in run} == {
            name: run[name] for name in shown if name in run
        }
        text = project.cli("runs", "show", run["id"]).stdout
        assert run["id"] in text and (run["error"] or "") in text
    for item in items:
        shown = json.loads(project.cli("item", "sites", item["key"], "--json").stdout)
        item["data"] = json.loads(item["data"])
        assert {name: shown[name] for name in shown if name in item} == {
            name: item[name] for name in shown if name in item
        }
        assert [r["id"] for r in shown["runs"]] == [
            r["id"] for r in runs if r["item_key"] == item["key"]
        ]
    # an older run's uuid is still found by a prefix of it, as `runs show` took it
    assert json.loads(project.cli("runs", "show", "c0ffee", "--json").stdout)["id"] == OLD_ID


def test_after_the_rebuild_runs_are_numbered_on_and_found_by_their_keys(tmp_path: Path):
    _step_14_store(tmp_path / STORE_FILE)
    store = Store(tmp_path)
    conn = store.db.connection()
    indexes = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    assert "sqlite_autoindex_runs_1" not in indexes  # the id's unique index is gone
    # checkpoints: a packed fingerprint, a high one, and the 32 digits an old run kept
    assert store.earlier_success(1, "sites", "find", HIGH_FINGERPRINT) == ("2", "{}")
    assert store.earlier_success(3, "sites", "find", "0123456789abcdef") == (OLD_ID, '{"x": 1}')
    assert store.earlier_success(2, "sites", "find", "00000000000000ff") is None  # it failed
    assert store.earlier_success(2, "sites", "find", HIGH_FINGERPRINT) is None  # another item's
    assert {r.id for r in store.runs_by_id(["3", OLD_ID, "6", "66"])} == {OLD_ID, "3", "6"}
    assert store.later_ok("3") is False
    for odd in ("²", "5" * 25, "007", ""):  # what a person may type: no run, and no error
        assert (store.runs_by_id([odd]), store.runs_with_prefix(odd or "x")) == ([], [])
    assert store.run_facts(["4"]) == {"4": ("sites", "find", "find", "Timeout", "bad.example")}
    assert store.template_errors(1, 5) == ["Timeout: upstream took 30s"]
    # an ok run keeps no failure object; a failed one reads back through its columns
    failures = dict(conn.execute("SELECT id, failure FROM runs WHERE id IN ('2', '3')"))
    assert failures["2"] is None and json.loads(failures["3"])["rule_id"] == "net-slow"
    # a stage's runs, by the stage's number (runs 1 and 2: 5 is a replay)
    assert store.count_runs("sites", "find", "ok", 0.0) == 2
    assert store.last_run_statuses("sites", "find", 2) == [
        ("timed_out", "killed after 30s"), ("failed", "Timeout: upstream took 30s")
    ]  # fmt: skip
    assert store.cost_since("sites", ["find"], 0.0) == 0.5
    # runs by their start, through the minutes' marks the migration made (schema 18)
    assert store.runs_started_since(300.0) == 4 and store.runs_started_since(600.5) == 0
    assert [r.id for r in store.runs_matching(None, None, None, None, 400.0)] == ["6", "5", "4"]
    before = store.find_runs(RunFilter(until=350.0), ["id"], 80, 10)
    assert [row[0] for row in before] == ["3", "2", OLD_ID]
    replayed = {"pipeline": "sites", "stage": "other", "item_id": 1, "item_key": "ok.example",
                "attempt": 1, "status": "ok", "started_at": 800.0, "finished_at": 801.0,
                "replay_of": "2"}  # fmt: skip
    assert store.add_replay(replayed) == "7"  # a stage's first run gives it its number
    assert store.runs_by_id(["7"])[0].stage == "other"
    assert conn.execute("SELECT count(*) FROM stages").fetchone()[0] == 2
    assert store.count_runs("sites", "none", "ok", 0.0) == 0
    store.enqueue("sites", "find", [("new.example", {})], 700.0)
    ((_, new),) = store.claim("sites", "find", 1, 701.0, _describe)
    assert new.run_id == "8"
    (claimed,) = store.runs_by_id(["8"])
    assert (claimed.input_fingerprint, claimed.config_hash) == (HIGH_FINGERPRINT, CONFIG)
    assert [r.id for r in store.runs_with_prefix("8")] == ["8"]
    # a deleted run leaves no template member behind (the foreign key was a trigger's work)
    conn.execute("DELETE FROM runs WHERE run_no = 3")
    assert conn.execute("SELECT count(*) FROM template_runs").fetchone()[0] == 0
    store.close()


def _describe(item_id: int, key: str, data: dict) -> NewRun:
    return NewRun(item_id, "find", HIGH_FINGERPRINT, CONFIG, None)
