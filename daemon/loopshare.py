"""The API's share of the daemon's loop while work runs.

Every HTTP answer is served on the scheduler's loop. A client that asks again the moment
it has its answer (a busy poller, a script in a loop) could otherwise take the whole loop
and starve the attempts: twenty of them held no-op throughput to a quarter. While work runs
(`Scheduler.working`), reads may spend at most `SHARE` of the loop's time; a read that comes when
that is spent waits its turn (it is never refused), so the page stays quick and the work
keeps its pace. An action (a POST: pause, clear, enqueue) never waits, but is counted for
the reads after it. An idle daemon answers as fast as it can.

Twenty busy pollers need 200 to 300 answers a second between them to see each within
100 ms; at about 0.24 ms of the loop each (measured under load: the loop thread's CPU per
answer), that is 5 to 7 % of it, which is `SHARE`.
The share is of wall time, not of the daemon's CPU: on a crowded machine the loop gets
less CPU and the API's share of it grows, which is why it is kept small.

Each request is charged the loop thread's CPU time of its own steps (not what the loop did
for others while it awaited a read in the reads thread), plus `SERVING_COST_S` for what
the loop does around them: reading the socket, uvicorn's parsing and writing, the wake-ups.
An event stream is charged for its start only: its batches are written once for every
client (`events.py`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

SHARE = 0.07  # of the loop's time reads may use while work runs
BURST_S = 0.02  # loop time the API may spend at once before it has to wait
SERVING_COST_S = 150e-6  # the loop around a request's own steps (measured: 150 of 240 µs)
EXPECTED_WEIGHT = 0.1  # of the latest read in what the next one is expected to cost
UNCHARGED_PATHS = frozenset({"/api/events"})  # long-lived: charged for their start only


class LoopBudget:
    """The loop time the API may still spend: refilled at `share` of the time passing."""

    def __init__(
        self,
        busy: Callable[[], bool],
        share: float = SHARE,
        clock: Callable[[], float] = time.monotonic,
        expected: float = SERVING_COST_S,
    ):
        self.busy = busy
        self._share = share
        self._clock = clock
        self._balance = BURST_S
        self._refilled = clock()
        self._turns: asyncio.Lock | None = None  # made on the loop that serves
        self._expected = expected  # what a read costs, as recent ones did
        self.waited = 0  # requests that had to wait (the metrics show it)

    async def turn(self) -> float:
        """Return once the API may spend loop time, with what was set aside for the request
        (pass it to `charge`); waiting requests go in order."""
        if self._turns is None:
            self._turns = asyncio.Lock()
        async with self._turns:
            self._refill()
            if self._balance < 0:
                self.waited += 1
                await asyncio.sleep(-self._balance / self._share)
                self._refill()
            # Set aside what a read usually costs before it runs: charged only once it
            # ended, the requests waiting behind it would all go at once while it ran,
            # then all wait together (twenty pollers: p50 69 ms, p99 156 ms at one rate).
            self._balance -= self._expected
            return self._expected

    def charge(self, seconds: float, set_aside: float = 0.0) -> None:
        """Charge what a request spent, less what its turn set aside for it."""
        self._balance -= seconds - set_aside
        if set_aside:
            self._expected += (seconds - self._expected) * EXPECTED_WEIGHT

    def _refill(self) -> None:
        now = self._clock()
        self._balance = min(BURST_S, self._balance + (now - self._refilled) * self._share)
        self._refilled = now


class LoopShare:
    """ASGI middleware: requests wait while the API has spent its share of a busy loop."""

    def __init__(
        self, app: ASGIApp, budget: LoopBudget, cpu: Callable[[], float] = time.thread_time
    ):
        self.app = app
        self._budget = budget
        self._cpu = cpu

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._budget.busy():
            await self.app(scope, receive, send)
            return
        set_aside = 0.0 if scope["method"] == "POST" else await self._budget.turn()
        if scope["path"] in UNCHARGED_PATHS:
            self._budget.charge(SERVING_COST_S, set_aside)
            await self.app(scope, receive, send)
            return
        metered = _Metered(self.app(scope, receive, send), self._cpu)
        try:
            await metered
        finally:
            self._budget.charge(metered.spent + SERVING_COST_S, set_aside)


class _Metered:
    """Awaits a coroutine step by step, adding up the CPU time of its steps alone."""

    def __init__(self, coroutine: Coroutine[Any, Any, None], cpu: Callable[[], float]):
        self._coroutine = coroutine
        self._cpu = cpu
        self.spent = 0.0

    def __await__(self) -> Generator[Any, Any, None]:
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            began = self._cpu()
            try:
                if thrown is None:
                    waiting_on = self._coroutine.send(sent)
                else:
                    waiting_on = self._coroutine.throw(thrown)
            except StopIteration:
                return
            finally:
                self.spent += self._cpu() - began
            try:
                sent, thrown = (yield waiting_on), None
            except BaseException as error:  # a cancellation goes on into the coroutine
                sent, thrown = None, error
