"""The SQLite backend: the embedded default, one file in WAL mode, one daemon per file.

The parts (queue, holds, history, ...) each hold the statements of one concern; this
class opens the file, migrates it and joins them into one `Storage`.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import peewee as pw
from pipewarden import faults
from pipewarden.errors import StoreError
from pipewarden.store import models
from pipewarden.store.sqlite.aggregates import Aggregates
from pipewarden.store.sqlite.books import Books
from pipewarden.store.sqlite.history import History
from pipewarden.store.sqlite.holds import Holds
from pipewarden.store.sqlite.lookups import Lookups
from pipewarden.store.sqlite.outbox import Outbox
from pipewarden.store.sqlite.proposals import Proposals
from pipewarden.store.sqlite.queue import Queue
from pipewarden.store.sqlite.requeue import Requeue
from pipewarden.store.sqlite.runkeys import RunKeys
from pipewarden.store.sqlite.schema import MIGRATIONS, SCHEMA_VERSION, create
from pipewarden.store.sqlite.templates import Reclassify

STORE_FILE = "pipewarden.db"
BUSY_TIMEOUT_MS = 10_000  # CLI writers and the daemon share the file; wait, don't fail
# Checkpoint the WAL every 16 MiB rather than 4: each checkpoint costs an fsync, and a busy
# daemon writes a few dozen pages per commit.
WAL_CHECKPOINT_PAGES = 4096


class _Database(pw.SqliteDatabase):
    def rollback(self) -> None:
        # SQLite ends a transaction itself on a full disk or an I/O error: a ROLLBACK then
        # fails ("no transaction is active") and would hide the error that mattered.
        if self.connection().in_transaction:
            super().rollback()


class SqliteStore(
    RunKeys,
    Queue,
    Holds,
    History,
    Requeue,
    Books,
    Outbox,
    Aggregates,
    Reclassify,
    Lookups,
    Proposals,
):
    """The store, opened for writing (migrated to this version's schema first) or, with
    `read_only`, for reading only: nothing is written, and an older schema is refused."""

    kind = "sqlite"

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
        self.Item = models.bound(models.Item, self.db)
        self.Run = models.bound(models.Run, self.db)
        self.Hold = models.bound(models.Hold, self.db)
        self.Outbox = models.bound(models.Outbox, self.db)
        self.writes = 0
        try:
            if not read_only and not self.path.exists():
                create(self.path)
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

    def unwritable(self) -> faults.StoreFault | None:
        """Why a write now would fail or vanish (the file gone, replaced, read-only), or
        None: a few system calls, asked before every write pass."""
        return faults.check_files(self.path, self.file_id)

    def close(self) -> None:
        self.db.close()

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
                for statement in MIGRATIONS[current]:
                    self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version = {current + 1}")
