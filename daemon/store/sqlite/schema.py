"""The SQLite schema: every migration step, in order, and how a new store file is made.

Times are UNIX seconds (UTC) as REAL, which keeps delta queries simple and fast. The
schema has a version (`PRAGMA user_version`); `SqliteStore.migrate` upgrades an older
file in place, one step at a time. A step never changes once shipped.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from pipewarden.store.rollup import BACKFILL_S, BUCKETS_PER_DOUBLING, SLOT_S

# The status tree's totals, kept by triggers in the same transaction as every item write,
# so `pipewarden status` reads a few hundred rows instead of counting a million items.
# Labels count only where the status tree shows them (retrying, failed, ignored).
_COUNT_KEY = {
    "new": "NEW.pipeline, NEW.stage, NEW.state, COALESCE(NEW.channel, ''), "
    "CASE WHEN NEW.state IN ('retrying', 'failed', 'ignored') THEN COALESCE(NEW.last_group, '') "
    "ELSE '' END, CASE WHEN NEW.state IN ('retrying', 'failed', 'ignored') "
    "THEN COALESCE(NEW.last_label, '') ELSE '' END",
}
_COUNT_KEY["old"] = _COUNT_KEY["new"].replace("NEW.", "OLD.")
_COUNT_MATCH = (
    "pipeline = OLD.pipeline AND stage = OLD.stage AND state = OLD.state"
    " AND channel = COALESCE(OLD.channel, '') AND grp = CASE WHEN OLD.state IN"
    " ('retrying', 'failed', 'ignored') THEN COALESCE(OLD.last_group, '') ELSE '' END"
    " AND label = CASE WHEN OLD.state IN ('retrying', 'failed', 'ignored')"
    " THEN COALESCE(OLD.last_label, '') ELSE '' END"
)
_COUNT_ADD = (
    f"INSERT INTO item_counts VALUES ({_COUNT_KEY['new']}, 1) ON CONFLICT DO UPDATE SET n = n + 1;"
)


def _counted_update(when: str) -> str:
    return f"""CREATE TRIGGER items_counted_update AFTER UPDATE OF pipeline, stage, state, channel,
        last_group, last_label ON items WHEN {when}
        BEGIN UPDATE item_counts SET n = n - 1 WHERE {_COUNT_MATCH}; {_COUNT_ADD} END"""


_COUNTS_MIGRATION = [  # 5: item counts for the status tree, and the indexes it reads
    """CREATE TABLE item_counts (
        pipeline TEXT NOT NULL, stage TEXT NOT NULL, state TEXT NOT NULL, channel TEXT NOT NULL,
        grp TEXT NOT NULL, label TEXT NOT NULL, n INTEGER NOT NULL,
        PRIMARY KEY (pipeline, stage, state, channel, grp, label)) WITHOUT ROWID""",
    f"INSERT INTO item_counts SELECT {_COUNT_KEY['new'].replace('NEW.', '')}, COUNT(*)"
    " FROM items GROUP BY 1, 2, 3, 4, 5, 6",
    f"CREATE TRIGGER items_counted_insert AFTER INSERT ON items BEGIN {_COUNT_ADD} END",
    f"CREATE TRIGGER items_counted_delete AFTER DELETE ON items BEGIN"
    f" UPDATE item_counts SET n = n - 1 WHERE {_COUNT_MATCH}; END",
    _counted_update(f"({_COUNT_KEY['old']}) IS NOT ({_COUNT_KEY['new']})"),
    "DROP INDEX items_status",
    "DROP INDEX items_labels",
    "CREATE INDEX items_state_recent ON items (pipeline, stage, state, channel, updated_at)",
    """CREATE INDEX items_label_recent ON items
        (state, pipeline, stage, last_group, last_label, updated_at)""",
    # Partial: only items a person requeued are in it, so ordinary writes never touch it.
    "CREATE INDEX items_requeues ON items (requeues, state) WHERE requeues > 0",
    # Set by `enqueue --force` / `retry --force`: redo work whose input already succeeded.
    "ALTER TABLE items ADD COLUMN force INTEGER NOT NULL DEFAULT 0",
    # pending_count and the like use items_label_recent, which leads with state too.
    "DROP INDEX items_state",
    # Covering `cost` too, so a budget's daily sum never touches the table.
    "DROP INDEX runs_by_stage_end",
    "CREATE INDEX runs_by_stage_end ON runs (pipeline, stage, finished_at, cost)",
]

# 11 (issue 13): fewer bytes per item. A new run's id is its rowid as a string (short,
# time-ordered: appended at the end of every index; older runs keep their uuid), its trace
# id is derived from its start and number instead of 16 random bytes kept, its input
# fingerprint is 16 hex digits (an older run's 32 still match by prefix), and an index
# leaves out the rows no query reads through it. Every index kept is named below by the
# query that reads it; a partial index is read only by queries that repeat its WHERE.
_FEWER_BYTES_MIGRATION = [
    # Old runs keep the trace id they were given; a new run's is computed (records.trace_id_of).
    "ALTER TABLE runs RENAME COLUMN trace_id TO trace_kept",
    "ALTER TABLE runs ADD COLUMN trace_id TEXT GENERATED ALWAYS AS (coalesce(trace_kept,"
    " printf('%016x%016x', CAST(started_at * 1000000 AS INTEGER), CAST(id AS INTEGER))))"
    " VIRTUAL",
    # runs_recent (started_at) stays: the page's run list (finds.find_runs), prune, export.
    # runs_by_stage (pipeline, stage, started_at) stays: the page's list of a stage's runs.
    # runs_by_stage_end stays: count_runs, last_run_statuses, recent_durations,
    # stage_durations, cost_since (covering), the charts.
    # running_processes, running_runs, recovery, failure_texts and the page's failures:
    # the runs not ok, a few in a hundred.
    "DROP INDEX runs_by_status",
    "CREATE INDEX runs_by_status ON runs (status, started_at) WHERE status != 'ok'",
    # earlier_success (the checkpoint lookup): only ok runs that kept their data count.
    "DROP INDEX runs_by_fingerprint",
    "CREATE INDEX runs_by_fingerprint ON runs (input_fingerprint)"
    " WHERE status = 'ok' AND data_out IS NOT NULL",
    # internal_failures_in_a_row, item_runs, prune's newer run: an item's runs, in rowid
    # (start) order.
    "DROP INDEX runs_by_item",
    "CREATE INDEX runs_by_item ON runs (item_id)",
    # label_failures (the guard's same-label count): only labelled runs.
    "DROP INDEX runs_by_channel_label",
    "CREATE INDEX runs_by_channel_label ON runs (channel, label, finished_at)"
    " WHERE label IS NOT NULL",
    # claim, next_ready_at, deferred_reasons' soonest wake: items that can be claimed.
    "DROP INDEX items_claim",
    "CREATE INDEX items_claim ON items (pipeline, stage, state, ready_at)"
    " WHERE state IN ('queued', 'retrying', 'deferred')",
    # defer_channel (business hours): the claimable items of a channel.
    "DROP INDEX items_by_channel",
    "CREATE INDEX items_by_channel ON items (channel, state, ready_at)"
    " WHERE state IN ('queued', 'retrying', 'deferred')",
    # label_counts, deferred_reasons, requeue_by_label, the held items: items not done.
    "DROP INDEX items_label_recent",
    """CREATE INDEX items_label_recent ON items
        (state, pipeline, stage, last_group, last_label, updated_at) WHERE state != 'done'""",
    # items_state_recent stays whole: state_counts' changed-lately counts of every state.
]

# 15 (issue 13): fewer bytes per run, the runs table rebuilt. Its key is an INTEGER PRIMARY
# KEY, the run number (a run's id is that number as a string, since schema 13), so the
# unique index of the text id goes: an older run's uuid is found through a partial index of
# the runs whose id is not their number. The input fingerprint and the config hash, 16 hex
# digits each, are kept as one 8-byte integer (`input_fp`, `config_fp`; any other text as it
# is) and read back as the same text through generated columns. template_runs loses its
# foreign key to runs(id), which needs that unique index: a trigger forgets a deleted run.
# `room` is the room a run's end will take, reserved by its claim (zeros) and given back by
# its finish: the row is rewritten in place instead of growing out of its page, which split
# the newest pages of the table and left them four fifths full. `stage_no` names the
# run's (pipeline, stage) by a small number (`stages`), which the two stage indexes hold
# instead of both names. `failure` holds the columns only a failure fills (FAILURE_COLUMNS).
_HEX_DIGIT = "(instr('0123456789abcdef', substr({x}, {i}, 1)) - 1)"
_HEX64 = " | ".join(f"({_HEX_DIGIT.format(x='{x}', i=i + 1)} << {60 - 4 * i})" for i in range(16))


def _packed(column: str) -> str:
    """SQL of a text column's packed form: 16 lowercase hex digits as the signed 64-bit
    integer of their bits (runkeys.pack_hex64 in SQL), anything else as it is."""
    hex64 = _HEX64.replace("{x}", column)
    return (
        f"CASE WHEN length({column}) = 16 AND NOT {column} GLOB '*[^0-9a-f]*'"
        f" THEN {hex64} ELSE {column} END"
    )


def _unpacked(column: str) -> str:
    return (
        f"CASE WHEN typeof({column}) = 'integer' THEN printf('%016x', {column}) ELSE {column} END"
    )


# A run's stage number, from its pipeline and stage (runkeys.STAGE_NO).
STAGE_NO = "(SELECT no FROM stages WHERE pipeline = {at}pipeline AND stage = {at}stage)"

_RUN_COLUMNS_14 = (
    "id, pipeline, stage, item_id, item_key, attempt, channel, status, started_at, finished_at,"
    " duration_s, exit_code, signal, pid, error, error_type, traceback, output, group_name,"
    " label, category, type, rule_id, rules_version, code_ref, rows_in, rows_out, cost,"
    " trace_kept, progress, message, pgid, proc_start, data_out, probe_of, original_group,"
    " original_label, original_category, original_type, original_rule_id,"
    " original_rules_version, reclassified_at, daemon, replay_of"
)
# What only a failure's classification (or a probe) writes, kept in one JSON object, NULL on
# the ok runs: 14 columns of the row's header gone from them. Each is read back under its own
# name by a generated column; runkeys.failure_json writes the object. No REAL is among them
# (SQLite writes a number into JSON with 15 digits, which would round a time), nor the texts
# a worker wrote (error, error_type, traceback, output): SQLite's JSON cuts a text at a NUL.
# The queue writes by this list too: a later step that moves another column in gives its own.
_FAILURE_TYPES = {"signal": "INTEGER", "probe_of": "INTEGER"}
FAILURE_COLUMNS = (
    "signal", "group_name", "label", "category", "type", "rule_id", "rules_version", "probe_of",
    "original_group", "original_label", "original_category", "original_type",
    "original_rule_id", "original_rules_version",
)  # fmt: skip


def _failed(*columns: str) -> str:
    return ", ".join(
        f"{c} {_FAILURE_TYPES.get(c, 'TEXT')} GENERATED ALWAYS AS"
        f" (json_extract(failure, '$.{c}')) VIRTUAL"
        for c in columns
    )


_KEPT_COLUMNS = ", ".join(c for c in _RUN_COLUMNS_14.split(", ") if c not in FAILURE_COLUMNS)
# json_patch drops the members that are null; an empty object is no failure at all.
_FAILURE_OF_COLUMNS = (
    "NULLIF(json_patch('{}', json_object("
    + ", ".join(f"'{c}', {c}" for c in FAILURE_COLUMNS)
    + ")), '{}')"
)
_RUN_KEY_MIGRATION = [
    # The columns in the order they had (SELECT * reads the same), the packed ones at the end.
    f"""CREATE TABLE runs_next (
        id TEXT NOT NULL, pipeline TEXT NOT NULL, stage TEXT NOT NULL,
        item_id INTEGER NOT NULL REFERENCES items (id) ON DELETE CASCADE,
        item_key TEXT NOT NULL, attempt INTEGER NOT NULL, channel TEXT,
        status TEXT NOT NULL, started_at REAL NOT NULL, finished_at REAL,
        duration_s REAL, exit_code INTEGER, {_failed("signal")}, pid INTEGER,
        error TEXT, error_type TEXT, traceback TEXT, output TEXT,
        {_failed("group_name", "label")},
        {_failed("category", "type", "rule_id", "rules_version")},
        input_fingerprint TEXT GENERATED ALWAYS AS ({_unpacked("input_fp")}) VIRTUAL,
        code_ref TEXT, config_hash TEXT GENERATED ALWAYS AS ({_unpacked("config_fp")}) VIRTUAL,
        rows_in INTEGER, rows_out INTEGER, cost REAL, trace_kept TEXT, progress REAL,
        message TEXT, pgid INTEGER, proc_start INTEGER, data_out TEXT, {_failed("probe_of")},
        {_failed("original_group", "original_label", "original_category", "original_type")},
        {_failed("original_rule_id", "original_rules_version")}, reclassified_at REAL,
        daemon TEXT,
        trace_id TEXT GENERATED ALWAYS AS (coalesce(trace_kept, printf('%016x%016x',
            CAST(started_at * 1000000 AS INTEGER), CAST(id AS INTEGER)))) VIRTUAL,
        replay_of TEXT, run_no INTEGER PRIMARY KEY, input_fp, config_fp, room BLOB,
        stage_no INTEGER, failure TEXT)""",
    """CREATE TABLE stages (
        no INTEGER PRIMARY KEY, pipeline TEXT NOT NULL, stage TEXT NOT NULL,
        UNIQUE (pipeline, stage))""",
    "INSERT INTO stages (pipeline, stage) SELECT DISTINCT pipeline, stage FROM runs",
    f"INSERT INTO runs_next (run_no, {_KEPT_COLUMNS}, input_fp, config_fp, stage_no, failure)"
    f" SELECT rowid, {_KEPT_COLUMNS}, {_packed('input_fingerprint')}, {_packed('config_hash')},"
    f" {STAGE_NO.format(at='runs.')}, {_FAILURE_OF_COLUMNS} FROM runs ORDER BY rowid",
    """CREATE TABLE template_runs_next (
        run_id TEXT PRIMARY KEY, template_id INTEGER NOT NULL, pipeline TEXT NOT NULL,
        stage TEXT NOT NULL, seen_at REAL NOT NULL)""",
    "INSERT INTO template_runs_next SELECT * FROM template_runs",
    # template_runs first: while it names runs as its parent, dropping runs deletes its rows.
    "DROP TABLE template_runs",
    "DROP TABLE runs",
    "ALTER TABLE runs_next RENAME TO runs",
    "ALTER TABLE template_runs_next RENAME TO template_runs",
    "CREATE INDEX template_runs_by_template ON template_runs (template_id, seen_at)",
    """CREATE TRIGGER runs_forget_templates AFTER DELETE ON runs
        BEGIN DELETE FROM template_runs WHERE run_id = OLD.id; END""",
    # A run found by an id that is not its number (a uuid of before schema 13): runs_by_id,
    # runs_with_prefix, later_ok, run_facts. No run recorded since is in it.
    "CREATE INDEX runs_by_old_id ON runs (id) WHERE id IS NOT CAST(run_no AS TEXT)",
    # The indexes of step 13 again, each named by the queries that read it:
    # find_runs (the page's run list), runs_started_from, runs_started_since, runs_matching,
    # recent_runs, prune_batch, export_runs: runs by start.
    "CREATE INDEX runs_recent ON runs (started_at)",
    # The same, of one stage (the page's and the API's runs of a stage), by its number.
    "CREATE INDEX runs_by_stage ON runs (stage_no, started_at)",
    # count_runs, last_run_statuses, recent_durations, cost_since (covering).
    "CREATE INDEX runs_by_stage_end ON runs (stage_no, finished_at, cost)",
    # running_processes, running_runs, recovery, failure_texts, the page's failures.
    "CREATE INDEX runs_by_status ON runs (status, started_at) WHERE status != 'ok'",
    # earlier_success (the checkpoint lookup), on the packed fingerprint.
    "CREATE INDEX runs_by_fingerprint ON runs (input_fp)"
    " WHERE status = 'ok' AND data_out IS NOT NULL",
    # internal_failures_in_a_row, item_runs, unclaim, prune's newer run.
    "CREATE INDEX runs_by_item ON runs (item_id)",
    # label_failures (the guard's same-label count).
    "CREATE INDEX runs_by_channel_label ON runs (channel, label, finished_at)"
    " WHERE label IS NOT NULL",
    # reclassify's items, reclassified runs.
    "CREATE INDEX runs_reclassified ON runs (reclassified_at) WHERE reclassified_at IS NOT NULL",
]

# 18 (issue 13): runs found by their start through their numbers, which are given in the
# order runs are recorded: the order they start, but for a clock stepped back. Triggers keep
# `run_minutes`, per minute in which runs started: `first_run`, no more than the number of
# any run started in it, and `last_run`, at least the number of any run started in it or
# before, when recorded in order. A run recorded after a run that started in a later minute
# (the clock stepped back) is late: `late_runs` keeps, per minute, the highest number of a
# late run started in it (empty while the clock runs forward). The runs started since T are
# the numbers from the lowest first_run of T's minute and after; those started before U,
# the numbers up to the larger of U's minute's last_run and the late ones' up to it. Each is
# a range of the primary key, filtered on started_at: exact whatever the clock did, and a
# trigger's work per run is the same however far it stepped. runs_recent (started_at) goes,
# and runs_by_stage holds the stage's number alone: within it, runs are in number order.
# 18 + 10 bytes of index per run.
MINUTE_OF = "CAST({} / 60 AS INTEGER)"  # the minute of a time (a start)
_NEW_MINUTE = MINUTE_OF.format("NEW.started_at")
_MARK_MINUTE = (
    f"INSERT INTO late_runs SELECT {_NEW_MINUTE}, NEW.run_no"
    f" WHERE EXISTS (SELECT 1 FROM run_minutes WHERE minute > {_NEW_MINUTE})"
    " ON CONFLICT DO UPDATE SET last_run = max(last_run, excluded.last_run);"
    f" INSERT INTO run_minutes VALUES ({_NEW_MINUTE}, NEW.run_no, max(NEW.run_no, coalesce(("
    f"SELECT last_run FROM run_minutes WHERE minute < {_NEW_MINUTE} ORDER BY minute DESC"
    " LIMIT 1), NEW.run_no))) ON CONFLICT DO UPDATE SET first_run = min(first_run,"
    " excluded.first_run), last_run = max(last_run, excluded.last_run);"
)
_RUN_MINUTES_MIGRATION = [
    """CREATE TABLE run_minutes (minute INTEGER PRIMARY KEY, first_run INTEGER NOT NULL,
        last_run INTEGER NOT NULL)""",
    "CREATE TABLE late_runs (minute INTEGER PRIMARY KEY, last_run INTEGER NOT NULL)",
    "INSERT INTO run_minutes SELECT minute, first_run, MAX(last_run) OVER (ORDER BY minute)"
    f" FROM (SELECT {MINUTE_OF.format('started_at')} AS minute, MIN(run_no) AS first_run,"
    " MAX(run_no) AS last_run FROM runs GROUP BY 1)",
    f"CREATE TRIGGER runs_mark_minute AFTER INSERT ON runs BEGIN {_MARK_MINUTE} END",
    f"CREATE TRIGGER runs_mark_new_start AFTER UPDATE OF started_at ON runs BEGIN {_MARK_MINUTE}"
    " END",
    "DROP INDEX runs_recent",
    # The page's and the API's runs of a stage, newest first: by number within the stage.
    "DROP INDEX runs_by_stage",
    "CREATE INDEX runs_by_stage ON runs (stage_no)",
]

# 20 (issue 13): items_label_recent holds only the items set aside: waiting for a time or a
# person, or ended other than done. Every query through it asks for one of these states,
# and repeats ASIDE (the partial index's WHERE, so the planner may use it). A queued item's
# claim and a running one's finish no longer move an entry of it: each moved two.
ASIDE = "state IN ('retrying', 'deferred', 'held', 'failed', 'ignored')"

# 21 (issue 13): a run's row keeps only what is its own. Its pipeline and stage are its
# stage's number (`stages`), its item's key its item's (`items`), its daemon's host:pid and
# its stage's config hash are numbers in `daemon_names` and `config_hashes` (shared by every
# run of a daemon, of a config), its id its number (an id or a trace id of before schema 13
# is kept in the `failure` object, as id_kept and trace_kept), its duration whole
# microseconds, its process group the difference from its pid (0, no byte, for a group
# leader: every worker) and an empty data_out ('{}', most ok runs') is ''. `run_rows` is
# the table; `runs` is a view of it with every column as it was, so that a reader (a
# person's sqlite3 too) sees what it saw. Written through the view, triggers put each
# column where it is kept; the scheduler's claims and finishes write `run_rows` themselves.
# A one-stage no-op run's row: 138 -> 81 bytes.
_STORED_RUN_COLUMNS = (
    "run_no", "stage_no", "item_id", "attempt", "channel", "status", "started_at",
    "finished_at", "duration_us", "exit_code", "pid", "pgid_off", "proc_start", "rows_in",
    "rows_out", "cost", "progress", "input_fp", "config_no", "data_kept", "daemon_no", "room",
    "failure", "error", "error_type", "traceback", "output", "message", "code_ref",
    "reclassified_at", "replay_of",
)  # fmt: skip
# The view's columns: the runs table's of step 15, in its order (SELECT * reads the same),
# then what only run_rows has.
_VIEW_RUN_COLUMNS = (
    "id", "pipeline", "stage", "item_id", "item_key", "attempt", "channel", "status",
    "started_at", "finished_at", "duration_s", "exit_code", "signal", "pid", "error",
    "error_type", "traceback", "output", "group_name", "label", "category", "type", "rule_id",
    "rules_version", "input_fingerprint", "code_ref", "config_hash", "rows_in", "rows_out",
    "cost", "trace_kept", "progress", "message", "pgid", "proc_start", "data_out", "probe_of",
    "original_group", "original_label", "original_category", "original_type",
    "original_rule_id", "original_rules_version", "reclassified_at", "daemon", "trace_id",
    "replay_of", "run_no", "input_fp", "config_fp", "room", "stage_no", "failure", "id_kept",
    "duration_us", "daemon_no", "config_no", "pgid_off", "data_kept",
)  # fmt: skip
# Each a lookup of its own, made only where a query reads the column: the view stays one
# table to the planner, so a count or a MAX(run_no) through it reads run_rows alone.
_LOOKED_UP = {
    "pipeline": "(SELECT pipeline FROM stages WHERE no = r.stage_no)",
    "stage": "(SELECT stage FROM stages WHERE no = r.stage_no)",
    "item_key": "(SELECT key FROM items WHERE id = r.item_id)",
    "daemon": "(SELECT name FROM daemon_names WHERE no = r.daemon_no)",
    "config_fp": "(SELECT fp FROM config_hashes WHERE no = r.config_no)",
    "config_hash": f"(SELECT {_unpacked('fp')} FROM config_hashes WHERE no = r.config_no)",
}
RUN_ID = "coalesce({at}id_kept, CAST({at}run_no AS TEXT))"  # a run's id, from its row
# Seconds as whole microseconds; a value no integer holds (inf, 1e300: bad values an older
# version or a hand stored) stays a REAL, of microseconds too. As runkeys.microseconds.
MICROSECONDS = (
    "CASE WHEN abs({0}) < 1e12 THEN CAST(round({0} * 1000000) AS INTEGER) ELSE {0} * 1000000 END"
)
_RUN_ROWS_TABLE = f"""CREATE TABLE run_rows (
    run_no INTEGER PRIMARY KEY, stage_no INTEGER NOT NULL,
    item_id INTEGER NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL, channel TEXT, status TEXT NOT NULL, started_at REAL NOT NULL,
    finished_at REAL, duration_us INTEGER, exit_code INTEGER, pid INTEGER, pgid_off INTEGER,
    proc_start INTEGER, rows_in INTEGER, rows_out INTEGER, cost REAL, progress REAL,
    input_fp, config_no INTEGER, data_kept TEXT, daemon_no INTEGER, room BLOB, failure TEXT,
    error TEXT, error_type TEXT, traceback TEXT, output TEXT, message TEXT, code_ref TEXT,
    reclassified_at REAL, replay_of TEXT, {_failed("id_kept", "trace_kept")},
    id TEXT GENERATED ALWAYS AS ({RUN_ID.format(at="")}) VIRTUAL,
    duration_s REAL GENERATED ALWAYS AS (duration_us / 1000000.0) VIRTUAL,
    pgid INTEGER GENERATED ALWAYS AS
        (CASE WHEN pid IS NULL THEN pgid_off ELSE pid + pgid_off END) VIRTUAL,
    data_out TEXT GENERATED ALWAYS AS
        (CASE data_kept WHEN '' THEN '{{}}' ELSE data_kept END) VIRTUAL,
    input_fingerprint TEXT GENERATED ALWAYS AS ({_unpacked("input_fp")}) VIRTUAL,
    trace_id TEXT GENERATED ALWAYS AS (coalesce(trace_kept, printf('%016x%016x',
        CAST(started_at * 1000000 AS INTEGER), run_no))) VIRTUAL,
    {_failed(*FAILURE_COLUMNS)})"""
# How run_rows keeps a column the view shows otherwise: SQL of a row's shown columns (`{r}`:
# NEW in the view's triggers, the old table in the migration), and the shown columns whose
# change through the view rewrites it.
_KEPT_AS = {
    "stage_no": (STAGE_NO.format(at="{r}."), ("pipeline", "stage")),
    "daemon_no": ("(SELECT no FROM daemon_names WHERE name = {r}.daemon)", ("daemon",)),
    "config_no": ("(SELECT no FROM config_hashes WHERE fp = {r}.config_fp)", ("config_fp",)),
    "duration_us": (MICROSECONDS.format("{r}.duration_s"), ("duration_s",)),
    "pgid_off": (
        "CASE WHEN {r}.pid IS NULL THEN {r}.pgid ELSE {r}.pgid - {r}.pid END", ("pid", "pgid")
    ),
    "data_kept": ("CASE {r}.data_out WHEN '{{}}' THEN '' ELSE {r}.data_out END", ("data_out",)),
    # the failure object, with an older id and trace id in it
    "failure": (
        "NULLIF(json_patch(coalesce({r}.failure, '{{}}'), json_object('id_kept',"
        " nullif({r}.id, CAST({r}.run_no AS TEXT)), 'trace_kept', {r}.trace_kept)), '{{}}')",
        ("id", "trace_kept"),
    ),
}  # fmt: skip


def _kept(column: str, row: str) -> str:
    return _KEPT_AS[column][0].format(r=row)


def _inserted(column: str) -> str:
    """What an insert through the view puts in a column of run_rows: its own value if given."""
    if column not in _KEPT_AS:
        return f"NEW.{column}"
    return _kept(column, "NEW") if column == "failure" else (
        f"coalesce(NEW.{column}, {_kept(column, 'NEW')})")  # fmt: skip


def _updated(column: str) -> str:
    """What an update through the view puts in a column of run_rows: anew, if what the view
    shows of it changed."""
    if column not in _KEPT_AS:
        return f"NEW.{column}"
    changed = " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in _KEPT_AS[column][1])
    return f"CASE WHEN {changed} THEN {_kept(column, 'NEW')} ELSE NEW.{column} END"


def _migrated(column: str) -> str:
    """A column of run_rows from the runs table of step 20."""
    if column == "stage_no":
        return f"coalesce(runs.stage_no, {_kept(column, 'runs')})"
    return _kept(column, "runs") if column in _KEPT_AS else f"runs.{column}"


_NAME_NEW_RUNS = (
    "INSERT OR IGNORE INTO stages (pipeline, stage) SELECT NEW.pipeline, NEW.stage"
    " WHERE NEW.pipeline IS NOT NULL AND NEW.stage IS NOT NULL;"
    " INSERT OR IGNORE INTO daemon_names (name) SELECT NEW.daemon WHERE NEW.daemon IS NOT NULL;"
    " INSERT OR IGNORE INTO config_hashes (fp) SELECT NEW.config_fp"
    " WHERE NEW.config_fp IS NOT NULL;"
)
_UNSTARTED = [c for c in _STORED_RUN_COLUMNS if c not in ("run_no", "started_at")]
_RUN_ROWS_MIGRATION = [
    "CREATE TABLE daemon_names (no INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
    "INSERT INTO daemon_names (name) SELECT DISTINCT daemon FROM runs WHERE daemon IS NOT NULL",
    "CREATE TABLE config_hashes (no INTEGER PRIMARY KEY, fp NOT NULL UNIQUE)",  # as packed
    "INSERT INTO config_hashes (fp) SELECT DISTINCT config_fp FROM runs"
    " WHERE config_fp IS NOT NULL",
    "INSERT OR IGNORE INTO stages (pipeline, stage) SELECT DISTINCT pipeline, stage FROM runs",
    _RUN_ROWS_TABLE,
    f"INSERT INTO run_rows ({', '.join(_STORED_RUN_COLUMNS)})"
    f" SELECT {', '.join(map(_migrated, _STORED_RUN_COLUMNS))} FROM runs ORDER BY run_no",
    "DROP TABLE runs",  # its indexes and triggers go with it
    f"CREATE VIEW runs ({', '.join(_VIEW_RUN_COLUMNS)}) AS SELECT "
    + ", ".join(_LOOKED_UP.get(c, f"r.{c}") for c in _VIEW_RUN_COLUMNS)
    + " FROM run_rows r",
    f"""CREATE TRIGGER runs_insert INSTEAD OF INSERT ON runs BEGIN {_NAME_NEW_RUNS}
        INSERT INTO run_rows ({", ".join(_STORED_RUN_COLUMNS)}) VALUES
        ({", ".join(map(_inserted, _STORED_RUN_COLUMNS))}); END""",
    # started_at apart, and only when it changed: its trigger marks the minute anew.
    f"""CREATE TRIGGER runs_update INSTEAD OF UPDATE ON runs BEGIN {_NAME_NEW_RUNS}
        UPDATE run_rows SET started_at = NEW.started_at
            WHERE run_no = OLD.run_no AND NEW.started_at IS NOT OLD.started_at;
        UPDATE run_rows SET {", ".join(f"{c} = {_updated(c)}" for c in _UNSTARTED)}
            WHERE run_no = OLD.run_no; END""",
    "CREATE TRIGGER runs_delete INSTEAD OF DELETE ON runs"
    " BEGIN DELETE FROM run_rows WHERE run_no = OLD.run_no; END",
    f"CREATE TRIGGER runs_mark_minute AFTER INSERT ON run_rows BEGIN {_MARK_MINUTE} END",
    f"CREATE TRIGGER runs_mark_new_start AFTER UPDATE OF started_at ON run_rows"
    f" BEGIN {_MARK_MINUTE} END",
    f"""CREATE TRIGGER runs_forget_templates AFTER DELETE ON run_rows
        BEGIN DELETE FROM template_runs WHERE run_id = {RUN_ID.format(at="OLD.")}; END""",
    # Each index of step 18 again, read by the same queries.
    "CREATE INDEX runs_by_old_id ON run_rows (id_kept) WHERE id_kept IS NOT NULL",
    "CREATE INDEX runs_by_stage ON run_rows (stage_no)",
    "CREATE INDEX runs_by_stage_end ON run_rows (stage_no, finished_at, cost)"
    " WHERE finished_at IS NOT NULL",
    "CREATE INDEX runs_by_status ON run_rows (status, started_at) WHERE status != 'ok'",
    "CREATE INDEX runs_by_item ON run_rows (item_id)",
    "CREATE INDEX runs_by_channel_label ON run_rows (channel, label, finished_at)"
    " WHERE label IS NOT NULL",
    "CREATE INDEX runs_reclassified ON run_rows (reclassified_at)"
    " WHERE reclassified_at IS NOT NULL",
]

# Each step upgrades the schema by one version; a step never changes once shipped.
MIGRATIONS: list[list[str]] = [
    [  # 1: items and runs
        """CREATE TABLE items (
            id INTEGER PRIMARY KEY, pipeline TEXT NOT NULL, key TEXT NOT NULL,
            stage TEXT NOT NULL, state TEXT NOT NULL, data TEXT NOT NULL DEFAULT '{}',
            attempt INTEGER NOT NULL DEFAULT 0, ready_at REAL, channel TEXT,
            last_run_id TEXT, last_error TEXT, last_label TEXT, last_group TEXT,
            created_at REAL NOT NULL, updated_at REAL NOT NULL, UNIQUE (pipeline, key))""",
        "CREATE INDEX items_claim ON items (pipeline, stage, state, ready_at)",
        "CREATE INDEX items_state ON items (state, updated_at)",
        """CREATE TABLE runs (
            id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, stage TEXT NOT NULL,
            item_id INTEGER NOT NULL REFERENCES items (id) ON DELETE CASCADE,
            item_key TEXT NOT NULL, attempt INTEGER NOT NULL, channel TEXT,
            status TEXT NOT NULL, started_at REAL NOT NULL, finished_at REAL,
            duration_s REAL, exit_code INTEGER, signal INTEGER, pid INTEGER,
            error TEXT, error_type TEXT, traceback TEXT, output TEXT,
            group_name TEXT, label TEXT, category TEXT, type TEXT, rule_id TEXT,
            rules_version TEXT, input_fingerprint TEXT, code_ref TEXT, config_hash TEXT,
            rows_in INTEGER, rows_out INTEGER, cost REAL, trace_id TEXT)""",
        "CREATE INDEX runs_recent ON runs (started_at)",
        "CREATE INDEX runs_by_stage ON runs (pipeline, stage, started_at)",
        "CREATE INDEX runs_by_status ON runs (status, started_at)",
        "CREATE INDEX runs_by_fingerprint ON runs (input_fingerprint)",
        "CREATE INDEX runs_by_item ON runs (item_id, started_at)",
    ],
    [  # 2: live progress reported by workers
        "ALTER TABLE runs ADD COLUMN progress REAL",
        "ALTER TABLE runs ADD COLUMN message TEXT",
    ],
    [  # 3: halts and pauses, the notification outbox, daemon facts, bulk requeues
        """CREATE TABLE holds (
            id INTEGER PRIMARY KEY, scope TEXT NOT NULL, target TEXT NOT NULL,
            kind TEXT NOT NULL, rule TEXT, reason TEXT NOT NULL, label TEXT, count INTEGER,
            samples TEXT, created_at REAL NOT NULL, created_by TEXT,
            cleared_at REAL, cleared_by TEXT,
            probe_at REAL, cooldown_s REAL, probe_run_id TEXT)""",
        "CREATE UNIQUE INDEX holds_active ON holds (scope, target, kind) WHERE cleared_at IS NULL",
        """CREATE TABLE outbox (
            id INTEGER PRIMARY KEY, key TEXT NOT NULL, event TEXT NOT NULL,
            target TEXT NOT NULL, title TEXT NOT NULL, body TEXT NOT NULL,
            created_at REAL NOT NULL, due_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            next_try_at REAL NOT NULL, sent_at REAL, last_error TEXT)""",
        "CREATE INDEX outbox_pending ON outbox (sent_at, next_try_at)",
        "CREATE INDEX outbox_by_key ON outbox (key, target, created_at)",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "ALTER TABLE items ADD COLUMN requeues INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX items_by_channel ON items (channel, state, ready_at)",
        "CREATE INDEX items_by_label ON items (last_label, state)",
        "CREATE INDEX runs_by_channel_label ON runs (channel, label, finished_at)",
        "CREATE INDEX runs_by_stage_end ON runs (pipeline, stage, finished_at)",
    ],
    [  # 4: covering indexes, so the status tree counts a million items from the index alone
        "CREATE INDEX items_status ON items (pipeline, stage, state, channel, updated_at)",
        """CREATE INDEX items_labels ON items
            (state, pipeline, stage, last_group, last_label, updated_at)""",
        "DROP INDEX items_by_label",
    ],
    _COUNTS_MIGRATION,
    [  # 6: the worker process of each run, so a restart can kill what a dead daemon left
        "ALTER TABLE runs ADD COLUMN pgid INTEGER",
        "ALTER TABLE runs ADD COLUMN proc_start INTEGER",
    ],
    [  # 7: what each ok run merged into its item (a checkpoint gives it back), and probes
        "ALTER TABLE runs ADD COLUMN data_out TEXT",
        "ALTER TABLE runs ADD COLUMN probe_of INTEGER",
    ],
    [  # 8: templates of the failures no rule matched, and the rules proposed for them
        """CREATE TABLE templates (
            id INTEGER PRIMARY KEY, template TEXT NOT NULL, count INTEGER NOT NULL,
            first_seen REAL NOT NULL, last_seen REAL NOT NULL)""",
        """CREATE TABLE template_runs (
            run_id TEXT PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
            template_id INTEGER NOT NULL, pipeline TEXT NOT NULL, stage TEXT NOT NULL,
            seen_at REAL NOT NULL)""",
        "CREATE INDEX template_runs_by_template ON template_runs (template_id, seen_at)",
        """CREATE TABLE proposals (
            id INTEGER PRIMARY KEY, template_id INTEGER NOT NULL, template TEXT NOT NULL,
            state TEXT NOT NULL, pattern TEXT NOT NULL, label TEXT NOT NULL,
            group_name TEXT NOT NULL, category TEXT NOT NULL, examples TEXT NOT NULL,
            created_at REAL NOT NULL, decided_at REAL, decided_by TEXT, rules_file TEXT)""",
        "CREATE INDEX proposals_by_template ON proposals (template_id, state)",
    ],
    [  # 9: what people did, from the page, the CLI or the tray
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY, at REAL NOT NULL, who TEXT NOT NULL,
            action TEXT NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '')""",
        "CREATE INDEX audit_recent ON audit (at)",
    ],
    [  # 10: a failure re-bucketed by `pipewarden reclassify` keeps what judged it first
        "ALTER TABLE runs ADD COLUMN original_group TEXT",
        "ALTER TABLE runs ADD COLUMN original_label TEXT",
        "ALTER TABLE runs ADD COLUMN original_category TEXT",
        "ALTER TABLE runs ADD COLUMN original_type TEXT",
        "ALTER TABLE runs ADD COLUMN original_rule_id TEXT",
        "ALTER TABLE runs ADD COLUMN original_rules_version TEXT",
        "ALTER TABLE runs ADD COLUMN reclassified_at REAL",
        # Partial: only re-bucketed runs are in it, so ordinary writes never touch it.
        "CREATE INDEX runs_reclassified ON runs (reclassified_at) WHERE reclassified_at"
        " IS NOT NULL",
        # An item whose label a re-bucketing changed, until its next run: the status tree
        # says so beside the count, from this partial index alone.
        "ALTER TABLE items ADD COLUMN relabelled_at REAL",
        """CREATE INDEX items_relabelled ON items (pipeline, stage, state, last_group, last_label)
            WHERE relabelled_at IS NOT NULL""",
        """CREATE TRIGGER items_relabel_ends AFTER UPDATE OF last_run_id ON items
            WHEN NEW.relabelled_at IS NOT NULL AND NEW.last_run_id IS NOT OLD.last_run_id
            BEGIN UPDATE items SET relabelled_at = NULL WHERE id = NEW.id; END""",
    ],
    [  # 11: the daemon that ran each run, and the daemons' leases (issue 16: a fleet)
        "ALTER TABLE runs ADD COLUMN daemon TEXT",
        """CREATE TABLE daemons (
            id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL,
            started_at REAL NOT NULL, heartbeat_at REAL NOT NULL, stopped_at REAL,
            recovered_by TEXT)""",
        "ALTER TABLE outbox ADD COLUMN claimed_by TEXT",  # the daemon delivering the row
    ],
    [  # 12: ended runs counted per stage, slot, outcome and duration (store/rollup.py)
        """CREATE TABLE run_slots (
            pipeline TEXT NOT NULL, stage TEXT NOT NULL, slot INTEGER NOT NULL,
            outcome TEXT NOT NULL, bucket INTEGER NOT NULL, runs INTEGER NOT NULL,
            PRIMARY KEY (pipeline, stage, slot, outcome, bucket)) WITHOUT ROWID""",
        # The last day of runs (what status -v and the default chart show), counted as
        # rollup.py counts them as they end; older charts fill as runs end from now on.
        f"""INSERT INTO run_slots
            SELECT runs.pipeline, runs.stage, CAST(runs.finished_at / {SLOT_S} AS INTEGER),
                CASE WHEN runs.status IN ('ok', 'skipped', 'ignored', 'deferred', 'interrupted')
                    THEN runs.status
                    WHEN items.state = 'failed' AND items.stage = runs.stage THEN 'failed'
                    ELSE 'retried' END,
                CASE WHEN runs.duration_s >= 0.001
                    THEN 1 + CAST({BUCKETS_PER_DOUBLING} * log2(runs.duration_s * 1000) AS INTEGER)
                    ELSE 0 END,
                COUNT(*)
            FROM runs LEFT JOIN items ON items.id = runs.item_id
            WHERE runs.started_at >= unixepoch() - {BACKFILL_S + 86_400}
                AND runs.finished_at >= unixepoch() - {BACKFILL_S} AND runs.status != 'running'
            GROUP BY 1, 2, 3, 4, 5""",
    ],
    _FEWER_BYTES_MIGRATION,  # 13
    [  # 14: a run `pipewarden replay --record` kept: the run it replayed (production reads
        # leave such runs out; they never change an item)
        "ALTER TABLE runs ADD COLUMN replay_of TEXT",
    ],
    _RUN_KEY_MIGRATION,  # 15
    # 16: PostgreSQL's status counts kept by triggers, in rows per connection; SQLite has
    # kept its own since step 5 (one writer). The step keeps both backends at one version.
    [],
    [  # 17 (issue 13): the scheduler's claims and finishes count their own moves, in one
        # upsert per count row and batch, and flip `tally` to say so (see sqlite/counts.py)
        "ALTER TABLE items ADD COLUMN tally INTEGER NOT NULL DEFAULT 0",
        "DROP TRIGGER items_counted_update",
        _counted_update(
            f"NEW.tally IS OLD.tally AND ({_COUNT_KEY['old']}) IS NOT ({_COUNT_KEY['new']})"
        ),
        # The ended runs only: a claim wrote a running run's entry and its end moved it. Every
        # query through it asks for a finished_at range, which implies the WHERE.
        "DROP INDEX runs_by_stage_end",
        "CREATE INDEX runs_by_stage_end ON runs (stage_no, finished_at, cost)"
        " WHERE finished_at IS NOT NULL",
        # earlier_success looks among the item's runs (runs_by_item): the fingerprint holds
        # the item's key. Its index took a random page of the WAL per run, 18 bytes each.
        "DROP INDEX runs_by_fingerprint",
    ],
    _RUN_MINUTES_MIGRATION,  # 18
    [  # 19 (issue 13): `room` in an item's row, as in a run's (schema 15): what its first
        # claim adds (its run id, a longer state) is reserved by its enqueue, zeros, and
        # given back by the claim. The row is rewritten in place instead of growing out of
        # its page: items are appended, so each page was full when its items' claims came,
        # and split, and stayed three quarters full (105 bytes an item, 78 of them its row).
        "ALTER TABLE items ADD COLUMN room BLOB",
    ],
    [  # 20: items_label_recent of the items set aside only (ASIDE)
        "DROP INDEX items_label_recent",
        "CREATE INDEX items_label_recent ON items"
        f" (state, pipeline, stage, last_group, last_label, updated_at) WHERE {ASIDE}",
    ],
    _RUN_ROWS_MIGRATION,  # 21
    [  # 22 (issue 13): runs_by_status holds the status alone, so a status's entries are in
        # run number order: the page's runs of a status, newest first, are read from its end
        # with no sort (by (status, started_at), the planner sorted every failure when no
        # ANALYZE had told it failures were many: 3.7 s for the 1M/5M store's 4M). Every
        # read of it by start bounds the run numbers too (RunKeys._started_since).
        "DROP INDEX runs_by_status",
        "CREATE INDEX runs_by_status ON run_rows (status) WHERE status != 'ok'",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)


def create(path: Path) -> None:
    """A new store appears whole: made under another name (mode 0600, WAL) and linked into
    place, so a store file of 0 bytes is one that lost its content, never one half made."""
    draft = path.with_name(f"{path.name}.new-{os.getpid()}")
    os.close(os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    try:
        connection = sqlite3.connect(draft)
        try:
            connection.execute("PRAGMA journal_mode = wal")  # writes the first page
        finally:
            connection.close()
        with contextlib.suppress(FileExistsError):  # another process made it first: theirs
            os.link(draft, path)
    finally:
        draft.unlink()
