"""Keeping the books on PostgreSQL: pruning without rowids; backups are pg_dump's."""

from __future__ import annotations

from pathlib import Path

from pipewarden.errors import StoreError
from pipewarden.store.postgres.base import Connected
from pipewarden.store.sqlite.books import PRUNE_BATCH
from pipewarden.store.sqlite.books import Books as SqliteBooks


class Books(Connected, SqliteBooks):
    def prune_batch(self, older_than: float, limit: int = PRUNE_BATCH) -> int:
        """Delete up to `limit` finished runs that ended before `older_than`: never a run
        in flight, never an item's latest run."""
        with self._write():
            deleted = self._pg.execute(
                "DELETE FROM runs WHERE id IN (SELECT id FROM runs WHERE started_at < %s"
                " AND finished_at IS NOT NULL AND finished_at < %s AND status <> 'running'"
                " AND EXISTS (SELECT 1 FROM runs AS newer WHERE newer.item_id = runs.item_id"
                " AND newer.started_at > runs.started_at) LIMIT %s)",
                (older_than, older_than, limit),
            ).rowcount
            self._pg.execute(
                "DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < %s", (older_than,)
            )
            if deleted < limit:  # the last batch: the counts of those times go too
                self._forget_slots_before(older_than)
        return deleted

    def backup(self, target: Path) -> None:
        raise StoreError(
            f"store {self.path} is a PostgreSQL database: back it up with pg_dump"
            " (or the server's own backups)"
        )

    def vacuum(self) -> None:
        self._pg.execute("VACUUM ANALYZE")
