"""Runs and items read back on PostgreSQL: as on SQLite, but for what SQLite reads from
its trigger-kept counts, which PostgreSQL does not keep (see schema.py)."""

from __future__ import annotations

from typing import Any

from pipewarden.store.sqlite.history import History as SqliteHistory


class History(SqliteHistory):
    _pg: Any  # the psycopg connection (postgres/base.py), in the store this joins
    _write: Any

    def item_channels(self) -> list[str]:
        """Every channel an item has now (items_by_channel holds every item here)."""
        return [row[0] for row in self._pg.execute(
            "SELECT DISTINCT channel FROM items WHERE channel IS NOT NULL ORDER BY channel"
        )]  # fmt: skip

    def add_replay(self, run: dict[str, Any]) -> str:
        """As on SQLite, its id from the fleet's run numbers; the trace id stored as given."""
        if not run.get("replay_of"):
            raise ValueError("a replay names the run it replayed (replay_of)")
        with self._write():
            (number,) = self._pg.execute("SELECT nextval('run_numbers')").fetchone()
            row = {**run, "id": str(number)}
            self._pg.execute(
                f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join(['%s'] * len(row))})",
                list(row.values()),
            )
        return row["id"]
