"""Keeping the books: daemon facts, pruning, backups, exports."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipewarden.store.sqlite.lookups import PRUNABLE
from pipewarden.store.sqlite.rollup import Rollup

# The SQLite store's own columns of a run, left out of its export: what they hold is in its
# id, trace_id, input_fingerprint, config_hash, stage and failure columns (`room`: nothing).
SQLITE_ONLY_COLUMNS = ("trace_kept", "run_no", "input_fp", "config_fp", "room", "stage_no",
                       "failure", "id_kept", "duration_us", "daemon_no", "config_no",
                       "pgid_off", "data_kept")  # fmt: skip
PRUNE_BATCH = 2000  # runs deleted per transaction when pruning
BACKUP_STEP_PAGES = 1024  # pages a backup copies between two reports of its progress


class Books(Rollup):
    """The meta table and the store file as a whole."""

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

    def prune_batch(self, older_than: float, limit: int = PRUNE_BATCH) -> int:
        """Delete up to `limit` finished runs that ended before `older_than`.

        Never a run in flight, and never an item's latest run (its story's last chapter).
        Small batches, so the daemon's loop and other writers wait only briefly.
        """
        started, params = self._started_before(older_than)
        with self._write():
            # PRUNABLE's newer run of the same item (runs_by_item answers it) says this one
            # is not the item's latest.
            deleted = self._conn.execute(
                f"DELETE FROM run_rows WHERE run_no IN (SELECT run_no FROM run_rows AS runs"
                f" WHERE {started} AND {PRUNABLE.format(rows='run_rows')} LIMIT ?)",
                (*params, older_than, limit),
            ).rowcount
            self._conn.execute(
                "DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < ?", (older_than,)
            )
            if deleted < limit:  # the last batch: the counts of those times go too
                self._forget_slots_before(older_than)
        return deleted

    def backup(self, target: Path, on_progress: Callable[[int, int], None] | None = None) -> None:
        """A consistent copy while others write: SQLite's online backup, from one snapshot,
        in steps; `on_progress(bytes copied, bytes in all)` after each."""
        target.parent.mkdir(parents=True, exist_ok=True)
        (page_size,) = self._conn.execute("PRAGMA page_size").fetchone()

        def step(status: int, remaining: int, total: int) -> None:
            if on_progress is not None:
                on_progress((total - remaining) * page_size, total * page_size)

        destination = sqlite3.connect(target)
        try:
            # A read transaction held across the steps keeps them on one snapshot: without
            # it, each commit of another writer would start the copy over.
            self._conn.execute("BEGIN")
            try:
                self._conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
                self._conn.backup(destination, pages=BACKUP_STEP_PAGES, progress=step)
            finally:
                self._conn.execute("COMMIT")
        finally:
            destination.close()

    def vacuum(self) -> None:
        self._conn.execute("VACUUM")

    def export_runs(self, since: float | None) -> Iterator[dict[str, Any]]:
        started, params = self._started_since(since or 0.0)
        cursor = self._conn.execute(
            f"SELECT * FROM runs WHERE {started} ORDER BY {self._oldest_first()}", params
        )
        columns = [column[0] for column in cursor.description]
        for row in cursor:
            run = dict(zip(columns, row, strict=True))
            for kept in SQLITE_ONLY_COLUMNS:
                run.pop(kept, None)
            yield run
