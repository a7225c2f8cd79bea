"""The state store: items and runs in one SQLite file (WAL), through Peewee.

The scheduler sees only a narrow interface (`enqueue`, `claim`, `finish`,
`recover_interrupted`, `next_ready_at`, `pending_count`); the CLI reads through the
Peewee models. The hot path (claim and finish) is plain SQL run in batches inside
one transaction, because per-row ORM saves cannot keep up with a busy pool.

Times are UNIX seconds (UTC) as REAL, which keeps delta queries simple and fast.
The schema has a version; `migrate` upgrades an older file in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peewee as pw
from pipewarden import faults
from pipewarden.errors import StoreError
from pipewarden.types import CLAIMABLE_STATES, PENDING_STATES, ItemState, RunStatus

STORE_FILE = "pipewarden.db"
PRUNE_BATCH = 2000  # runs deleted per transaction when pruning
BUSY_TIMEOUT_MS = 10_000  # CLI writers and the daemon share the file; wait, don't fail
# Checkpoint the WAL every 16 MiB rather than 4: each checkpoint costs an fsync, and a busy
# daemon writes a few dozen pages per commit.
WAL_CHECKPOINT_PAGES = 4096


# -- schema ------------------------------------------------------------------------
class Item(pw.Model):
    id = pw.AutoField()
    pipeline = pw.TextField()
    key = pw.TextField()
    stage = pw.TextField()
    state = pw.TextField()
    data = pw.TextField(default="{}")
    attempt = pw.IntegerField(default=0)  # attempts made at the current stage
    ready_at = pw.FloatField(null=True)  # claimable from then (queued / retrying / deferred)
    channel = pw.TextField(null=True)
    last_run_id = pw.TextField(null=True)
    last_error = pw.TextField(null=True)
    last_label = pw.TextField(null=True)
    last_group = pw.TextField(null=True)
    created_at = pw.FloatField()
    updated_at = pw.FloatField()
    requeues = pw.IntegerField(default=0)  # schema 3: times a person requeued it in bulk
    force = pw.IntegerField(default=0)  # schema 5: run even if this input already succeeded

    class Meta:
        table_name = "items"


class Run(pw.Model):
    id = pw.TextField(primary_key=True)
    pipeline = pw.TextField()
    stage = pw.TextField()
    item_id = pw.IntegerField()
    item_key = pw.TextField()
    attempt = pw.IntegerField()
    channel = pw.TextField(null=True)
    status = pw.TextField()
    started_at = pw.FloatField()
    finished_at = pw.FloatField(null=True)
    duration_s = pw.FloatField(null=True)
    exit_code = pw.IntegerField(null=True)
    signal = pw.IntegerField(null=True)
    pid = pw.IntegerField(null=True)
    error = pw.TextField(null=True)
    error_type = pw.TextField(null=True)  # the exception type the worker reported
    traceback = pw.TextField(null=True)  # traceback, or the stderr tail of a command
    output = pw.TextField(null=True)  # stdout lines that were not protocol messages
    group_name = pw.TextField(null=True)
    label = pw.TextField(null=True)
    category = pw.TextField(null=True)
    type = pw.TextField(null=True)
    rule_id = pw.TextField(null=True)
    rules_version = pw.TextField(null=True)
    input_fingerprint = pw.TextField(null=True)
    code_ref = pw.TextField(null=True)
    config_hash = pw.TextField(null=True)
    rows_in = pw.IntegerField(null=True)
    rows_out = pw.IntegerField(null=True)
    cost = pw.FloatField(null=True)
    trace_id = pw.TextField(null=True)
    progress = pw.FloatField(null=True)  # schema 2
    message = pw.TextField(null=True)  # schema 2
    pgid = pw.IntegerField(null=True)  # schema 6: the worker's process group
    proc_start = pw.IntegerField(null=True)  # schema 6: its start time (/proc/PID/stat 22)
    data_out = pw.TextField(null=True)  # schema 7: what an ok run merged into its item (JSON)
    probe_of = pw.IntegerField(null=True)  # schema 7: the halt (holds.id) this run probed

    class Meta:
        table_name = "runs"


class Hold(pw.Model):
    """A halt (raised by a rule) or a pause (by a person) on a channel, stage or pipeline."""

    id = pw.AutoField()
    scope = pw.TextField()  # "channel" | "stage" | "pipeline"
    target = pw.TextField()  # "sms" | "sites/capture" | "sites"
    kind = pw.TextField()  # "halt" | "pause"
    rule = pw.TextField(null=True)
    reason = pw.TextField()
    label = pw.TextField(null=True)
    count = pw.IntegerField(null=True)
    samples = pw.TextField(null=True)  # JSON list of a few error texts
    created_at = pw.FloatField()
    created_by = pw.TextField(null=True)
    cleared_at = pw.FloatField(null=True)
    cleared_by = pw.TextField(null=True)
    probe_at = pw.FloatField(null=True)
    cooldown_s = pw.FloatField(null=True)
    probe_run_id = pw.TextField(null=True)

    class Meta:
        table_name = "holds"


class Outbox(pw.Model):
    """One notification for one target; sent once, retried until it is."""

    id = pw.AutoField()
    key = pw.TextField()
    event = pw.TextField()
    target = pw.TextField()  # the target's id (a hash): Apprise URLs are secrets
    title = pw.TextField()
    body = pw.TextField()
    created_at = pw.FloatField()
    due_at = pw.FloatField()
    attempts = pw.IntegerField(default=0)
    next_try_at = pw.FloatField()
    sent_at = pw.FloatField(null=True)
    last_error = pw.TextField(null=True)

    class Meta:
        table_name = "outbox"


class _Database(pw.SqliteDatabase):
    def rollback(self) -> None:
        # SQLite ends a transaction itself on a full disk or an I/O error: a ROLLBACK then
        # fails ("no transaction is active") and would hide the error that mattered.
        if self.connection().in_transaction:
            super().rollback()


def _create(path: Path) -> None:
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


def _bound(model: type[pw.Model], db: pw.Database) -> Any:
    meta = type("Meta", (), {"database": db, "table_name": model._meta.table_name})
    return type(model.__name__, (model,), {"Meta": meta, "__module__": __name__})


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
    f"""CREATE TRIGGER items_counted_update AFTER UPDATE OF pipeline, stage, state, channel,
        last_group, last_label ON items WHEN ({_COUNT_KEY["old"]}) IS NOT ({_COUNT_KEY["new"]})
        BEGIN UPDATE item_counts SET n = n - 1 WHERE {_COUNT_MATCH}; {_COUNT_ADD} END""",
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

# Each step upgrades the schema by one version; a step never changes once shipped.
_MIGRATIONS: list[list[str]] = [
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
    [  # 8 (the page's part, issue 14): what people did, from the page, the CLI or the tray
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY, at REAL NOT NULL, who TEXT NOT NULL,
            action TEXT NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '')""",
        "CREATE INDEX audit_recent ON audit (at)",
    ],
]
SCHEMA_VERSION = len(_MIGRATIONS)


# -- what the scheduler exchanges with the store -------------------------------------
@dataclass(frozen=True)
class Enqueued:
    new: list[str]  # keys not known before
    restarted: list[str]  # finished items started again at the first stage
    unchanged: list[str]  # still queued, running or waiting: left as they were
    held: list[str]  # held for a person (release or fail them): left as they were
    data_replaced: list[str]  # of `restarted`, those whose data the data given replaced


@dataclass(frozen=True)
class NewRun:
    """What the scheduler knows of a run before its worker starts."""

    run_id: str
    item_id: int
    channel: str
    input_fingerprint: str
    config_hash: str
    code_ref: str | None
    trace_id: str


@dataclass(frozen=True)
class Claimed:
    item_id: int
    key: str
    data: dict[str, Any]
    attempt: int  # this run's attempt number (1 for the first)
    force: bool = False  # a person asked for the work to be done again


@dataclass(frozen=True)
class FinishedRun:
    """A run's end and the item's next state, written together."""

    run_id: str
    item_id: int
    status: RunStatus
    pipeline: str
    stage: str
    channel: str | None
    finished_at: float
    duration_s: float
    item_stage: str
    item_state: ItemState
    item_data: str  # JSON
    item_attempt: int
    item_ready_at: float | None
    item_channel: str | None  # the channel at item_stage
    item_force: bool = False  # kept while the item retries at the same stage
    exit_code: int | None = None
    signal: int | None = None
    pid: int | None = None
    pgid: int | None = None
    proc_start: int | None = None
    error: str | None = None
    error_type: str | None = None
    traceback: str | None = None
    output: str | None = None
    group_name: str | None = None
    label: str | None = None
    category: str | None = None
    type: str | None = None
    rule_id: str | None = None
    rules_version: str | None = None
    rows_out: int | None = None
    cost: float | None = None
    progress: float | None = None
    message: str | None = None
    data_out: str | None = None  # JSON: what an ok run merged into the item
    probe_of: int | None = None  # the halt this run probed


@dataclass(frozen=True)
class HeldChange:
    """What `release` or `fail` did to held items."""

    changed: list[str]  # the keys released (or failed)
    not_held: dict[str, str | None]  # of the keys given, those not held: key -> state (None: none)


@dataclass(frozen=True)
class Recovered:
    run_id: str
    pipeline: str
    stage: str
    item_key: str
    held: bool


_RUN_END_COLUMNS = (
    "status", "finished_at", "duration_s", "exit_code", "signal", "pid", "pgid", "proc_start",
    "error", "error_type",
    "traceback", "output", "group_name", "label", "category", "type", "rule_id",
    "rules_version", "rows_out", "cost", "data_out", "probe_of", "progress", "message",
)  # fmt: skip
_FINISH_RUN_SQL = (
    f"UPDATE runs SET {', '.join(f'{c} = ?' for c in _RUN_END_COLUMNS[:-2])}, "
    "progress = COALESCE(?, progress), message = COALESCE(?, message) WHERE id = ?"
)
_FINISH_ITEM_SQL = (
    "UPDATE items SET stage = ?, state = ?, data = ?, attempt = ?, ready_at = ?, channel = ?, "
    "force = ?, last_error = ?, last_label = ?, last_group = ?, updated_at = ? WHERE id = ?"
)
FAILED_BY_A_PERSON = "Failed by a person"  # the label of a held item a person failed
_CLAIMABLE = ", ".join(f"'{s}'" for s in CLAIMABLE_STATES)
_PENDING = ", ".join(f"'{s}'" for s in PENDING_STATES)


class Store:
    """The store, opened for writing (migrated to this version's schema first) or, with
    `read_only`, for reading only: nothing is written, and an older schema is refused."""

    def __init__(self, state_dir: Path, read_only: bool = False):
        self.state_dir = state_dir
        self.path = state_dir / STORE_FILE
        if not read_only:
            try:
                state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as exc:
                raise StoreError(f"cannot create state dir {state_dir}: {exc.strerror}") from None
        faults.refuse_emptied(self.path)
        pragmas: dict[str, Any] = {"foreign_keys": 1, "busy_timeout": BUSY_TIMEOUT_MS}
        if not read_only:
            pragmas |= {
                "journal_mode": "wal",
                "synchronous": "normal",  # WAL + NORMAL: a killed daemon loses no commit
                "wal_autocheckpoint": WAL_CHECKPOINT_PAGES,
            }
        where = f"{self.path.absolute().as_uri()}?mode=ro" if read_only else str(self.path)
        self.db = _Database(where, pragmas=pragmas, autoconnect=True, uri=read_only)
        # Each Store binds its own model classes, so two stores never share a database.
        self.Item: type[Item] = _bound(Item, self.db)
        self.Run: type[Run] = _bound(Run, self.db)
        self.Hold: type[Hold] = _bound(Hold, self.db)
        self.Outbox: type[Outbox] = _bound(Outbox, self.db)
        try:
            if not read_only and not self.path.exists():
                _create(self.path)
            elif not read_only and (fault := faults.check_files(self.path)):
                raise fault  # SQLite would open it read-only, and stay so once it is writable
            self.found_schema = self.schema_version()
            if read_only:
                self._check_schema(self.found_schema)
            else:
                self.migrate()
            self._enter_every_table()
            found = os.stat(self.path)
        except StoreError:
            self.db.close()
            raise
        except OSError as exc:
            self.db.close()
            fault = faults.os_fault(exc, self.path)
            raise fault or StoreError(f"cannot open store {self.path}: {exc.strerror}") from None
        except (sqlite3.Error, pw.PeeweeException) as exc:
            self.db.close()
            fault = faults.fault_of(exc, self.path)
            raise fault or StoreError(f"cannot open store {self.path}: {exc}") from None
        self.file_id = (found.st_dev, found.st_ino)  # the file opened: see faults.check_files

    def _check_schema(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema {version}, newer than this pipewarden "
                f"({SCHEMA_VERSION}) — upgrade pipewarden"
            )
        if version < SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema {version}; this pipewarden reads schema"
                f" {SCHEMA_VERSION} — start the daemon or run `pipewarden migrate`"
            )

    def _enter_every_table(self) -> None:
        """Read into every table once: a damaged schema or table root is found at the open,
        whatever a command goes on to read."""
        tables = self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        for (table,) in tables.fetchall():
            self._conn.execute(f'SELECT * FROM "{table}" NOT INDEXED LIMIT 1').fetchall()

    def close(self) -> None:
        self.db.close()

    @property
    def _conn(self) -> sqlite3.Connection:
        return self.db.connection()

    def transaction(self) -> Any:
        """One write transaction; the scheduler wraps a whole loop pass in it (one commit)."""
        return self.db.atomic("IMMEDIATE")

    def _write(self) -> Any:
        return contextlib.nullcontext() if self.db.in_transaction() else self.transaction()

    # -- schema ---------------------------------------------------------------------
    def schema_version(self) -> int:
        return self._conn.execute("PRAGMA user_version").fetchone()[0]

    def migrate(self) -> None:
        """Upgrade the schema step by step; safe when several processes open it at once."""
        while True:
            # The version is read inside the write lock: another process may have just
            # applied the step this one was about to apply.
            with self.db.atomic("IMMEDIATE"):
                current = self.schema_version()
                if current > SCHEMA_VERSION:
                    self._check_schema(current)
                if current == SCHEMA_VERSION:
                    return
                for statement in _MIGRATIONS[current]:
                    self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version = {current + 1}")

    # -- enqueue --------------------------------------------------------------------
    def enqueue(
        self,
        pipeline: str,
        stage: str,
        items: Sequence[tuple[str, dict[str, Any] | None]],
        now: float,
        channel_for: Any = None,  # Callable[[dict], str]: the stage's channel for an item
        force: bool = False,
    ) -> Enqueued:
        """Add items at `stage`, by key: new ones are queued, finished ones start again.

        An item that is done, failed or ignored starts again at `stage`; data given (not
        None) replaces its data, and without it the item keeps the data it has. The stages
        its input already passed are skipped (checkpoints). One still queued, running or
        waiting (held for a person included) is left as it is, data and all. With
        `force`, every item not running starts again and its work is done again,
        checkpoints or not.
        """
        restartable = "('done', 'failed', 'ignored')" if not force else "('done', 'failed',"
        restartable += "" if not force else " 'ignored', 'queued', 'retrying', 'deferred', 'held')"
        result = Enqueued([], [], [], [], [])
        with self.db.atomic("IMMEDIATE"):
            for key, given in items:
                row = self._conn.execute(
                    "SELECT state, data FROM items WHERE pipeline = ? AND key = ?", (pipeline, key)
                ).fetchone()
                data = given if given is not None else json.loads(row[1]) if row else {}
                channel = channel_for(data) if channel_for else stage
                if row is None:
                    self._conn.execute(
                        "INSERT INTO items (pipeline, key, stage, state, data, ready_at, channel,"
                        " force, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (pipeline, key, stage, ItemState.QUEUED, json.dumps(data), now, channel,
                         int(force), now, now),
                    )  # fmt: skip
                    result.new.append(key)
                elif self._conn.execute(
                    "UPDATE items SET stage = ?, state = 'queued', data = COALESCE(?, data),"
                    " attempt = 0, ready_at = ?, channel = ?, force = ?, updated_at = ?"
                    f" WHERE pipeline = ? AND key = ? AND state IN {restartable}",
                    (stage, None if given is None else json.dumps(given), now, channel,
                     int(force), now, pipeline, key),
                ).rowcount:  # fmt: skip
                    result.restarted.append(key)
                    if given is not None:
                        result.data_replaced.append(key)
                elif row[0] == ItemState.HELD:
                    result.held.append(key)
                else:
                    result.unchanged.append(key)
        return result

    # -- the scheduler's hot path ------------------------------------------------------
    def claim(
        self,
        pipeline: str,
        stage: str,
        limit: int,
        now: float,
        describe: Any,  # Callable[[int, str, dict], NewRun]: fills a run's fields per item
        blocked_channels: Sequence[str] = (),
        only_channel: str | None = None,
    ) -> list[tuple[Claimed, NewRun]]:
        """Mark up to `limit` ready items running and write their run rows, atomically.

        The run rows are committed before any worker starts, so a crash at any later
        point leaves a `running` row for `recover_interrupted` to find. Items of a
        blocked (halted, paused) channel are left queued; `only_channel` picks a probe.
        """
        where, params = "", [pipeline, stage, now]
        if blocked_channels:
            where += f" AND channel NOT IN ({', '.join('?' * len(blocked_channels))})"
            params += list(blocked_channels)
        if only_channel is not None:
            where += " AND channel = ?"
            params.append(only_channel)
        with self._write():
            rows = self._conn.execute(
                f"SELECT id, key, data, attempt, force FROM items WHERE pipeline = ? AND stage = ?"
                f" AND state IN ({_CLAIMABLE}) AND ready_at <= ?{where}"
                " ORDER BY ready_at, id LIMIT ?",
                (*params, limit),
            ).fetchall()
            if not rows:
                return []
            claimed: list[tuple[Claimed, NewRun]] = []
            for item_id, key, data_json, attempt, force in rows:
                data = json.loads(data_json)
                item = Claimed(item_id, key, data, attempt + 1, bool(force))
                claimed.append((item, describe(item_id, key, data)))
            self._conn.executemany(
                "UPDATE items SET state = 'running', attempt = ?, channel = ?, last_run_id = ?,"
                " updated_at = ? WHERE id = ?",
                [(c.attempt, r.channel, r.run_id, now, c.item_id) for c, r in claimed],
            )
            self._conn.executemany(
                "INSERT INTO runs (id, pipeline, stage, item_id, item_key, attempt, channel,"
                " status, started_at, input_fingerprint, code_ref, config_hash, rows_in,"
                " trace_id) VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, 1, ?)",
                [
                    (r.run_id, pipeline, stage, c.item_id, c.key, c.attempt, r.channel, now,
                     r.input_fingerprint, r.code_ref, r.config_hash, r.trace_id)
                    for c, r in claimed
                ],
            )  # fmt: skip
        return claimed

    def finish(
        self, finished: Iterable[FinishedRun], progress: dict[str, tuple[float | None, str | None]]
    ) -> None:
        """Write finished runs, their items' next states and live progress in one commit."""
        finished = list(finished)
        with self._write():
            if progress:
                self._conn.executemany(
                    "UPDATE runs SET progress = COALESCE(?, progress),"
                    " message = COALESCE(?, message) WHERE id = ? AND status = 'running'",
                    [(p, m, run_id) for run_id, (p, m) in progress.items()],
                )
            if not finished:
                return
            self._conn.executemany(
                _FINISH_RUN_SQL,
                [(*(getattr(f, c) for c in _RUN_END_COLUMNS), f.run_id) for f in finished],
            )
            self._conn.executemany(
                _FINISH_ITEM_SQL,
                [
                    (f.item_stage, f.item_state, f.item_data, f.item_attempt, f.item_ready_at,
                     f.item_channel, int(f.item_force), f.error, f.label, f.group_name,
                     f.finished_at, f.item_id)
                    for f in finished
                ],
            )  # fmt: skip

    def record_processes(self, started: Sequence[tuple[str, int, int, int]]) -> None:
        """(run id, pid, pgid, start time) of worker processes just started, in one commit:
        if the daemon dies, the next one can still find them."""
        with self._write():
            self._conn.executemany(
                "UPDATE runs SET pid = ?, pgid = ?, proc_start = ? WHERE id = ?"
                " AND status = 'running'",
                [(pid, pgid, start, run_id) for run_id, pid, pgid, start in started],
            )

    def running_processes(self) -> list[tuple[int, int, int]]:
        """(pid, pgid, start time) of the worker processes of runs left `running`."""
        return self._conn.execute(
            "SELECT pid, pgid, proc_start FROM runs INDEXED BY runs_by_status"
            " WHERE status = 'running' AND pgid IS NOT NULL AND proc_start IS NOT NULL"
        ).fetchall()

    def recover_interrupted(
        self, now: float, hold_stages: set[tuple[str, str]], reason: str
    ) -> list[Recovered]:
        with self._write():
            # A probe cut short by the stop is simply due again.
            self._conn.execute(
                "UPDATE holds SET probe_run_id = NULL WHERE cleared_at IS NULL"
                " AND probe_run_id IS NOT NULL"
            )
            return self._recover_runs(now, hold_stages, reason)

    def _recover_runs(
        self, now: float, hold_stages: set[tuple[str, str]], reason: str
    ) -> list[Recovered]:
        """After an unclean stop: end orphaned runs as interrupted and put their items back.

        The attempt is not counted against the item; a stage marked `on_interrupt: hold`
        holds its items for a person instead, since its side effects must not repeat.
        """
        recovered: list[Recovered] = []
        with self._write():
            rows = self._conn.execute(
                "SELECT r.id, r.pipeline, r.stage, r.item_key, r.item_id, r.attempt, r.started_at"
                " FROM runs r WHERE r.status = 'running'"
            ).fetchall()
            for run_id, pipeline, stage, key, item_id, attempt, started_at in rows:
                held = (pipeline, stage) in hold_stages
                self._conn.execute(
                    "UPDATE runs SET status = ?, finished_at = ?, duration_s = ?, error = ?,"
                    " group_name = 'retriable', label = 'Interrupted', category = 'daemon',"
                    " type = 'interrupted' WHERE id = ?",
                    (RunStatus.INTERRUPTED, now, max(0.0, now - started_at), reason, run_id),
                )
                self._conn.execute(
                    "UPDATE items SET state = ?, attempt = ?, ready_at = ?, last_error = ?,"
                    " last_label = 'Interrupted', updated_at = ?"
                    " WHERE id = ? AND state = 'running' AND last_run_id = ?",
                    (ItemState.HELD if held else ItemState.QUEUED, attempt - 1, now, reason, now,
                     item_id, run_id),
                )  # fmt: skip
                recovered.append(Recovered(run_id, pipeline, stage, key, held))
        return recovered

    def next_ready_at(self, stages: Sequence[tuple[str, str]]) -> float | None:
        """The earliest time an item of these stages becomes claimable."""
        soonest: float | None = None
        for pipeline, stage in stages:
            for state in CLAIMABLE_STATES:  # one index seek each; an IN list made it a scan
                (ready_at,) = self._conn.execute(
                    "SELECT MIN(ready_at) FROM items INDEXED BY items_claim"
                    " WHERE pipeline = ? AND stage = ? AND state = ?",
                    (pipeline, stage, state),
                ).fetchone()
                if ready_at is not None and (soonest is None or ready_at < soonest):
                    soonest = ready_at
        return soonest

    def pending_count(
        self,
        blocked_channels: Iterable[str] = (),
        blocked_stages: Iterable[str] = (),
        blocked_pipelines: Iterable[str] = (),
    ) -> int:
        """Items with work still ahead: queued, running or retrying, and not held back.

        Deferred items and those of halted or paused channels, stages and pipelines wait
        for a time or a person, so they do not count.
        """
        where, params = "", []
        for expression, values in (
            ("channel", list(blocked_channels)),
            ("pipeline || '/' || stage", list(blocked_stages)),
            ("pipeline", list(blocked_pipelines)),
        ):
            if values:
                where += f" AND {expression} NOT IN ({', '.join('?' * len(values))})"
                params += values
        # From the trigger-kept counts: a few hundred rows, however large the store.
        return self._conn.execute(
            f"SELECT COALESCE(SUM(n), 0) FROM item_counts WHERE state IN ({_PENDING}){where}",
            params,
        ).fetchone()[0]

    def count_runs(self, pipeline: str, stage: str, status: str, since: float) -> int:
        return self._conn.execute(
            "SELECT COUNT(*) FROM runs WHERE pipeline = ? AND stage = ? AND status = ?"
            " AND finished_at >= ?",
            (pipeline, stage, status, since),
        ).fetchone()[0]

    # -- holds: halts and pauses --------------------------------------------------------
    def active_holds(self) -> list[Hold]:
        # Plain SQL: the scheduler asks on every pass, and a Peewee query costs far more.
        cursor = self._conn.execute("SELECT * FROM holds WHERE cleared_at IS NULL ORDER BY id")
        columns = [column[0] for column in cursor.description]
        return [self.Hold(**dict(zip(columns, row, strict=True))) for row in cursor]

    def add_hold(self, hold: dict[str, Any]) -> Hold | None:
        """Insert an active hold; None when the same one is already active."""
        with self._write():
            cursor = self._conn.execute(
                f"INSERT INTO holds ({', '.join(hold)}) VALUES ({', '.join('?' * len(hold))})"
                " ON CONFLICT DO NOTHING",
                [json.dumps(v) if isinstance(v, list) else v for v in hold.values()],
            )
            return self.Hold.get_by_id(cursor.lastrowid) if cursor.rowcount else None

    def clear_holds(self, target: str, kinds: Sequence[str], who: str, now: float) -> list[Hold]:
        """Clear the active holds of `kinds` on `target`; returns the ones cleared."""
        with self._write():
            cleared = list(
                self.Hold.select().where(
                    self.Hold.cleared_at.is_null()
                    & (self.Hold.target == target)
                    & self.Hold.kind.in_(list(kinds))
                )
            )
            if cleared:
                self.Hold.update(cleared_at=now, cleared_by=who).where(
                    self.Hold.id.in_([h.id for h in cleared])
                ).execute()
        return cleared

    def holds_on(self, targets: Iterable[str], since: float) -> list[Hold]:
        """Holds on these targets that were active at some point since `since`."""
        hold = self.Hold
        return list(
            hold.select()
            .where(
                hold.target.in_(list(targets))
                & (hold.cleared_at.is_null() | (hold.cleared_at >= since))
            )
            .order_by(hold.created_at)
        )

    def update_hold(self, hold_id: int, **fields: Any) -> None:
        with self._write():
            self.Hold.update(**fields).where(self.Hold.id == hold_id).execute()

    # -- what the guard asks --------------------------------------------------------------
    def earlier_success(
        self, pipeline: str, stage: str, fingerprint: str
    ) -> tuple[str, str] | None:
        """(id, data it merged into its item) of the latest run that already succeeded at
        this stage on the same input. Runs recorded before runs kept their data (schema 7)
        do not count: what they produced cannot be given back."""
        # INDEXED BY: left alone, the planner walks every run of the stage instead.
        row = self._conn.execute(
            "SELECT id, data_out FROM runs INDEXED BY runs_by_fingerprint"
            " WHERE input_fingerprint = ? AND status = 'ok' AND pipeline = ? AND stage = ?"
            " AND data_out IS NOT NULL ORDER BY finished_at DESC LIMIT 1",
            (fingerprint, pipeline, stage),
        ).fetchone()
        return (row[0], row[1]) if row else None

    def internal_failures_in_a_row(self, item_id: int, current_run: str, limit: int) -> int:
        """How many of the item's latest runs (up to `limit`, not `current_run`) in a row
        failed for an internal reason: an item the daemon cannot record stops there."""
        rows = self._conn.execute(
            "SELECT category, type FROM runs INDEXED BY runs_by_item WHERE item_id = ?"
            " AND id != ? ORDER BY started_at DESC LIMIT ?",
            (item_id, current_run, limit),
        ).fetchall()
        internal = ("daemon", "internal")  # as outcomes.INTERNAL classifies them
        return next((n for n, row in enumerate(rows) if row != internal), len(rows))

    def label_failures(
        self, channel: str, label: str, since: float, samples: int
    ) -> tuple[int, list[str]]:
        """How many runs failed with this label on this channel since `since`, and the
        latest few error texts."""
        where = (
            "FROM runs INDEXED BY runs_by_channel_label WHERE channel = ? AND label = ?"
            " AND finished_at >= ? AND status IN ('failed', 'timed_out')"
        )
        params = (channel, label, since)
        (count,) = self._conn.execute(f"SELECT COUNT(*) {where}", params).fetchone()
        texts = self._conn.execute(
            f"SELECT error {where} ORDER BY finished_at DESC LIMIT ?", (*params, samples)
        ).fetchall()
        return count, [row[0] for row in texts]

    def last_run_statuses(
        self, pipeline: str, stage: str, count: int, since: float | None = None
    ) -> list[tuple[str, str]]:
        """(status, error) of the stage's last `count` runs finished (after `since`),
        newest first."""
        return self._conn.execute(
            "SELECT status, error FROM runs WHERE pipeline = ? AND stage = ?"
            " AND finished_at IS NOT NULL AND finished_at > ? ORDER BY finished_at DESC LIMIT ?",
            (pipeline, stage, float("-inf") if since is None else since, count),
        ).fetchall()

    def halt_cleared_at(self, scope: str, target: str) -> float | None:
        """When a halt on this target was last cleared (by a person, a probe or a new day)."""
        return self._conn.execute(
            "SELECT MAX(cleared_at) FROM holds WHERE scope = ? AND target = ? AND kind = 'halt'",
            (scope, target),
        ).fetchone()[0]

    def cost_since(self, pipeline: str, stages: Sequence[str], since: float) -> float:
        """The pipeline's summed run cost since `since`: one index range per stage."""
        total = 0.0
        for stage in stages:
            (cost,) = self._conn.execute(
                "SELECT COALESCE(SUM(cost), 0) FROM runs INDEXED BY runs_by_stage_end"
                " WHERE pipeline = ? AND stage = ? AND finished_at >= ?",
                (pipeline, stage, since),
            ).fetchone()
            total += cost
        return total

    # -- calendars and bulk requeue --------------------------------------------------------
    def defer_channel(self, channel: str, until: float, now: float, label: str) -> int:
        """Ready items of a closed channel wait, deferred (not failed), until it opens."""
        with self._write():
            return self._conn.execute(
                f"UPDATE items SET state = 'deferred', ready_at = ?, last_label = ?,"
                f" last_group = 'defer', updated_at = ? WHERE channel = ?"
                f" AND state IN ({_CLAIMABLE}) AND ready_at <= ?",
                (until, label, now, channel, now),
            ).rowcount

    def requeue_by_label(
        self, label: str, now: float, pipeline: str | None = None, stage: str | None = None,
        since: float | None = None, dry_run: bool = False, force: bool = False,
    ) -> int:  # fmt: skip
        """Failed and retrying items with `label` back in the queue, attempts reset."""
        where = "last_label = ? AND state IN ('failed', 'retrying')"
        params: list[Any] = [label]
        for column, value in (("pipeline", pipeline), ("stage", stage)):
            if value is not None:
                where += f" AND {column} = ?"
                params.append(value)
        if since is not None:
            where += " AND updated_at >= ?"
            params.append(since)
        with self._write():
            if dry_run:
                return self._conn.execute(
                    f"SELECT COUNT(*) FROM items WHERE {where}", params
                ).fetchone()[0]
            return self._conn.execute(
                f"UPDATE items SET state = 'queued', attempt = 0, ready_at = ?, updated_at = ?,"
                f" requeues = requeues + 1, force = ? WHERE {where}",
                (now, now, int(force), *params),
            ).rowcount

    def change_held(
        self, pipeline: str, keys: Sequence[str] | None, now: float,
        fail_reason: str | None = None, dry_run: bool = False,
    ) -> HeldChange:  # fmt: skip
        """Held items back in the queue at the attempt they were held at, or, with
        `fail_reason`, failed with it (label FAILED_BY_A_PERSON). `keys` None: every held
        item of the pipeline."""
        with self._write():
            found = self._held(pipeline, keys)
            changed = [key for _, key in found]
            done = set(changed)
            not_held = self._states(
                pipeline, [k for k in dict.fromkeys(keys or ()) if k not in done]
            )
            if dry_run or not found:
                return HeldChange(changed, not_held)
            if fail_reason is None:
                update = "state = 'queued', ready_at = ?, updated_at = ?", (now, now)
            else:
                update = (
                    "state = 'failed', ready_at = NULL, last_error = ?, last_label = ?,"
                    " last_group = 'terminal', updated_at = ?",
                    (fail_reason, FAILED_BY_A_PERSON, now),
                )
            self._conn.executemany(
                f"UPDATE items SET {update[0]} WHERE id = ? AND state = 'held'",
                [(*update[1], item_id) for item_id, _ in found],
            )
        return HeldChange(changed, not_held)

    def _held(self, pipeline: str, keys: Sequence[str] | None) -> list[tuple[int, str]]:
        if keys is None:
            return self._conn.execute(
                "SELECT id, key FROM items WHERE state = 'held' AND pipeline = ? ORDER BY id",
                (pipeline,),
            ).fetchall()
        rows = []
        for key in dict.fromkeys(keys):
            rows += self._conn.execute(
                "SELECT id, key FROM items WHERE pipeline = ? AND key = ? AND state = 'held'",
                (pipeline, key),
            ).fetchall()
        return rows

    def _states(self, pipeline: str, keys: Sequence[str]) -> dict[str, str | None]:
        states: dict[str, str | None] = {}
        for key in keys:
            row = self._conn.execute(
                "SELECT state FROM items WHERE pipeline = ? AND key = ?", (pipeline, key)
            ).fetchone()
            states[key] = row[0] if row else None
        return states

    def held_count(self, label: str, pipeline: str | None = None, stage: str | None = None) -> int:
        """Held items whose last label is `label` (a `retry` by label does not take them)."""
        where, params = "state = 'held' AND last_label = ?", [label]
        for column, value in (("pipeline", pipeline), ("stage", stage)):
            if value is not None:
                where += f" AND {column} = ?"
                params.append(value)
        return self._conn.execute(f"SELECT COUNT(*) FROM items WHERE {where}", params).fetchone()[0]

    def stuck_items(self, min_requeues: int) -> list[tuple[str, str, str, int]]:
        """(pipeline, stage, label, count): requeued by hand that often, and failing still."""
        return self._conn.execute(
            "SELECT pipeline, stage, last_label, COUNT(*) FROM items INDEXED BY items_requeues"
            " WHERE requeues > 0 AND requeues >= ? AND state IN ('failed', 'retrying')"
            " GROUP BY pipeline, stage, last_label",
            (min_requeues,),
        ).fetchall()

    # -- daemon facts (last reload, ...) ---------------------------------------------------
    def set_meta(self, key: str, value: Any) -> None:
        with self._write():
            self._conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )

    def get_meta(self, key: str) -> Any:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    # -- keeping the books ----------------------------------------------------------------
    def prune_batch(self, older_than: float, limit: int = PRUNE_BATCH) -> int:
        """Delete up to `limit` finished runs that ended before `older_than`.

        Never a run in flight, and never an item's latest run (its story's last chapter).
        Small batches, so the daemon's loop and other writers wait only briefly.
        """
        with self._write():
            deleted = self._conn.execute(
                "DELETE FROM runs WHERE rowid IN (SELECT rowid FROM runs INDEXED BY runs_recent"
                " WHERE started_at < ? AND finished_at IS NOT NULL AND finished_at < ?"
                " AND status != 'running'"
                # a newer run of the same item exists (runs_by_item answers it), so this
                # one is not the item's latest
                " AND EXISTS (SELECT 1 FROM runs AS newer WHERE newer.item_id = runs.item_id"
                " AND newer.started_at > runs.started_at)"
                " LIMIT ?)",
                (older_than, older_than, limit),
            ).rowcount
            self._conn.execute(
                "DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < ?", (older_than,)
            )
        return deleted

    def backup(self, target: Path) -> None:
        """A consistent copy while others write: SQLite's online backup, from one snapshot."""
        target.parent.mkdir(parents=True, exist_ok=True)
        destination = sqlite3.connect(target)
        try:
            self._conn.backup(destination)
        finally:
            destination.close()

    def vacuum(self) -> None:
        self._conn.execute("VACUUM")

    def export_runs(self, since: float | None) -> Iterator[dict[str, Any]]:
        cursor = self._conn.execute(
            "SELECT * FROM runs WHERE started_at >= ? ORDER BY started_at", (since or 0.0,)
        )
        columns = [column[0] for column in cursor.description]
        for row in cursor:
            yield dict(zip(columns, row, strict=True))

    # -- reads for the CLI ------------------------------------------------------------
    def state_counts(self, since_24h: float, since_1h: float, pipeline: str | None = None) -> list:
        """(pipeline, stage, state, channel, total, changed in 24h, changed in 1h)."""
        return self._counts(
            ("pipeline", "stage", "state", "channel"), since_24h, since_1h, pipeline
        )

    def label_counts(self, since_24h: float, since_1h: float, pipeline: str | None = None) -> list:
        """(pipeline, stage, state, group, label, total, in 24h, in 1h) of labelled states."""
        rows = self._counts(
            ("pipeline", "stage", "state", "grp", "label"), since_24h, since_1h, pipeline
        )
        return [row for row in rows if row[2] in ("retrying", "failed", "ignored")]

    def _counts(
        self, keys: tuple[str, ...], since_24h: float, since_1h: float, pipeline: str | None
    ) -> list[tuple]:
        """Totals from the trigger-kept item_counts; per total, its items changed lately.

        The deltas are one index range count per row of totals (a few hundred at most),
        which beats grouping every recently changed item, however busy the store.
        """
        where, params = ("AND pipeline = ?", [pipeline]) if pipeline else ("", [])
        columns = ", ".join(keys)
        totals = self._conn.execute(
            f"SELECT {columns}, SUM(n) FROM item_counts WHERE n > 0 {where} GROUP BY {columns}",
            params,
        ).fetchall()
        if "label" in keys:
            recent_sql = (
                "SELECT COUNT(*), SUM(updated_at >= ?) FROM items INDEXED BY items_label_recent"
                " WHERE state = ? AND pipeline = ? AND stage = ? AND last_group IS ?"
                " AND last_label IS ? AND updated_at >= ?"
            )
            order = (2, 0, 1, 3, 4)  # the index's column order
        else:
            recent_sql = (
                "SELECT COUNT(*), SUM(updated_at >= ?) FROM items INDEXED BY items_state_recent"
                " WHERE pipeline = ? AND stage = ? AND state = ? AND channel IS ?"
                " AND updated_at >= ?"
            )
            order = (0, 1, 2, 3)
        rows = []
        for row in totals:
            key = [row[i] if row[i] != "" else None for i in order]  # '' in counts is NULL
            d24, d1 = self._conn.execute(recent_sql, (since_1h, *key, since_24h)).fetchone()
            rows.append((*row, d24, d1 or 0))
        return rows

    def item_totals(self) -> dict[tuple[str, str, str], int]:
        """(pipeline, stage, state) -> items, from the trigger-kept counts."""
        return {
            (p, s, state): n
            for p, s, state, n in self._conn.execute(
                "SELECT pipeline, stage, state, SUM(n) FROM item_counts GROUP BY 1, 2, 3"
            )
        }

    def deferred_reasons(
        self, pipeline: str, stage: str, since_24h: float, since_1h: float
    ) -> list[tuple[str | None, int, int, int, float | None]]:
        """(label, items, changed in 24h, in 1h, soonest wake) of the stage's deferred items.

        The trigger-kept counts do not keep a deferred item's label: the labels and counts
        come from the covering index the Δ columns use, and each label's soonest wake from
        the claim index, read in wake order up to its first item of that label.
        """
        labels = self._conn.execute(
            "SELECT last_label, COUNT(*), SUM(updated_at >= ?), SUM(updated_at >= ?)"
            " FROM items INDEXED BY items_label_recent"
            " WHERE state = 'deferred' AND pipeline = ? AND stage = ? GROUP BY last_label",
            (since_24h, since_1h, pipeline, stage),
        ).fetchall()
        return [
            (label, total, d24 or 0, d1 or 0, self._conn.execute(
                "SELECT ready_at FROM items INDEXED BY items_claim WHERE pipeline = ?"
                " AND stage = ? AND state = 'deferred' AND last_label IS ?"
                " ORDER BY ready_at LIMIT 1",
                (pipeline, stage, label),
            ).fetchone()[0])
            for label, total, d24, d1 in labels
        ]  # fmt: skip

    def running_runs(self) -> list[Run]:
        return list(
            self.Run.select().where(self.Run.status == "running").order_by(self.Run.started_at)
        )

    def recent_durations(self, pipeline: str, stage: str, count: int) -> list[float]:
        """Durations of the stage's last `count` successful runs."""
        return [
            row[0]
            for row in self._conn.execute(
                "SELECT duration_s FROM runs WHERE pipeline = ? AND stage = ? AND status = 'ok'"
                " AND finished_at IS NOT NULL ORDER BY finished_at DESC LIMIT ?",
                (pipeline, stage, count),
            )
        ]

    def stage_durations(self, pipeline: str, stage: str, since: float) -> list[tuple[str, float]]:
        """(status, duration_s) of the stage's runs that ended since `since`."""
        return self._conn.execute(
            "SELECT status, duration_s FROM runs WHERE pipeline = ? AND stage = ?"
            " AND finished_at >= ? AND status NOT IN ('running', 'interrupted')",
            (pipeline, stage, since),
        ).fetchall()

    def recent_runs(
        self, limit: int, stage: str | None = None, status: str | None = None,
        pipeline: str | None = None,
    ) -> list[Run]:  # fmt: skip
        query = self.Run.select().order_by(self.Run.started_at.desc()).limit(limit)
        if stage:
            query = query.where(self.Run.stage == stage)
        if status:
            query = query.where(self.Run.status == status)
        if pipeline:
            query = query.where(self.Run.pipeline == pipeline)
        return list(query)

    def runs_with_prefix(self, prefix: str, limit: int = 20) -> list[Run]:
        # Bounds instead of LIKE, so the primary key's index answers it.
        return list(
            self.Run.select()
            .where((self.Run.id >= prefix) & (self.Run.id < prefix + "\uffff"))
            .order_by(self.Run.started_at.desc())
            .limit(limit)
        )

    def item(self, pipeline: str, key: str) -> Item | None:
        return self.Item.get_or_none((self.Item.pipeline == pipeline) & (self.Item.key == key))

    def item_runs(self, item_id: int) -> list[Run]:
        return list(
            self.Run.select().where(self.Run.item_id == item_id).order_by(self.Run.started_at)
        )
