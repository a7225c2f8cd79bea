"""The status tree's aggregates on PostgreSQL: grouped from the items' covering indexes
(no trigger-kept counts: see schema.py), in the shape the SQLite part returns."""

from __future__ import annotations

from pipewarden.store.postgres.base import Connected

_RECENT = "count(*) FILTER (WHERE updated_at >= %s), count(*) FILTER (WHERE updated_at >= %s)"
_LABELLED = "('retrying', 'failed', 'ignored')"


class Aggregates(Connected):
    def state_counts(self, since_24h: float, since_1h: float, pipeline: str | None = None) -> list:
        """(pipeline, stage, state, channel, total, changed in 24h, changed in 1h)."""
        where, params = ("WHERE pipeline = %s", [pipeline]) if pipeline else ("", [])
        return self._pg.execute(
            f"SELECT pipeline, stage, state, COALESCE(channel, ''), count(*), {_RECENT}"
            f" FROM items {where} GROUP BY 1, 2, 3, 4",
            (since_24h, since_1h, *params),
        ).fetchall()

    def label_counts(self, since_24h: float, since_1h: float, pipeline: str | None = None) -> list:
        """(pipeline, stage, state, group, label, total, in 24h, in 1h) of labelled states."""
        where, params = ("AND pipeline = %s", [pipeline]) if pipeline else ("", [])
        return self._pg.execute(
            "SELECT pipeline, stage, state, COALESCE(last_group, ''), COALESCE(last_label, ''),"
            f" count(*), {_RECENT} FROM items WHERE state IN {_LABELLED} {where}"
            " GROUP BY 1, 2, 3, 4, 5",
            (since_24h, since_1h, *params),
        ).fetchall()

    def item_totals(self) -> dict[tuple[str, str, str], int]:
        """(pipeline, stage, state) -> items."""
        return {
            (p, s, state): n
            for p, s, state, n in self._pg.execute(
                "SELECT pipeline, stage, state, count(*) FROM items GROUP BY 1, 2, 3"
            )
        }

    def deferred_reasons(
        self, pipeline: str, stage: str, since_24h: float, since_1h: float
    ) -> list[tuple[str | None, int, int, int, float | None]]:
        """(label, items, changed in 24h, in 1h, soonest wake) of the stage's deferred items."""
        return self._pg.execute(
            f"SELECT last_label, count(*), {_RECENT}, min(ready_at) FROM items"
            " WHERE state = 'deferred' AND pipeline = %s AND stage = %s GROUP BY last_label",
            (since_24h, since_1h, pipeline, stage),
        ).fetchall()
