"""What every part of the SQLite store shares: its connection and its write transaction."""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Any

import peewee as pw
from pipewarden.store import models


class Connected:
    """The connection, the bound models and the write transaction the parts use."""

    db: pw.SqliteDatabase
    Item: type[models.Item]
    Run: type[models.Run]
    Hold: type[models.Hold]
    Outbox: type[models.Outbox]
    writes: int  # write transactions begun: a test counts them (idle means idle)
    daemon: str | None = None  # host:pid of the daemon this store runs for (runs name it)

    @property
    def _conn(self) -> sqlite3.Connection:
        return self.db.connection()

    def transaction(self) -> Any:
        """One write transaction; the scheduler wraps a whole loop pass in it (one commit)."""
        self.writes += 1
        return self.db.atomic("IMMEDIATE")

    def _write(self) -> Any:
        return contextlib.nullcontext() if self.db.in_transaction() else self.transaction()

    def _one_stage(self, pipeline: str | None, stage: str | None) -> tuple[str, list[Any]]:
        """SQL (and its parameters) a backend adds to a query of one stage's runs, so that
        its own index of them answers it (runkeys.RunKeys on SQLite); here none."""
        return "", []
