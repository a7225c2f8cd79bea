"""The store's writer: one thread that owns the daemon's write connection, fed by a queue.

The scheduler's passes (every finish and claim ready, in one transaction) and the
workers' process records run here, one after another, so the event loop keeps reading
replies and handing items to workers while a commit is under way. SQLite gives each
thread its own connection (Peewee keeps one per thread): what the writer commits, the
loop's connection sees at its next read, as every read there starts a fresh snapshot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pipewarden import faults
from pipewarden.store import Storage

log = logging.getLogger("pipewarden.scheduler")
T = TypeVar("T")


class Writer:
    """`run(work)` runs `work()` on the writer's thread and waits for it without blocking
    the loop; `later(write)` queues a write no one waits for."""

    def __init__(self, store: Storage):
        self.store = store
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipewarden-writer")
        self._since: float | None = None  # when the write under way began (monotonic)

    async def run(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._timed, work)

    def busy_for(self) -> float:
        """How long the write under way has taken so far (0: none). The loop no longer waits
        inside SQLite, so a store that does not answer shows here (systemd's watchdog)."""
        since = self._since
        return 0.0 if since is None else time.monotonic() - since

    def _timed(self, work: Callable[[], T]) -> T:
        self._since = time.monotonic()
        try:
            return work()
        finally:
            self._since = None

    def later(self, write: Callable[..., Any]) -> Callable[..., None]:
        """`write` as a callback that queues it for the writer (a record for recovery only:
        a store that cannot take it skips it, and a failure is logged, not raised)."""

        def queued(*args: Any) -> None:
            self._thread.submit(self._timed, lambda: self._quietly(write, args))

        return queued

    def _quietly(self, write: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            faults.unless_waiting(self.store, lambda: write(*args))
        except Exception as exc:
            log.warning("a background write failed: %s", exc)

    def close(self) -> None:
        """Finish what is queued, close the writer's connection, end its thread."""
        self._thread.submit(self.store.close).result()
        self._thread.shutdown(wait=True)
