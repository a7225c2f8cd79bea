"""Peewee, loaded without the PostgreSQL driver it would otherwise import with itself.

Peewee imports psycopg at its own import whenever it is installed (the PostgreSQL backend
needs it): 40-150 ms that every command on an SQLite store paid, `status` included. The
driver is kept out while Peewee loads, and handed to it when the PostgreSQL backend is
imported (`hand_peewee_psycopg`).
"""

from __future__ import annotations

import sys


def load_peewee_without_psycopg() -> None:
    if "peewee" in sys.modules:
        return
    hidden = "psycopg" not in sys.modules
    if hidden:
        sys.modules["psycopg"] = None  # type: ignore[assignment]  # an import of it fails
    try:
        import peewee  # noqa: F401
    finally:
        if hidden and sys.modules.get("psycopg", ...) is None:
            del sys.modules["psycopg"]


def hand_peewee_psycopg() -> None:
    """What Peewee's import would have found, for its PostgresqlDatabase."""
    import peewee
    import psycopg
    from psycopg.pq import TransactionStatus
    from psycopg.types.json import Json, Jsonb

    if peewee.psycopg is None:
        peewee.psycopg, peewee.TransactionStatus = psycopg, TransactionStatus
        peewee.Json_pg3, peewee.Jsonb_pg3 = Json, Jsonb
        # set in the adapter's class body, which ran without the driver
        adapter = peewee.Psycopg3Adapter
        adapter.txn_idle = TransactionStatus.IDLE
        adapter.txn_inerror = TransactionStatus.INERROR
        adapter.txn_unknown = TransactionStatus.UNKNOWN


load_peewee_without_psycopg()  # imported first by the store package
