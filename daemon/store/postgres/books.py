"""Keeping the books on PostgreSQL: pruning without rowids; backups are pg_dump's."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipewarden.errors import StoreError
from pipewarden.store.postgres.base import Connected
from pipewarden.store.sqlite.books import PRUNE_BATCH
from pipewarden.store.sqlite.books import Books as SqliteBooks


class Books(Connected, SqliteBooks):
    _params: dict[str, Any]  # the connection's (its password, when from a file)

    def prune_batch(self, older_than: float, limit: int = PRUNE_BATCH) -> int:
        """Delete up to `limit` finished runs that ended before `older_than`: never a run
        in flight, never an item's latest run."""
        with self._write():
            deleted = self._pg.execute(
                "DELETE FROM runs WHERE id IN (SELECT id FROM runs WHERE started_at < %s"
                " AND finished_at IS NOT NULL AND finished_at < %s AND status <> 'running'"
                " AND EXISTS (SELECT 1 FROM runs AS newer WHERE newer.item_id = runs.item_id"
                " AND newer.started_at > runs.started_at AND newer.replay_of IS NULL) LIMIT %s)",
                (older_than, older_than, limit),
            ).rowcount
            self._pg.execute(
                "DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < %s", (older_than,)
            )
            if deleted < limit:  # the last batch: the counts of those times go too
                self._forget_slots_before(older_than)
        return deleted

    def backup(self, target: Path, on_progress: Callable[[int, int], None] | None = None) -> None:
        """A consistent copy while others write: pg_dump's custom format, from one snapshot
        (restored with pg_restore)."""
        pg_dump = shutil.which("pg_dump")
        if pg_dump is None:
            raise StoreError(
                f"store {self.path} is a PostgreSQL database: `pipewarden backup` runs pg_dump,"
                " which is not installed — install PostgreSQL's client tools (Debian:"
                " postgresql-client) or use the server's own backups"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        if "password" in self._params:
            env["PGPASSWORD"] = self._params["password"]  # never on a command line
        done = subprocess.run(
            [pg_dump, "--format=custom", "--no-owner", f"--file={target}", f"--dbname={self.url}"],
            env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            target.unlink(missing_ok=True)
            why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise StoreError(f"pg_dump of {self.path} failed: {why}")
        if on_progress is not None:  # pg_dump tells nothing on its way: done is all
            size = target.stat().st_size
            on_progress(size, size)

    def vacuum(self) -> None:
        """VACUUM ANALYZE, which PostgreSQL runs only outside a transaction."""
        connection = self._pg
        connection.commit()  # what the opening read began
        connection.autocommit = True
        try:
            connection.execute("VACUUM ANALYZE")
        finally:
            connection.autocommit = False
