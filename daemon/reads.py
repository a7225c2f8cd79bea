"""The API's reads, off the event loop: one thread with a read-only connection of its own.

SQLite reads for a status snapshot, a page of runs or a scrape take milliseconds on a big
store; on the loop they would hold up every dispatch and every reply meanwhile. Here they
run one at a time in a thread whose own connection (`mode=ro`, WAL: it never blocks the
daemon's writer, and sees each commit whole) is opened at its first read. The status
snapshot is also computed at most once per FRESH_S per question and shared by every
reader: twenty pollers cost what one does (see `SnapshotCache`), and `SnapshotAnswers`
hands it out without the router's steps.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pipewarden.schema import Schema, checked_query
from pipewarden.store import Storage, open_configured, open_store
from starlette.datastructures import QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from pipewarden.config import Config

T = TypeVar("T")
FRESH_S = 0.5  # a status snapshot younger than this is served as it is


class Reader:
    def __init__(self, state_dir: Path, config: Config | None = None):
        self.state_dir = state_dir
        self.config = config  # its `store:`, when the store is not the state dir's file
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="pipewarden-reads")
        self._store: Storage | None = None

    async def run(self, read: Callable[[Storage], T]) -> T:
        """`read(store)` in the reads thread, with its own read-only store."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._call, read)

    def _call(self, read: Callable[[Storage], T]) -> T:
        if self._store is None:
            self._store = (
                open_configured(self.config, read_only=True)
                if self.config is not None
                else open_store(self.state_dir, read_only=True)
            )
        return read(self._store)

    def close(self) -> None:
        """Close the thread's connection (in the thread that opened it), then the thread."""
        self._executor.submit(self._close).result()
        self._executor.shutdown()

    def _close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


@dataclass
class _Entry:
    started: float  # monotonic
    answer: asyncio.Future[bytes]


class SnapshotCache:
    """Answers computed at most once per `fresh_s` per question, shared by every reader.

    A reader that comes while one is computed waits for that one; a change made through
    the API (`invalidate`) makes the next reader get a new one.
    """

    def __init__(
        self,
        compute: Callable[[str | None, bool], Awaitable[bytes]],
        fresh_s: float = FRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._compute = compute
        self._fresh_s = fresh_s
        self._clock = clock
        self._entries: dict[tuple[str | None, bool], _Entry] = {}
        self.computed = 0  # how many answers were computed (the metrics show it)

    async def get(self, only: str | None, verbose: bool) -> bytes:
        key = (only, verbose)
        now = self._clock()
        entry = self._entries.get(key)
        if entry is None or now - entry.started >= self._fresh_s or _failed(entry.answer):
            self._forget_older_than(now - self._fresh_s)
            entry = _Entry(now, asyncio.ensure_future(self._compute(only, verbose)))
            self._entries[key] = entry
            self.computed += 1
        return await asyncio.shield(entry.answer)  # a reader gone takes nobody's answer away

    def invalidate(self) -> None:
        self._entries.clear()

    def _forget_older_than(self, when: float) -> None:
        """Questions nobody asked lately (a pipeline name each) are not kept."""
        for key in [key for key, entry in self._entries.items() if entry.started < when]:
            del self._entries[key]


def _failed(answer: asyncio.Future[bytes]) -> bool:
    return answer.done() and (answer.cancelled() or answer.exception() is not None)


class SnapshotAnswers:
    """ASGI middleware: `GET /api/status` answered from the shared snapshot directly.

    The status is what pollers, the page and the tray ask for again and again. Through
    Starlette's exception layers, router, Request and Response it cost the loop twice what
    the answer itself does (py-spy, an idle daemon answering four kept-alive pollers). It
    sits after the host and token checks, so it answers only whom they let in; a question
    it cannot answer as is (a bad parameter, a snapshot that failed) goes the long way, to
    the route, which says why.
    """

    def __init__(self, app: ASGIApp, snapshots: SnapshotCache, schema: Schema, path: str):
        self.app = app
        self._snapshots = snapshots
        self._schema = schema
        self._path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self._path or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        try:
            asked = checked_query(QueryParams(scope["query_string"]), self._schema)
            body = await self._snapshots.get(asked["pipeline"], asked["verbose"])
        except Exception:  # the route answers it: a 400 naming the parameter, or a 503
            await self.app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode()),
                                (b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})
