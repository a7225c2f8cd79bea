"""The status tree's aggregates: totals from the trigger-kept counts, and their deltas."""

from __future__ import annotations

from pipewarden.store.sqlite.base import Connected
from pipewarden.store.sqlite.counts import LABELLED
from pipewarden.store.sqlite.schema import ASIDE


class Aggregates(Connected):
    """What `status`, the page and /metrics count."""

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
        return [row for row in rows if row[2] in LABELLED]

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
                f" AND last_label IS ? AND updated_at >= ? AND {ASIDE}"
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
            f" WHERE state = 'deferred' AND {ASIDE} AND pipeline = ? AND stage = ?"
            " GROUP BY last_label",
            (since_24h, since_1h, pipeline, stage),
        ).fetchall()
        return [
            (label, total, d24 or 0, d1 or 0, self._conn.execute(
                "SELECT ready_at FROM items INDEXED BY items_claim WHERE pipeline = ?"
                " AND stage = ? AND state = 'deferred' AND last_label IS ?"
                " AND state IN ('queued', 'retrying', 'deferred')"
                " ORDER BY ready_at LIMIT 1",
                (pipeline, stage, label),
            ).fetchone()[0])
            for label, total, d24, d1 in labels
        ]  # fmt: skip
