"""What every part of the PostgreSQL store shares: its connection, with the SQLite parts'
statements spoken in PostgreSQL, and its write transaction.

The statements that are the same SQL on both backends are written once, in the SQLite
parts, with `?` placeholders; `_Translated` runs them on the psycopg connection that Peewee
holds (one connection, one transaction for models and plain SQL alike), turning `?` into
`%s` and dropping SQLite's planner hints. What differs is said again in this package.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import peewee as pw
from pipewarden.store import models

_HINTS = re.compile(r"\s+(INDEXED BY \w+|NOT INDEXED)\b")
_IS_PARAM = re.compile(r"\bIS \?")


@functools.lru_cache(maxsize=512)
def postgres_sql(sql: str) -> str:
    """A statement written for SQLite, for psycopg: placeholders, no planner hints."""
    sql = _IS_PARAM.sub("IS NOT DISTINCT FROM ?", _HINTS.sub("", sql))
    return sql.replace("%", "%%").replace("?", "%s")


class _Translated:
    """The psycopg connection, taking the SQLite parts' statements (see postgres_sql)."""

    def __init__(self, connection: Any):
        self.connection = connection

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.connection.execute(postgres_sql(sql), params or None)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any:
        cursor = self.connection.cursor()
        cursor.executemany(postgres_sql(sql), list(rows))
        return cursor


class Connected:
    """The connection, the bound models and the write transaction the parts use."""

    db: pw.PostgresqlDatabase
    Item: type[models.Item]
    Run: type[models.Run]
    Hold: type[models.Hold]
    Outbox: type[models.Outbox]
    writes: int  # write transactions begun: a test counts them (idle means idle)
    daemon: str | None = None  # host:pid of the daemon this store runs for (its lease)
    RUN_ROWS = "runs"  # the runs table: every column is in its rows here
    lease_s: float = 30.0  # a daemon silent this long is dead: its runs are recovered
    global_caps: dict[str, int]  # "pipeline/stage" or channel -> runs at once, fleet-wide
    holds_seen: Any  # holds.HoldsSeen: the active holds as last read

    @property
    def _conn(self) -> _Translated:
        return _Translated(self.db.connection())

    @property
    def _pg(self) -> Any:
        """The psycopg connection itself, for the statements written for PostgreSQL."""
        return self.db.connection()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction; the scheduler wraps a whole loop pass in it (one commit)."""
        self.writes += 1
        try:
            with self.db.atomic():
                yield
        finally:
            if not self.db.in_transaction():
                self.holds_seen.transaction_ended()

    def _write(self) -> Any:
        return contextlib.nullcontext() if self.db.in_transaction() else self.transaction()

    def _notify(self, what: str) -> None:
        """Wake every daemon listening (delivered at commit; one per payload per commit)."""
        self._pg.execute("SELECT pg_notify('pipewarden', %s)", (f"{what} {self.daemon or ''}",))
