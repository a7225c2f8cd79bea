"""The status tree's item counts on SQLite: `item_counts`, kept in the item writes' own
transaction (schema 5), so `pipewarden status` reads a few rows instead of a million items.

Row triggers keep them for every write of `items`, but an update that moves an item took
two writes of a count row per item (the old key down, the new one up): 60–80 µs of a no-op
item's claim and finish. The scheduler's hot path (a claim, a finish, in batches) counts
its own changes instead, one upsert per key and batch, and says so by flipping the item's
`tally` bit in the same UPDATE: the trigger skips a row whose `tally` changed (schema 17).
Any other write (a requeue, a retry, a recovery, a person's `sqlite3`) leaves `tally` as it
is and is counted by the trigger, as before.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence

# The states whose count rows carry the items' group and label (those the tree shows).
LABELLED = ("retrying", "failed", "ignored")
CountKey = tuple[str, str, str, str, str, str]  # pipeline, stage, state, channel, grp, label

_ADD_SQL = (
    "INSERT INTO item_counts VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT DO UPDATE SET n = n + excluded.n"
)
_KEYS_SQL = (
    "SELECT id, pipeline, stage, state, channel, last_group, last_label FROM items WHERE id IN ({})"
)
_IDS_PER_QUERY = 500  # within SQLite's limit of bound parameters


def count_key(
    pipeline: str, stage: str, state: str, channel: str | None, group: str | None,
    label: str | None,
) -> CountKey:  # fmt: skip
    """An item's count row, as the schema's triggers compute it."""
    if state not in LABELLED:
        return (pipeline, stage, state, channel or "", "", "")
    return (pipeline, stage, state, channel or "", group or "", label or "")


def current_keys(conn: sqlite3.Connection, item_ids: Sequence[int]) -> dict[int, CountKey]:
    """The count rows the items are in now (an item that is gone is in none)."""
    keys: dict[int, CountKey] = {}
    for start in range(0, len(item_ids), _IDS_PER_QUERY):
        chunk = item_ids[start : start + _IDS_PER_QUERY]
        query = _KEYS_SQL.format(", ".join("?" * len(chunk)))
        for item_id, *row in conn.execute(query, chunk):
            keys[item_id] = count_key(*row)
    return keys


def add_moves(conn: sqlite3.Connection, moves: Iterable[tuple[CountKey, CountKey]]) -> None:
    """Items moved from one count row to another (old, new), added in one upsert per row."""
    change: Counter[CountKey] = Counter()
    for old, new in moves:
        if old != new:
            change[old] -= 1
            change[new] += 1
    rows = [(*key, n) for key, n in change.items() if n]
    if rows:
        conn.executemany(_ADD_SQL, rows)
