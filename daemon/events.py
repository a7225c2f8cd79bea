"""Live events for the API's server-sent-events stream: runs, progress, halts, reloads.

Publishing never blocks the scheduler and costs the same whoever listens: an event joins
one pending list. Every BATCH_S at most (at once after a quiet spell; less often with
more than 50 clients) the list becomes one batch: a run's events coalesced to its latest,
each event encoded once as its SSE frame, the frames joined and encoded once into the
bytes every subscriber gets as they are, so a client's stream is one write per batch, not
one per run. A subscriber that falls more than BACKLOG events behind (a client not
reading) is told to reload (`resync`) instead of holding memory or slowing anyone down.

A subscriber that shows only the latest runs (the page keeps 40) asks for at most
`latest_runs` runs' events a batch: a busy daemon ends thousands of runs a second, and
encoding every one of them for a page that shows forty was most of what a page cost the
work. Every other event still reaches it. Subscribers asking for the same share one batch.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import deque
from typing import Any, NamedTuple

BATCH_S = 0.1  # how often a busy stream is written to
# Each client's write of a batch costs the loop about 80 µs whatever its size: with many
# clients, batches come less often, so that all of them cost the work at most ~4 %.
WRITES_PER_S = 500
# json.dumps with an argument makes an encoder per call: one for every event's frame,
# compact because every client is sent every byte of it.
_FRAME_JSON = json.JSONEncoder(default=str, separators=(",", ":"))
BACKLOG = 5000  # events a subscriber may fall behind before it must resync
# Subscribers handed a batch per turn of the loop. Each one handed it wakes and writes
# its copy: a hundred at once held every API answer behind ~36 ms of writes (the busy
# pollers' p99 went from 93 ms without streams to 150 ms with 100 of them).
HAND_OUT_PER_TURN = 10


class Event(NamedTuple):  # a tuple: made for every run's start and end, it must be cheap
    id: int  # increasing: the order events happened in
    type: str  # run_started | run_progress | run_finished | halt | halt_cleared | reload | resync
    data: dict[str, Any] = {}  # noqa: RUF012 (never changed: a tuple's field)

    def frame(self) -> str:
        """The event as one SSE frame (the wire format the page reads). A field with no
        value is left out, not sent as null: a finish without a label, group or error was
        a third null bytes, sent to every client (readers take a missing field as none)."""
        payload = _FRAME_JSON.encode({k: v for k, v in self.data.items() if v is not None})
        return f"id: {self.id}\nevent: {self.type}\ndata: {payload}\n\n"


class Subscription:
    """One client's share: the batches it has not written yet."""

    def __init__(self, latest_runs: int | None = None) -> None:
        self.latest_runs = latest_runs  # None: every run's events
        self._batches: list[bytes] = []
        self._events = 0
        self._resync_id = 0  # > 0: it fell behind; one resync frame replaces what it missed
        self._ready: asyncio.Future[None] | None = None

    def push(self, batch: bytes, events: int, last_id: int) -> None:
        self._events += events
        if self._events > BACKLOG:
            self._batches, self._events, self._resync_id = [], 0, last_id
        elif not self._resync_id:
            self._batches.append(batch)
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)

    async def next(self, closing: asyncio.Future[Any], timeout_s: float) -> bytes:
        """What to write next, in one piece; b"" when `timeout_s` passed or `closing` is done."""
        if not (self._batches or self._resync_id):
            self._ready = asyncio.get_running_loop().create_future()
            await asyncio.wait((self._ready, closing), timeout=timeout_s,
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            self._ready.cancel()
            self._ready = None
        if closing.done():
            return b""
        if self._resync_id:
            frame, self._resync_id = Event(self._resync_id, "resync").frame(), 0
            return frame.encode()
        text = b"".join(self._batches)
        self._batches, self._events = [], 0
        return text


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()
        self._ids = itertools.count(1)
        self._pending: list[Event] = []
        self._flush: asyncio.TimerHandle | None = None
        self._flushed_at = float("-inf")  # monotonic time of the last batch
        self.batches = 0  # batches made: what a test or a bench counts
        self._to_hand_out: deque[tuple[Subscription, bytes, int, int]] = deque()

    @property
    def listening(self) -> bool:
        """Whether anyone subscribes: what an event's data costs need not be spent if not."""
        return bool(self._subscribers)

    def publish(self, type: str, **data: Any) -> None:
        if not self._subscribers:
            return
        self._pending.append(Event(next(self._ids), type, data))
        if self._flush is None:
            delay = max(0.0, self._flushed_at + self.batch_interval() - time.monotonic())
            self._flush = asyncio.get_running_loop().call_later(delay, self._send)

    def batch_interval(self) -> float:
        """Seconds between batches: BATCH_S, or longer so that every client's writes
        together stay within WRITES_PER_S (100 clients: a batch every 0.2 s)."""
        return max(BATCH_S, len(self._subscribers) / WRITES_PER_S)

    def subscribe(self, latest_runs: int | None = None) -> Subscription:
        subscription = Subscription(latest_runs)
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    def _send(self) -> None:
        self._flush = None
        self._flushed_at = time.monotonic()
        pending, self._pending = self._pending, []
        if not pending or not self._subscribers:
            return
        self.batches += 1
        frames: dict[int, str] = {}  # by event id: an event in several batches is encoded once
        batches: dict[int | None, tuple[bytes, int, int] | None] = {}
        for latest_runs in {subscription.latest_runs for subscription in self._subscribers}:
            events = coalesced(pending, latest_runs)
            batches[latest_runs] = (
                (_joined(events, frames), len(events), events[-1].id) if events else None
            )
        handing_out = bool(self._to_hand_out)
        self._to_hand_out.extend((subscription, *batch) for subscription in self._subscribers
                                 if (batch := batches[subscription.latest_runs]))  # fmt: skip
        if not handing_out:
            self._hand_out()

    def _hand_out(self) -> None:
        """Hand the batch to HAND_OUT_PER_TURN subscribers, the rest at the loop's next
        turns, so that answers are served between their writes (in order: one queue)."""
        for _ in range(min(HAND_OUT_PER_TURN, len(self._to_hand_out))):
            subscription, batch, events, last_id = self._to_hand_out.popleft()
            subscription.push(batch, events, last_id)
        if self._to_hand_out:
            asyncio.get_running_loop().call_soon(self._hand_out)


def _joined(events: list[Event], frames: dict[int, str]) -> bytes:
    for event in events:
        if event.id not in frames:
            frames[event.id] = event.frame()
    return "".join([frames[event.id] for event in events]).encode()


def coalesced(events: list[Event], latest_runs: int | None = None) -> list[Event]:
    """`events` with each run's kept only at its latest, where that one was: its progress
    at the last report, and a run that finished within the batch as its finish alone,
    carrying what its start said (a quick stage's runs start and end within one batch, and
    their starts were half of what every client was sent). `latest_runs`: only that many
    of the latest runs' events are kept (every other event is)."""
    limit = len(events) if latest_runs is None else latest_runs
    counted: set[Any] = set()  # the runs kept, the latest first
    progressed: set[Any] = set()
    finished: dict[Any, int] = {}  # run id -> where its finish is in `kept`
    kept: list[Event] = []
    for event in reversed(events):
        run = event.data.get("run_id")
        if run is None:
            kept.append(event)
            continue
        if run in finished:  # its start or progress: told by its finish
            if event.type == "run_started":
                end = kept[finished[run]]
                kept[finished[run]] = Event(end.id, end.type, {**event.data, **end.data})
            continue
        if run not in counted:
            if len(counted) >= limit:
                continue
            counted.add(run)
        if event.type == "run_finished":
            finished[run] = len(kept)
        elif event.type == "run_progress":
            if run in progressed:
                continue
            progressed.add(run)
        kept.append(event)
    kept.reverse()
    return kept
