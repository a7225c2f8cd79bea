"""The state store: items, runs, holds and the outbox, behind one narrow interface.

`interface.Storage` is every operation the rest of pipewarden uses; `sqlite` is the
embedded backend, one file in WAL mode. `records` are what the hot path exchanges,
`models` the rows people read back.
"""

from __future__ import annotations

from pathlib import Path

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

Store = SqliteStore  # the embedded default, opened by path: `Store(state_dir)`


def open_store(state_dir: Path, read_only: bool = False) -> Storage:
    """The store the daemon and the commands use: for now the SQLite file in `state_dir`."""
    return SqliteStore(state_dir, read_only=read_only)


__all__ = [
    "FAILED_BY_A_PERSON", "SCHEMA_VERSION", "STORE_FILE", "Claimed", "Enqueued", "FinishedRun",
    "HeldChange", "Hold", "Item", "NewRun", "Outbox", "Recovered", "Run", "SqliteStore",
    "Storage", "Store", "open_store",
]  # fmt: skip
