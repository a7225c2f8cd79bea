"""The scheduler: claims ready items per stage within concurrency and runs them.

One loop, woken by events rather than polling: a finished run, an enqueue or a
hold change (the CLI sends SIGUSR1), a stop request, or the moment the next retry,
deferral or probe comes due (or a budget's day is over). Each pass, in one
transaction: write what finished, let the guard raise halts on it, lift budget halts
whose day is over, defer items of channels outside business hours, and claim what
fits in the free slots of stages that are not held (run rows are committed before
any worker starts). Live progress is written on a timer of its own, at most once a
second, since the loop may sleep for as long as an attempt runs. Notifications go
to the outbox; the notifier delivers them off the loop.

A pass the store cannot take (a full disk, a read-only or vanished store) leaves
nothing behind, in the store or in memory: what finished waits for the next try, no
claim of it starts a worker, and claiming stops until a write goes through again
(see faults.Outage).

A run's life, part by part, each a module of its own joined here over one shared state:
slots (the stages, their executors, reloads) -> claims (what starts: free slots, holds,
probes, checkpoints) -> attempts (the worker under its executor's watchdog, its
progress) -> judging (classification, the outcome and its retry policy, the run's
record) -> recording (one commit per pass; the guard and the notifier see each batch)
-> announce (notifications). After each commit, every observer is told
`runs_finished(runs)` (metrics, the template miner). `step()` is one pass, for a test
that chooses the time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
from typing import Any

from pipewarden import faults
from pipewarden.announce import Announce
from pipewarden.attempts import Attempts
from pipewarden.claims import Claims
from pipewarden.classifier import Classifier
from pipewarden.clock import Clock
from pipewarden.config import Config
from pipewarden.events import EventBus
from pipewarden.guard import Guard
from pipewarden.judging import Judging
from pipewarden.notifier import Notifier
from pipewarden.outcomes import Decision
from pipewarden.recording import Batch, Handed, Recording
from pipewarden.reload import StageCode
from pipewarden.slots import Holds, LiveConfig, StageSlot
from pipewarden.store import Claimed, FinishedRun, Hold, Storage
from pipewarden.workers import executor_for
from pipewarden.writer import Writer

log = logging.getLogger("pipewarden.scheduler")

IDLE_CHECK_S = 0.5  # with --until-idle, how often a quiet loop re-checks for due items
NOTIFY_AT_STOP_S = 5.0  # at shutdown, how long queued notifications may take to go out
WORKING_LINGER_S = 0.25  # the API's reads keep to their share this long after an attempt


class Scheduler(Claims, Attempts, Judging, Recording, Announce, LiveConfig):
    """The loop; each part of a run's life is a module of its own (claims, attempts,
    judging, recording, announce, slots), joined here over one shared state."""

    def __init__(
        self,
        config: Config,
        store: Storage,
        classifier: Classifier,
        guard: Guard,
        notifier: Notifier,
        clock: Clock,
        code_ref: str | None,
        events: EventBus | None = None,
        rng: random.Random | None = None,
        code: dict[str, StageCode] | None = None,
        writer: Writer | None = None,
    ):
        self.config = config
        self.events = events or EventBus()
        self.observers: list[Any] = []  # e.g. metrics: told of every batch of finished runs
        self.store = store
        self.writer = writer or Writer(store)  # the store's writes, off the loop
        self.classifier = classifier
        self.guard = guard
        self.notifier = notifier
        notifier.on_delivered = self.wake
        self.clock = clock
        self.code_ref = code_ref
        self.code = code or {}  # each stage's own source files, as of the last (re)load
        self.rng = rng or random.Random()
        self.claiming = True
        self._slots = [
            StageSlot(pipeline, stage, executor_for(stage))
            for pipeline in config.pipelines.values()
            for stage in pipeline.stages
        ]
        self._retired: list[StageSlot] = []  # replaced by a reload; stopped once idle
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_ended = float("-inf")  # monotonic time the last attempt ended
        self._finished: list[FinishedRun] = []
        # run id -> its run_finished event, sent once the run is committed: a follower that
        # subscribes meanwhile then gets the event or reads the run from the store, never neither
        self._finish_events: dict[str, dict[str, Any]] = {}
        self._may_halt = 0  # of the runs finished and not committed, failures and costs
        self._probe_ends: list[tuple[int, Claimed, Decision, float]] = []  # for the next pass
        self._put_back: list[Handed] = []  # handed ahead, never sent: back to the queue
        self._handing = threading.Lock()  # the slots' items ahead: the loop's and the writer's
        self._progress: dict[str, tuple[float | None, str | None]] = {}
        self._progress_timer: asyncio.TimerHandle | None = None  # the next progress write
        self._group_commit: asyncio.TimerHandle | None = None  # the pass finished runs wait for
        self._progress_written = float("-inf")  # monotonic time of the last one
        self._probes: dict[str, int] = {}  # run id -> the hold it probes
        self._holds = Holds(frozenset(), frozenset(), frozenset(), (), ())
        self._wake = asyncio.Event()
        self._interrupt_reason = "daemon stopping: interrupted"
        self.outage = faults.Outage(store.path)  # the daemon's own, which tells systemd

    def wake(self) -> None:
        self._wake.set()

    def halted_targets(self) -> list[str]:
        holds = self._holds
        return sorted(holds.channels | holds.stages | holds.pipelines)

    @property
    def in_flight(self) -> int:
        """Attempts under way (counted by the attempts themselves, not by task bookkeeping)."""
        return sum(slot.in_flight for slot in (*self._slots, *self._retired))

    @property
    def working(self) -> bool:
        """Attempts under way, or one ended within WORKING_LINGER_S. A quick stage's workers
        spend much of their time between items, waiting for the commit that claims the next
        ones: `in_flight` alone is 0 for most of a busy no-op run."""
        return self.in_flight > 0 or self.clock.monotonic() - self._last_ended < WORKING_LINGER_S

    async def run(self, stop: asyncio.Event, until_idle: bool = False) -> None:
        """Claim and run until `stop` is set (or, with until_idle, nothing is left to do).

        Whoever sets `stop` must also call `wake()`, so a sleeping loop notices.
        """
        while not stop.is_set():
            self._wake.clear()
            if not await self.step():  # the store could not take the pass: kept, tried again
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.outage.retry_in)
                continue
            if until_idle and not self.in_flight and self._nothing_left():
                log.info("nothing left to do: stopping (--until-idle)")
                return
            await asyncio.sleep(0)  # the workers this pass started get their items first
            await self._sleep(self._seconds_until_due(until_idle))

    async def step(self) -> bool:
        """One pass at the clock's time: write what finished, claim what fits (its workers
        start as tasks), let the notifier deliver what is due. False when the store could
        not take it (nothing of it is left behind). A test drives the loop with it."""
        now = self.clock.now()
        if not await self._in_one_commit(self._pass, now):
            return False
        self.notifier.tick(now)
        await self._stop_retired()
        return True

    async def drain(self, grace_s: float, reason: str) -> bool:
        """Stop claiming, give in-flight runs `grace_s` to finish, then interrupt the rest.

        True when every finished run is recorded; the runs of those that are not stay
        `running` in the store, and the next start requeues their items.
        """
        self.claiming = False
        if self.in_flight:
            log.info("waiting up to %gs for %d running attempt(s)", grace_s, self.in_flight)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_s)
        leftover = set(self._tasks)
        for task in leftover:
            task.cancel()
        if leftover:
            self._interrupt_reason = reason
            await asyncio.wait(leftover)
        with contextlib.suppress(faults.StoreFault):  # damaged: the daemon says so as it exits
            await self._in_one_commit(self._last_pass, self.clock.now())
        if self._progress_timer is not None:
            self._progress_timer.cancel()
        if self._finished:
            log.error(
                "%d finished run(s) not recorded: the next start requeues their items",
                len(self._finished),
            )
        ahead = sum(len(slot.ahead) for slot in (*self._slots, *self._retired))
        if ahead := ahead + len(self._put_back):  # claimed, not given back either
            log.error(
                "%d item(s) claimed ahead not given back: the next start requeues them", ahead
            )
        else:
            await self.notifier.flush(self.clock.now(), timeout_s=NOTIFY_AT_STOP_S)
        await asyncio.gather(*(slot.executor.stop() for slot in (*self._slots, *self._retired)))
        return not self._finished

    def _pass(self, batch: Batch) -> None:
        """On the writer's thread, in one transaction: write what finished, raise and lift
        halts, give back what they keep from starting, claim what fits."""
        now = batch.now
        self._end_probes(batch)
        # First: a halt it raises must stop this very pass's claims.
        self.flush(batch, batch.finished, batch.progress)
        holds = self._lift_budget_halts(self.store.active_holds(), batch)
        batch.holds = Holds.from_rows(holds, now)
        self._take_back(batch)
        if batch.claiming and self.outage.fault is None:
            self._defer_closed_channels(now)
            self._dispatch(batch)
            self.flush(batch, batch.skipped)  # skipped runs end in the pass that claimed them

    def _last_pass(self, batch: Batch) -> None:
        """At a stop: write what finished; what was handed ahead goes back to the queue."""
        self._end_probes(batch)
        self.flush(batch, batch.finished, batch.progress)
        self._take_back(batch)

    async def _sleep(self, delay: float | None) -> None:
        """Until woken (a run ended, an enqueue, a stop) or until `delay` has passed."""
        timer = None if delay is None else asyncio.get_running_loop().call_later(delay, self.wake)
        await self._wake.wait()
        if timer is not None:
            timer.cancel()

    def _seconds_until_due(self, until_idle: bool) -> float | None:
        """How long the loop may sleep: until an item that can run now comes due, a probe
        or a notification is due. Work that waits behind a hold or a full stage wakes it
        through `wake()` (a clear, a finished run), so it costs nothing meanwhile."""
        now = self.clock.now()
        holds = self._holds
        candidates = []
        open_stages = [
            (s.pipeline.name, s.stage.name)
            for s in self._slots
            if s.free > 0 and not holds.blocks(s)
        ]
        blocked = sorted(holds.channels)
        if open_stages and (due := self.store.next_ready_at(open_stages, blocked)) is not None:
            candidates.append(max(0.01, due - now))
        candidates += [max(0.01, t - now) for t in holds.probe_times if t > now]
        for probe in holds.probes:  # due, but no item to probe with yet: when one is ready
            if (due := self._next_probe_item(probe)) is not None:
                candidates.append(max(0.01, due - now))
        if not self.notifier.delivering and (due := self.notifier.next_due()) is not None:
            candidates.append(max(0.05, due - now))
        if until_idle and not self.in_flight:
            candidates.append(IDLE_CHECK_S)
        return min(candidates) if candidates else None

    def _next_probe_item(self, hold: Hold) -> float | None:
        """When an item that could probe `hold` is ready (None: none waits)."""
        free = [s for s in self._slots if s.free > 0]
        if hold.scope == "stage":
            stages = [(s.pipeline.name, s.stage.name) for s in free
                      if s.stage.qualified_name == hold.target]  # fmt: skip
            return (
                self.store.next_ready_at(stages, sorted(self._holds.channels)) if stages else None
            )
        stages = [(s.pipeline.name, s.stage.name) for s in free if not self._holds.blocks(s)]
        return self.store.next_ready_at(stages, only_channel=hold.target) if stages else None

    def _nothing_left(self) -> bool:
        holds = self._holds
        return (
            self.store.pending_count(holds.channels, holds.stages, holds.pipelines) == 0
            and not holds.probes
        )
