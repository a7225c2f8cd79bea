"""Wake-ups from the fleet: one connection per daemon LISTENs, in its own thread, for what
the others NOTIFY (an enqueue, finished runs, a hold raised or cleared, recovered runs), and
wakes the scheduler; an idle daemon polls nothing. A daemon's own notifications are left
out (its scheduler knows). A lost connection is opened again, and the first wake-up after
it is unconditional: something may have changed while it was gone."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("pipewarden.store")

CHANNEL = "pipewarden"
RETRY_S = 1.0


class Listener:
    def __init__(self, url: str, params: dict[str, Any], own: str | None, wake: Callable[[], None]):
        self.url, self.params, self.own, self.wake = url, params, own, wake
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
                    self.wake()
                    while not self._stopping.is_set():
                        for notice in connection.notifies(timeout=0.5):
                            if notice.payload.partition(" ")[2] != self.own:
                                self.wake()
            except psycopg.Error as exc:
                log.debug("listening for the fleet's changes: %s; again in %gs", exc, RETRY_S)
                self._stopping.wait(RETRY_S)
