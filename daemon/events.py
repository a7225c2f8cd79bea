"""Live events for the API's server-sent-events stream: runs, progress, halts, reloads.

Publishing never blocks the scheduler: each subscriber has a bounded queue, and one
that falls too far behind is told to reload (`resync`) instead of slowing anyone down.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

QUEUE_SIZE = 1000  # events a slow subscriber may fall behind before it must resync


@dataclass(frozen=True)
class Event:
    id: int  # increasing: the order events happened in
    type: str  # run_started | run_progress | run_finished | halt | halt_cleared | reload | resync
    data: dict[str, Any] = field(default_factory=dict)


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[Event]] = set()
        self._ids = itertools.count(1)

    def publish(self, type: str, **data: Any) -> None:
        if not self._subscribers:
            return
        event = Event(next(self._ids), type, data)
        for queue in self._subscribers:
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                _make_room(queue)
                queue.put_nowait(Event(event.id, "resync"))

    def subscribe(self) -> asyncio.Queue[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE_SIZE)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event]) -> None:
        self._subscribers.discard(queue)


def _make_room(queue: asyncio.Queue[Event]) -> None:
    while not queue.empty():
        queue.get_nowait()
