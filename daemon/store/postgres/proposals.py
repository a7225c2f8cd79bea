"""Templates on PostgreSQL: the SQLite part's statements, but a new row's id comes back
with RETURNING (psycopg has no lastrowid)."""

from __future__ import annotations

from pipewarden.store.postgres.base import Connected
from pipewarden.store.sqlite.proposals import Proposals as SqliteProposals


class Proposals(Connected, SqliteProposals):
    def add_template(self, template: str, count: int, seen: float) -> int:
        return self._pg.execute(
            "INSERT INTO templates (template, count, first_seen, last_seen)"
            " VALUES (%s, %s, %s, %s) RETURNING id",
            (template, count, seen, seen),
        ).fetchone()[0]
