"""Wake-ups from the fleet: one connection per daemon LISTENs, in its own thread, for what
the others NOTIFY (an enqueue, finished runs, a hold raised or cleared, recovered runs), and
wakes the scheduler; an idle daemon polls nothing. A daemon's own notifications are left
out (its scheduler knows). A lost connection is opened again, and the first wake-up after
it is unconditional: something may have changed while it was gone.

While connected, it also keeps the store's holds last read honest (holds.HoldsSeen): any
notification but an enqueue or a finished run says they may have changed, and while it
is not connected they are read on every pass."""

from __future__ import annotations

import logging
import threading
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
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="pipewarden-listen", daemon=True)

    def start(self) -> Listener:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5)

    def _listen(self) -> None:
        import psycopg

        while not self._stopping.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, **self.params) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    self.holds_seen.listening = True
                    self.holds_seen.changed()
                    self.wake()
                    while not self._stopping.is_set():
                        for notice in connection.notifies(timeout=0.5):
                            self._heard(notice.payload)
            except psycopg.Error as exc:
                log.debug("listening for the fleet's changes: %s; again in %gs", exc, RETRY_S)
                self._stopping.wait(RETRY_S)
            finally:
                self.holds_seen.listening = False

    def _heard(self, payload: str) -> None:
        what, _, who = payload.partition(" ")
        if who == self.own:
            return
        if what not in LEAVES_HOLDS:
            self.holds_seen.changed()
        self.wake()
