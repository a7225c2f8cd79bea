"""Stage slots, a part of the scheduler: each stage's executor and what it has in flight,
the holds that keep work back this pass, and how a reload swaps slots without losing an
attempt (a pool whose code changed finishes its items, then new workers take over).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field

from pipewarden.classifier import Classifier
from pipewarden.config import Config, Pipeline, Stage
from pipewarden.guard import Guard
from pipewarden.reload import StageCode
from pipewarden.store import Claimed, Hold, NewRun
from pipewarden.workers import executor_for

log = logging.getLogger("pipewarden.scheduler")
# Items claimed ahead per worker of a quick stage: about AHEAD_S of its work, within
# AHEAD_MIN..AHEAD_MAX. The more a commit covers, the less each item pays for it (a no-op
# stage gets AHEAD_MAX), while an item ahead shows as running at most about AHEAD_S early.
# AHEAD_S bounds it in time; the cap (64 before: c2 5,457 -> 6,316 no-op items/s at 256,
# bench/README) bounds the rows of one claim, and what a kill -9 ends as interrupted.
AHEAD_S = 0.05
AHEAD_MIN, AHEAD_MAX = 8, 256
QUICK_S = 0.5  # attempts quicker than this (on average) gain from items claimed ahead
CLEAN_TO_PIPELINE = 16  # attempts in a row that went through before a pool pipelines
# Items a pipelining worker is sent ahead of its reply: about PIPELINE_S of its work, at
# most PIPELINE_MAX, topped up in one write once half are done, so a worker quicker than
# the daemon is woken once per several items, not once per item (a wake-up was 38 % of
# the loop's time, bench/README). Each may run past a halt the item before it raises.
PIPELINE_S = 0.002
PIPELINE_MAX = 8
Ahead = tuple[Claimed, NewRun]  # an item handed to a slot ahead: its claim and its run row


@dataclass(eq=False)
class StageSlot:
    """A stage's executor, its attempts under way and, for a pool, the items handed to it
    ahead: claimed (their run rows committed) but not sent to a worker yet, so that a worker
    done with one item starts the next without waiting for a commit. A halt or a pause
    gives those back untouched (see claims.Claims._take_back)."""

    pipeline: Pipeline
    stage: Stage
    executor: object
    in_flight: int = 0
    replaces: StageSlot | None = None  # a retired slot whose last attempts still run
    ahead: deque[Ahead] = field(default_factory=deque)
    sent: int = 0  # items of `ahead` written to a pool worker with the item it works on
    pace: float | None = None  # the attempts' recent mean duration (s): how far to claim ahead
    clean: int = 0  # attempts in a row that went through

    @property
    def busy(self) -> int:
        """Attempts of this stage under way, those of the slots it replaced included."""
        return self.in_flight + (self.replaces.busy if self.replaces else 0)

    @property
    def idle(self) -> int:
        """Workers free for an attempt now."""
        # The stage's concurrency holds across a swap: new workers start as old ones finish.
        return self.executor.capacity - self.busy

    @property
    def free(self) -> int:
        """Items the slot may be given by a claim: its idle workers, and as many ahead."""
        return self.idle + self.ahead_allowed - len(self.ahead) - self.sent

    @property
    def ahead_allowed(self) -> int:
        """How many items a claim may hand the slot ahead of its workers: about AHEAD_S of
        work per worker for a quick stage (a worker done with one starts the next at once, and a
        pass writes several ends in one commit). None before its pace is known, nor for a
        slow stage (a commit is nothing beside its attempts, and an item ahead would show as
        running long before it runs), nor for `on_interrupt: hold` (a crash would hold an
        item for a person as if it had started)."""
        quick = self.pace is not None and self.pace < QUICK_S
        if not quick or self.stage.on_interrupt == "hold":
            return 0
        per_worker = min(AHEAD_MAX, max(AHEAD_MIN, int(AHEAD_S / max(self.pace, 1e-6))))
        return self.executor.capacity * per_worker

    @property
    def pipelines(self) -> bool:
        """Whether a worker is sent its next items with the one it works on: for a pool that
        can (see workers.WorkerPool.pipelines) whose last CLEAN_TO_PIPELINE attempts went
        through. Items sent run even if one before them raises a halt (at most
        `pipeline_depth` of them): after a failure, items go one at a time again, each
        judged by the guard before the next is sent."""
        return self.clean >= CLEAN_TO_PIPELINE and getattr(self.executor, "pipelines", False)

    @property
    def pipeline_depth(self) -> int:
        """How many items a worker that pipelines is sent ahead of its reply: one, or for
        a stage of items quicker than the daemon, up to PIPELINE_MAX (see PIPELINE_S)."""
        if self.pace is None:
            return 1
        return max(1, min(PIPELINE_MAX, int(PIPELINE_S / max(self.pace, 1e-6))))

    def judged(self, went_through: bool) -> None:
        self.clean = self.clean + 1 if went_through else 0

    def timed(self, duration_s: float) -> None:
        """An attempt took `duration_s`: a quicker one sets the pace at once (a pool worker's
        first attempt includes its start), a slower one moves it by a fifth."""
        pace = self.pace
        self.pace = duration_s if pace is None else min(duration_s, 0.8 * pace + 0.2 * duration_s)


@dataclass(frozen=True)
class Holds:
    """Which work the active holds keep back this pass."""

    channels: frozenset[str]
    stages: frozenset[str]  # "pipeline/stage"
    pipelines: frozenset[str]
    probes: tuple[Hold, ...]  # halts whose cool-down has passed: one item may go through
    probe_times: tuple[float, ...]  # when the others' next probes are due

    @classmethod
    def from_rows(cls, holds: list[Hold], now: float) -> Holds:
        def targets(scope: str) -> frozenset[str]:
            return frozenset(h.target for h in holds if h.scope == scope)

        probes = tuple(
            h for h in holds
            if h.kind == "halt" and h.probe_at is not None and h.probe_at <= now
            and h.probe_run_id is None and h.scope in ("channel", "stage")
        )  # fmt: skip
        probe_times = tuple(h.probe_at for h in holds if h.probe_at is not None)
        return cls(targets("channel"), targets("stage"), targets("pipeline"), probes, probe_times)

    def blocks(self, slot: StageSlot) -> bool:
        return slot.pipeline.name in self.pipelines or slot.stage.qualified_name in self.stages


class LiveConfig:
    """Reloaded settings swapped in (see scheduler.Scheduler for the state it shares)."""

    def apply(
        self,
        config: Config,
        classifier: Classifier,
        guard: Guard,
        code: dict[str, StageCode] | None = None,
    ) -> list[str]:
        """Swap in reloaded settings (and the stages' code); returns what changed, for the
        log and `status`."""
        changes: list[str] = []
        if classifier.version != self.classifier.version:
            changes.append(f"rules {self.classifier.version} -> {classifier.version}")
        code = self.code if code is None else code
        current = {slot.stage.qualified_name: slot for slot in self._slots}
        slots = []
        for pipeline in config.pipelines.values():
            for stage in pipeline.stages:
                slot = current.pop(stage.qualified_name, None)
                edited = self._edited(stage, code, config) if slot is not None else []
                if slot is not None and edited and stage.mode == "pool":
                    self._retire(slot)
                    slots.append(StageSlot(pipeline, stage, executor_for(stage), replaces=slot))
                    changes.append(
                        f"stage {stage.qualified_name} replaced: {', '.join(edited)} changed —"
                        " its pool workers finish their current item, then new ones run it"
                    )
                    continue
                if edited:  # a fresh process per attempt: the next one runs the new code
                    changes.append(
                        f"stage {stage.qualified_name}: {', '.join(edited)} changed — its next"
                        " attempt runs it"
                    )
                if slot is not None and slot.stage == stage:
                    slot.pipeline = pipeline
                    slots.append(slot)
                    continue
                if slot is not None and _only_limits_changed(slot.stage, stage):
                    slot.pipeline, slot.stage = pipeline, stage
                    slot.executor.reconfigure(stage)  # takes effect from the next item
                    slots.append(slot)
                    changes.append(f"stage {stage.qualified_name} updated")
                    continue
                if slot is not None:
                    self._retire(slot)
                changes.append(f"stage {stage.qualified_name} {'replaced' if slot else 'added'}")
                slots.append(StageSlot(pipeline, stage, executor_for(stage), replaces=slot))
        for name, slot in current.items():
            self._retire(slot)
            changes.append(f"stage {name} removed (its items wait)")
        self._slots = slots
        self.config, self.classifier, self.guard, self.code = config, classifier, guard, code
        self.notifier.settings = config.notify
        self.wake()
        return changes

    def _edited(self, stage: Stage, code: dict[str, StageCode], config: Config) -> list[str]:
        """The stage's source files that changed since the code in force was loaded."""
        new = code.get(stage.qualified_name)
        old = self.code.get(stage.qualified_name)
        root = config.path.parent.resolve()
        if new is None:
            return old.edited(None, root) if old else []
        return new.edited(old, root)

    def _retire(self, slot: StageSlot) -> None:
        """The slot takes no more items: those handed to it ahead go back to the queue."""
        self._retired.append(slot)
        with self._handing:
            self._put_back += [(slot, *handed) for handed in slot.ahead]
            slot.ahead.clear()

    async def _stop_retired(self) -> None:
        idle = [slot for slot in self._retired if slot.in_flight == 0]
        if idle:
            self._retired = [slot for slot in self._retired if slot.in_flight > 0]
            for slot in (*self._slots, *self._retired):
                if any(slot.replaces is gone for gone in idle):
                    slot.replaces = None
            await asyncio.gather(*(slot.executor.stop() for slot in idle))


def _only_limits_changed(old: Stage, new: Stage) -> bool:
    """True when a pool can keep its processes: only limits and policies differ."""
    same_worker = ("command", "python", "mode", "cwd", "env")
    return all(getattr(old, f) == getattr(new, f) for f in same_worker) and (
        old.concurrency == new.concurrency or old.mode == "process"
    )
