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

    async def run(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, work)

    def later(self, write: Callable[..., Any]) -> Callable[..., None]:
        """`write` as a callback that queues it for the writer (a record for recovery only:
        a store that cannot take it skips it, and a failure is logged, not raised)."""

        def queued(*args: Any) -> None:
            self._thread.submit(self._quietly, write, args)

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
