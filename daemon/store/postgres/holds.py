"""Halts and pauses on PostgreSQL: the SQLite part's, with the fleet told of each change.

The unique index on active holds makes a halt raised by two daemons at once one row: the
second insert does nothing, so only the first notifies.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pipewarden.store.models import Hold
from pipewarden.store.postgres.base import Connected
from pipewarden.store.sqlite.holds import Holds as SqliteHolds


class Holds(Connected, SqliteHolds):
    def add_hold(self, hold: dict[str, Any]) -> Hold | None:
        """Insert an active hold; None when the same one is already active (on any daemon)."""
        with self._write():
            row = self._pg.execute(
                f"INSERT INTO holds ({', '.join(hold)}) VALUES ({', '.join(['%s'] * len(hold))})"
                " ON CONFLICT DO NOTHING RETURNING id",
                [json.dumps(v) if isinstance(v, list) else v for v in hold.values()],
            ).fetchone()
            if row is None:
                return None
            self._notify("holds")
            return self.Hold.get_by_id(row[0])

    def clear_holds(self, target: str, kinds: Sequence[str], who: str, now: float) -> list[Hold]:
        with self._write():
            cleared = SqliteHolds.clear_holds(self, target, kinds, who, now)
            if cleared:
                self._notify("holds")
        return cleared

    def update_hold(self, hold_id: int, **fields: Any) -> None:
        with self._write():
            SqliteHolds.update_hold(self, hold_id, **fields)
            self._notify("holds")
