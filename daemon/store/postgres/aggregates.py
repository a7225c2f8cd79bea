"""The status tree's aggregates on PostgreSQL, in the shape the SQLite part returns: from
the trigger-kept counts per ten-minute slot (counts.py), the changes of a window's first
slot counted from the items themselves; grouped from the items where a window starts
before what the counts still tell apart (slots folded away)."""

from __future__ import annotations

import math

from pipewarden.store.postgres import counts
from pipewarden.store.postgres.base import Connected

_RECENT = "count(*) FILTER (WHERE updated_at >= %s), count(*) FILTER (WHERE updated_at >= %s)"
_LABELLED = "('retrying', 'failed', 'ignored')"
_ITEM_KEY = {
    "channel": "COALESCE(channel, '')",
    "grp": "COALESCE(last_group, '')",
    "label": "COALESCE(last_label, '')",
}  # fmt: skip  (item_counts' keys, in items)


class Aggregates(Connected):
    def state_counts(self, since_24h: float, since_1h: float, pipeline: str | None = None) -> list:
        """(pipeline, stage, state, channel, total, changed in 24h, changed in 1h)."""
        keys = ("pipeline", "stage", "state", "channel")
        if self._counted_since(min(since_24h, since_1h)):
            return self._counted(keys, since_24h, since_1h, *_of_pipeline(pipeline))
        where, params = ("WHERE pipeline = %s", [pipeline]) if pipeline else ("", [])
        return self._pg.execute(
            f"SELECT pipeline, stage, state, COALESCE(channel, ''), count(*), {_RECENT}"
            f" FROM items {where} GROUP BY 1, 2, 3, 4",
            (since_24h, since_1h, *params),
        ).fetchall()

    def label_counts(self, since_24h: float, since_1h: float, pipeline: str | None = None) -> list:
        """(pipeline, stage, state, group, label, total, in 24h, in 1h) of labelled states."""
        keys = ("pipeline", "stage", "state", "grp", "label")
        if self._counted_since(min(since_24h, since_1h)):
            where, values = _of_pipeline(pipeline)
            where = f"state IN {_LABELLED}" + (f" AND {where}" if where else "")
            return self._counted(keys, since_24h, since_1h, where, values)
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
                "SELECT pipeline, stage, state, sum(n)::bigint FROM item_counts"
                " GROUP BY 1, 2, 3 HAVING sum(n) <> 0"
            )
        }

    def deferred_reasons(
        self, pipeline: str, stage: str, since_24h: float, since_1h: float
    ) -> list[tuple[str | None, int, int, int, float | None]]:
        """(label, items, changed in 24h, in 1h, soonest wake) of the stage's deferred items."""
        if not self._counted_since(min(since_24h, since_1h)):
            return self._pg.execute(
                f"SELECT last_label, count(*), {_RECENT}, min(ready_at) FROM items"
                " WHERE state = 'deferred' AND pipeline = %s AND stage = %s GROUP BY last_label",
                (since_24h, since_1h, pipeline, stage),
            ).fetchall()
        where = "state = 'deferred' AND pipeline = %(pipeline)s AND stage = %(stage)s"
        rows = self._counted(("label",), since_24h, since_1h, where,
                             {"pipeline": pipeline, "stage": stage})  # fmt: skip
        return [
            (label or None, n, d24, d1, self._soonest_deferred(pipeline, stage, label or None))
            for label, n, d24, d1 in rows
        ]

    def _soonest_deferred(self, pipeline: str, stage: str, label: str | None) -> float | None:
        same = "IS NULL" if label is None else "= %s"  # IS NOT DISTINCT FROM seeks nothing
        return self._pg.execute(
            "SELECT min(ready_at) FROM items WHERE pipeline = %s AND stage = %s"
            f" AND state = 'deferred' AND last_label {same}",
            (pipeline, stage, *([] if label is None else [label])),
        ).fetchone()[0]

    def _counted_since(self, since: float) -> bool:
        """Whether the counts still tell the slot of `since`'s from the ones before."""
        return since >= counts.folded_before(self._pg)

    def _counted(
        self, keys: tuple[str, ...], since_24h: float, since_1h: float, where: str, values: dict
    ) -> list:
        """(keys..., total, changed since since_24h, changed since since_1h) of the items
        `where` says: the whole slots after each window's first from the counts, that first
        slot's items counted where they are (two index-only ranges)."""
        h24, h1 = math.floor(since_24h / counts.SLOT_S), math.floor(since_1h / counts.SLOT_S)
        params = {"h24": h24, "h1": h1, "s24": since_24h, "s1": since_1h, **values,
                  "e24": (h24 + 1) * counts.SLOT_S, "e1": (h1 + 1) * counts.SLOT_S}  # fmt: skip
        filtered = f" AND {where}" if where else ""
        names = ", ".join(keys)
        positions = ", ".join(str(n) for n in range(1, len(keys) + 1))
        item_keys = ", ".join(f"{_ITEM_KEY.get(k, k)} AS {k}" for k in keys)
        first_slot = (
            f"SELECT {item_keys}, count(*) AS {{name}} FROM items WHERE updated_at >= %(s{{w}})s"
            f" AND updated_at < %(e{{w}})s{filtered} GROUP BY {positions}"
        )
        return self._pg.execute(
            f"WITH t AS (SELECT {names}, sum(n) AS n, sum(n) FILTER (WHERE slot > %(h24)s) AS d24,"
            f" sum(n) FILTER (WHERE slot > %(h1)s) AS d1 FROM item_counts WHERE true{filtered}"
            f" GROUP BY {positions} HAVING sum(n) <> 0),"
            f" b24 AS ({first_slot.format(name='b24', w='24')}),"
            f" b1 AS ({first_slot.format(name='b1', w='1')})"
            f" SELECT {', '.join(f't.{k}' for k in keys)}, t.n::bigint,"
            " (COALESCE(t.d24, 0) + COALESCE(b24.b24, 0))::bigint,"
            " (COALESCE(t.d1, 0) + COALESCE(b1.b1, 0))::bigint"
            f" FROM t LEFT JOIN b24 USING ({names}) LEFT JOIN b1 USING ({names})"
            f" ORDER BY {positions}",
            params,
        ).fetchall()


def _of_pipeline(pipeline: str | None) -> tuple[str, dict]:
    return ("pipeline = %(pipeline)s", {"pipeline": pipeline}) if pipeline else ("", {})
