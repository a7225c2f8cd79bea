"""The PostgreSQL backend: one database shared by a fleet of daemons on several hosts.

`store: postgresql://user@host:port/dbname` in the config selects it. The password is never
in the URL (it would reach logs and status): it comes from `store_password_file`, or from
libpq's own PGPASSWORD / PGPASSFILE (~/.pgpass). Peewee's PostgresqlDatabase holds one
psycopg 3 connection per thread; the hot path runs plain SQL on that same connection.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import peewee as pw
from pipewarden import faults
from pipewarden.errors import StoreError
from pipewarden.store import models
from pipewarden.store.orm import hand_peewee_psycopg
from pipewarden.store.postgres.aggregates import Aggregates
from pipewarden.store.postgres.books import Books
from pipewarden.store.postgres.enqueue import Enqueue
from pipewarden.store.postgres.history import History
from pipewarden.store.postgres.holds import Holds, HoldsSeen
from pipewarden.store.postgres.leases import Leases
from pipewarden.store.postgres.outbox import Outbox
from pipewarden.store.postgres.proposals import Proposals
from pipewarden.store.postgres.queue import Queue
from pipewarden.store.postgres.schema import SCHEMA_VERSION, STEPS
from pipewarden.store.sqlite.lookups import Lookups
from pipewarden.store.sqlite.requeue import Requeue
from pipewarden.store.sqlite.templates import Reclassify

hand_peewee_psycopg()  # Peewee was loaded without it (see store/orm.py)

_MIGRATION_LOCK = 0x70697065  # pg_advisory_xact_lock key: one migrating daemon at a time
CONNECT_TIMEOUT_S = 5


def safe_url(url: str) -> str:
    """The URL as logs and status may show it: never a password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


class _Database(pw.PostgresqlDatabase):
    def connection(self) -> Any:
        # A connection the server dropped (a restart, a failover) is opened again at the
        # next statement outside a transaction; while the server is down that open fails,
        # and the daemon waits it out as a store fault.
        if not self.is_closed() and not self.in_transaction() and self._state.conn.broken:
            self.close()
        return super().connection()

    def atomic(self, *lock_type: Any, **kwargs: Any) -> Any:
        # The SQLite parts ask for "IMMEDIATE" (SQLite's write lock); row locks do that work
        # here, so it names nothing.
        return super().atomic(**kwargs)


class PostgresStore(
    Leases,
    Enqueue,
    Queue,
    Holds,
    History,
    Requeue,
    Books,
    Outbox,
    Aggregates,
    Reclassify,
    Lookups,
    Proposals,
):
    """The store in a PostgreSQL database, migrated on open (or, `read_only`, checked)."""

    kind = "postgresql"

    def __init__(self, url: str, read_only: bool = False, password_file: Path | None = None):
        if urlsplit(url).password is not None:
            raise StoreError(
                f"store {safe_url(url)}: the URL holds a password — put it in a file named by"
                " store_password_file (or PGPASSWORD / ~/.pgpass) and leave it out of the URL"
            )
        self.url = url
        self.path = url  # what messages name: the URL, which holds no password
        params: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_S}
        if password_file is not None:
            params["password"] = _read_password(password_file, url)
        if read_only:
            params["options"] = "-c default_transaction_read_only=on"
        self._params = params
        self.db = _Database(url, autoconnect=True, **params)
        self.Item = models.bound(models.Item, self.db)
        self.Run = models.bound(models.Run, self.db)
        self.Hold = models.bound(models.Hold, self.db)
        self.Outbox = models.bound(models.Outbox, self.db)
        self.writes = 0
        self._claim_reads = threading.local()
        self.holds_seen = HoldsSeen()
        self.global_caps: dict[str, int] = {}  # set by the daemon (lease.join)
        try:
            self.found_schema = self.schema_version()
            if read_only:
                self._check_schema(self.found_schema)
            else:
                self.migrate()
        except pw.OperationalError as exc:
            self.db.close()
            raise faults.fault_of(exc, self.path) or StoreError(f"store {url}: {exc}") from None
        except StoreError:
            self.db.close()
            raise

    def _check_schema(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.url} has schema {version}, newer than this pipewarden "
                f"({SCHEMA_VERSION}) — upgrade pipewarden"
            )
        if version < SCHEMA_VERSION:
            raise StoreError(
                f"{self.url} has schema {version}; this pipewarden reads schema"
                f" {SCHEMA_VERSION} — start the daemon or run `pipewarden migrate`"
            )

    def unwritable(self) -> faults.StoreFault | None:
        """Why a write now would fail (the server unreachable), or None. A connection the
        server dropped (a restart) is opened again here, before the next pass."""
        if self.db.in_transaction():
            return None
        connection = None if self.db.is_closed() else self.db.connection()
        if connection is not None and not connection.broken and not connection.closed:
            return None
        self.db.close()
        try:
            self.db.connect()
        except pw.OperationalError as exc:
            return faults.fault_of(exc, self.path)
        return None

    def listen(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call `wake` (on the running loop, the daemon's) whenever another daemon changed
        something this one's scheduler acts on; returns what stops listening."""
        from pipewarden.store.postgres.listen import Listener

        return Listener(self.url, self._params, self.daemon, wake, self.holds_seen).start().stop

    def close(self) -> None:
        if not self.db.is_closed():
            self.db.close()

    def schema_version(self) -> int:
        if self._pg.execute("SELECT to_regclass('pipewarden_schema')").fetchone()[0] is None:
            return 0
        return self._pg.execute("SELECT max(version) FROM pipewarden_schema").fetchone()[0] or 0

    def migrate(self) -> None:
        """Upgrade the schema step by step, in one transaction under an advisory lock:
        whichever daemon gets the lock migrates; the others find it done."""
        with self.db.atomic():
            self._pg.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            self._pg.execute("CREATE TABLE IF NOT EXISTS pipewarden_schema (version INTEGER)")
            current = self.schema_version()
            if current > SCHEMA_VERSION:
                self._check_schema(current)
            for version in sorted(v for v in STEPS if v > current):
                for statement in STEPS[version]:
                    self._pg.execute(statement)
                self._pg.execute("INSERT INTO pipewarden_schema VALUES (%s)", (version,))


def _read_password(path: Path, url: str) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise StoreError(
            f"store {url}: cannot read store_password_file {path}: {exc.strerror}"
        ) from None
