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
    # The table of the run rows, for statements that name none of what a row does not keep
    # (pipeline, stage, item_key, daemon): `runs` is a view of it here (schema 21).
    RUN_ROWS = "run_rows"

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

    def _of_stage(self, at: str, named: str) -> str:
        """SQL true of the run row `at` when it is of the stage that the row `named` names
        (its `pipeline` and `stage` columns): by its names here; by number on SQLite."""
        return f"{at}pipeline = {named}pipeline AND {at}stage = {named}stage"

    # How runs are found by their start: on an index of started_at here (PostgreSQL); the
    # SQLite store reads them by number instead (runkeys.RunKeys).
    def _newest_first(self, at: str = "") -> str:
        """ORDER BY of runs, the newest started first."""
        return f"{at}started_at DESC, {at}id DESC"

    def _oldest_first(self, at: str = "") -> str:
        return f"{at}started_at, {at}id"

    def _in_peewee(self, sql: str, params: list[Any]) -> pw.SQL:
        """SQL written with ? marks, as the raw reads are, inside a Peewee query."""
        return pw.SQL(sql.replace("?", self.db.param), params)

    def _started_since(self, since: float, at: str = "") -> tuple[str, list[Any]]:
        """SQL (and its parameters) true of the runs started at or after `since`."""
        return f"{at}started_at >= ?", [since]

    def _started_before(self, before: float, at: str = "") -> tuple[str, list[Any]]:
        """SQL (and its parameters) true of the runs started before `before`."""
        return f"{at}started_at < ?", [before]

    def _listed_before(self, started_at: float, run_id: str, at: str = "") -> tuple[str, list]:
        """SQL (and its parameters) true of the runs after the run (`started_at`, `run_id`)
        in the newest-first order: a run list's next page."""
        return (
            f"({at}started_at < ? OR ({at}started_at = ? AND {at}id < ?))",
            [started_at, started_at, run_id],
        )
