"""Wake-ups from the fleet: one connection per daemon LISTENs for what the others NOTIFY
(an enqueue, finished runs, a hold raised or cleared, recovered runs) and wakes the
scheduler; an idle daemon polls nothing. A daemon's own notifications are left out (its
scheduler knows). A lost connection is opened again, and the first wake-up after it is
unconditional: something may have changed while it was gone.

The connection is read on the daemon's own event loop (psycopg's async connection: its
socket in the loop's selector), so a notification wakes the scheduler in the same loop
iteration that reads it — no thread between them to be scheduled first, which on a busy
host was a good part of an idle daemon's enqueue → worker start.

While connected, it also keeps the store's holds last read honest (holds.HoldsSeen): any
notification but an enqueue or a finished run says they may have changed, and while it
is not connected they are read on every pass."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from pipewarden.store.postgres.holds import HoldsSeen

log = logging.getLogger("pipewarden.store")

CHANNEL = "pipewarden"
RETRY_S = 1.0
LEAVES_HOLDS = ("enqueue", "finished")  # the notifications that change no hold


class Listener:
    def __init__(
        self,
        url: str,
        params: dict[str, Any],
        own: str | None,
        wake: Callable[[], None],
        holds_seen: HoldsSeen,
    ):
        self.url, self.params, self.own, self.wake = url, params, own, wake
        self.holds_seen = holds_seen
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Listener:
        """On the running loop (the daemon's)."""
        self._task = asyncio.get_running_loop().create_task(self._listen())
        return self

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.holds_seen.listening = False

    async def _listen(self) -> None:
        import psycopg

        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, **self.params
                ) as connection:
                    await connection.execute(f"LISTEN {CHANNEL}")
                    self.holds_seen.listening = True
                    self.holds_seen.changed()
                    self.wake()
                    async for notice in connection.notifies():
                        self._heard(notice.payload)
            except psycopg.Error as exc:
                log.debug("listening for the fleet's changes: %s; again in %gs", exc, RETRY_S)
            finally:
                self.holds_seen.listening = False
            await asyncio.sleep(RETRY_S)

    def _heard(self, payload: str) -> None:
        what, _, who = payload.partition(" ")
        if who == self.own:
            return
        if what not in LEAVES_HOLDS:
            self.holds_seen.changed()
        self.wake()
