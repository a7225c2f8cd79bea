"""The state store: items, runs, holds and the outbox, behind one narrow interface.

`interface.Storage` is every operation the rest of pipewarden uses; `sqlite` is the
embedded backend, one file in WAL mode; `postgres` the database a fleet of daemons
shares. `records` are what the hot path exchanges, `models` the rows people read back.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipewarden.errors import StoreError
from pipewarden.store import orm  # noqa: F401  # first: Peewee loads without psycopg
from pipewarden.store.interface import Storage
from pipewarden.store.models import Hold, Item, Outbox, Run
from pipewarden.store.records import (
    FAILED_BY_A_PERSON,
    Claimed,
    Enqueued,
    FinishedRun,
    HeldChange,
    NewRun,
    Recovered,
)
from pipewarden.store.sqlite import STORE_FILE, SqliteStore
from pipewarden.store.sqlite.schema import SCHEMA_VERSION

if TYPE_CHECKING:
    from pipewarden.config import Config

Store = SqliteStore  # the embedded default, opened by path: `Store(state_dir)`


def open_store(
    state_dir: Path, read_only: bool = False, url: str | None = None,
    password_file: Path | None = None,
) -> Storage:  # fmt: skip
    """The store the daemon and the commands use: the SQLite file in `state_dir`, or, given
    a `postgresql://` URL (the config's `store:`), that database."""
    if url is None:
        return SqliteStore(state_dir, read_only=read_only)
    try:
        from pipewarden.store.postgres import PostgresStore  # psycopg: only when asked for
    except ImportError:
        raise StoreError(
            "store: postgresql://… needs psycopg — pip install 'pipewarden[postgres]'"
        ) from None
    return PostgresStore(url, read_only=read_only, password_file=password_file)


def open_configured(config: Config, read_only: bool = False) -> Storage:
    """The config's store: `store:` if it names a database, else the state dir's file."""
    return open_store(config.state_dir, read_only, config.store_url, config.store_password_file)


__all__ = [
    "FAILED_BY_A_PERSON", "SCHEMA_VERSION", "STORE_FILE", "Claimed", "Enqueued", "FinishedRun",
    "HeldChange", "Hold", "Item", "NewRun", "Outbox", "Recovered", "Run", "SqliteStore",
    "Storage", "Store", "open_configured", "open_store",
]  # fmt: skip
