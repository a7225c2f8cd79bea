"""The status tree's counts on PostgreSQL, kept by triggers without queueing the fleet.

`item_counts` holds, per (pipeline, stage, state, channel, group, label) and ten-minute
slot of the items' `updated_at`, how many items are there now; a status reads a few
thousand rows instead of grouping every item (1.5 s at a million items). The slot lets it
say how many changed in the last 24 hours and the last hour: the whole slots after the
window's first from the counts, that first slot's own items counted from `items_recent`.

One statement-level trigger per kind of write adds what a statement changed, in one
upsert. Each connection adds to rows of its own (`shard`: its backend pid, unique among
live connections): daemons claiming at once never wait on each other's count rows, and
no two transactions can lock two count rows in opposite orders. The rows of connections
gone, and the hours past any status's window, are folded into shard 0 and hour 0 now and
then (`fold`): it skips rows locked by a transaction under way, so it never waits either.
Slots older than FOLD_AFTER_S go to slot 0: a window that starts before the last fold's
horizon (`folded_before`) is grouped from the items instead.
"""

from __future__ import annotations

from typing import Any

SLOT_S = 600
FOLD_AFTER_S = 25 * 3600  # slots older than this are folded into slot 0: a day's window
FOLD_EVERY_S = 600.0  # how often a daemon folds (at a heartbeat)
_FOLD_LOCK = 0x636F756E  # pg_try_advisory_xact_lock key: one folding daemon at a time

_EPOCH = "extract(epoch FROM now())"
FOLDED_KEY = "item_counts_folded_before"  # meta: the slots before it are in slot 0

KEY = ("pipeline", "stage", "state", "channel", "grp", "label", "slot")


def _keyed(rows: str, sign: int) -> str:
    return (
        "SELECT pipeline, stage, state, COALESCE(channel, '') AS channel,"
        " COALESCE(last_group, '') AS grp, COALESCE(last_label, '') AS label,"
        f" floor(updated_at / {SLOT_S})::int AS slot, {sign} AS d FROM {rows}"
    )


def _adding(changes: str, shard: str = "pg_backend_pid()") -> str:
    columns = ", ".join(KEY)
    return (
        f"INSERT INTO item_counts AS c (shard, {columns}, n)"
        f" SELECT {shard}, {columns}, sum(d) FROM ({changes}) AS changes"
        f" GROUP BY {columns} HAVING sum(d) <> 0"
        f" ON CONFLICT (shard, {columns}) DO UPDATE SET n = c.n + excluded.n"
    )


def _trigger(event: str, changes: str, transitions: str) -> list[str]:
    name = f"pipewarden_count_{event.lower()}"
    return [
        f"""CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            {_adding(changes)};
            RETURN NULL;
        END $$""",
        f"CREATE TRIGGER {name} AFTER {event} ON items REFERENCING {transitions}"
        f" FOR EACH STATEMENT EXECUTE FUNCTION {name}()",
    ]


STEP = [
    f"""CREATE TABLE item_counts (
        shard INTEGER NOT NULL, pipeline TEXT NOT NULL, stage TEXT NOT NULL,
        state TEXT NOT NULL, channel TEXT NOT NULL, grp TEXT NOT NULL, label TEXT NOT NULL,
        slot INTEGER NOT NULL, n BIGINT NOT NULL, PRIMARY KEY (shard, {", ".join(KEY)}))""",
    *_trigger("INSERT", _keyed("new_rows", 1), "NEW TABLE AS new_rows"),
    *_trigger(
        "UPDATE",
        f"{_keyed('old_rows', -1)} UNION ALL {_keyed('new_rows', 1)}",
        "OLD TABLE AS old_rows NEW TABLE AS new_rows",
    ),
    *_trigger("DELETE", _keyed("old_rows", -1), "OLD TABLE AS old_rows"),
    # A window's first slot's items, counted where they are (an index-only range).
    "CREATE INDEX items_recent ON items (updated_at)"
    " INCLUDE (pipeline, stage, state, channel, last_group, last_label)",
    # A stage's soonest deferred item per reason: one index seek each.
    "CREATE INDEX items_deferred ON items (pipeline, stage, last_label, ready_at)"
    " WHERE state = 'deferred'",
    # The items there already: their slots past FOLD_AFTER_S folded at once.
    _adding(
        _keyed("items", 1).replace(
            f"floor(updated_at / {SLOT_S})::int AS slot",
            f"CASE WHEN updated_at < {_EPOCH} - {FOLD_AFTER_S} THEN 0"
            f" ELSE floor(updated_at / {SLOT_S})::int END AS slot",
        ),
        shard="0",
    ),
    f"""INSERT INTO meta (key, value)
        SELECT '{FOLDED_KEY}', floor(({_EPOCH} - {FOLD_AFTER_S}) / {SLOT_S})::int::text
        WHERE EXISTS (SELECT 1 FROM items WHERE updated_at < {_EPOCH} - {FOLD_AFTER_S})""",
]

FOLD_SQL = f"""
WITH folded AS (
  DELETE FROM item_counts WHERE ctid IN (
    SELECT ctid FROM item_counts
    WHERE (shard <> 0 AND shard NOT IN (SELECT pid FROM pg_stat_activity))
       OR (slot > 0 AND slot < %(before)s)
    FOR UPDATE SKIP LOCKED)
  RETURNING {", ".join(KEY[:-1])}, CASE WHEN slot < %(before)s THEN 0 ELSE slot END AS slot,
    n AS d)
{_adding("SELECT * FROM folded", shard="0")}
"""


def fold(connection: Any, now: float) -> None:
    """Fold the counts of connections gone and of slots past FOLD_AFTER_S, unless another
    daemon folds right now (in the caller's transaction)."""
    if connection.execute("SELECT pg_try_advisory_xact_lock(%s)", (_FOLD_LOCK,)).fetchone()[0]:
        before = int((now - FOLD_AFTER_S) // SLOT_S)
        connection.execute(FOLD_SQL, {"before": before})
        connection.execute(
            "INSERT INTO meta (key, value) VALUES (%s, %s::text) ON CONFLICT (key) DO UPDATE"
            " SET value = GREATEST(meta.value::int, excluded.value::int)::text",
            (FOLDED_KEY, before),
        )


def folded_before(connection: Any) -> float:
    """The time before which the counts no longer say which hour an item changed in."""
    row = connection.execute("SELECT value FROM meta WHERE key = %s", (FOLDED_KEY,)).fetchone()
    return int(row[0]) * SLOT_S if row else float("-inf")
