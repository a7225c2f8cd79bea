"""Many rows in a few statements: a pass's claims and finishes, written as VALUES lists.

`executemany` runs one `sqlite3_step` per row, and Python's sqlite3 lets go of the GIL
around each: the writer thread must win it back from the event loop every row, which on a
busy daemon cost more than SQLite's own work (`bench/README.md`, session 18). A chunk of
rows is one step. Chunks come in a few fixed sizes, so that each statement is prepared
once and then found in the connection's statement cache.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

# 32 rows of up to 31 values stay below 999, the oldest SQLite's limit of them.
CHUNK_SIZES = (32, 8, 1)


def execute_rows(
    conn: sqlite3.Connection, sql: str, rows: Sequence[Sequence[Any]], key: int = 0
) -> None:
    """Run `sql` over `rows` in chunks, its `{rows}` the chunk as a VALUES list (a row is
    `(?, ...)`), e.g. `WITH v(id, state) AS (VALUES {rows}) UPDATE t SET ... FROM v`.

    An UPDATE ... FROM whose rows name one target twice applies only one of them, so rows
    of the same `key` (the index of the target's value) go in later chunks, in order."""
    for rows_of_distinct_keys in _rounds(rows, key):
        start = 0
        while start < len(rows_of_distinct_keys):
            left = len(rows_of_distinct_keys) - start
            size = next(n for n in CHUNK_SIZES if n <= left)
            chunk = rows_of_distinct_keys[start : start + size]
            conn.execute(_chunk_sql(sql, size, len(chunk[0])), [v for r in chunk for v in r])
            start += size


def _rounds(rows: Sequence[Sequence[Any]], key: int) -> list[Sequence[Sequence[Any]]]:
    """The rows in rounds, no key twice in one; a repeated key's rows in their order."""
    seen: dict[Any, int] = {}
    rounds: list[list[Sequence[Any]]] = [[]]
    for row in rows:
        at = seen[row[key]] = seen.get(row[key], -1) + 1
        if at == len(rounds):
            rounds.append([])
        rounds[at].append(row)
    return rounds if len(rounds) > 1 else [rows]


@lru_cache(maxsize=64)
def _chunk_sql(sql: str, size: int, width: int) -> str:
    one = "(" + ", ".join("?" * width) + ")"
    return sql.format(rows=", ".join([one] * size))
