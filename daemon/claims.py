"""Claim planning, a part of the scheduler: which items start this pass, within each
stage's free slots, past holds and closed channels; probes after a halt's cool-down;
checkpoints (an input that already passed a stage is skipped, not run again).
"""

from __future__ import annotations

import asyncio
import json
import logging

from pipewarden.attempts import log_run
from pipewarden.config import Stage
from pipewarden.fingerprint import input_fingerprint
from pipewarden.guard import FAILED
from pipewarden.judging import checked_item_data
from pipewarden.outcomes import (
    INTERNAL,
    Decision,
    skipped,
)
from pipewarden.protocol import Verdict, WorkerReport
from pipewarden.recording import Batch, Handed, finished_event
from pipewarden.slots import Ahead, Holds, StageSlot
from pipewarden.store import Claimed, Hold, NewRun
from pipewarden.types import RunStatus

log = logging.getLogger("pipewarden.scheduler")
CLOSED_LABEL = "Outside business hours"


class Claims:
    """The scheduler's claiming (see scheduler.Scheduler for the state it shares)."""

    def _defer_closed_channels(self, now: float) -> None:
        for channel, hours in self.config.channels.items():
            if not hours.is_open(now):
                deferred = self.store.defer_channel(
                    channel, hours.next_open(now), now, CLOSED_LABEL
                )
                if deferred:
                    log.info("%d item(s) of channel %s wait for business hours", deferred, channel)

    def _dispatch(self, batch: Batch) -> None:
        holds, now = batch.holds, batch.now
        assert holds is not None
        for hold in holds.probes:
            self._start_probe(batch, hold)
        blocked = sorted(holds.channels)
        for slot in self._slots:
            if (free := self._free(slot, batch)) > 0 and not holds.blocks(slot):
                self._claim(batch, slot, free, now, blocked)

    def _free(self, slot: StageSlot, batch: Batch) -> int:
        with self._handing:  # the loop hands items ahead meanwhile
            free = slot.free
        return free - batch.claimed_for(slot)

    def _claim(
        self,
        batch: Batch,
        slot: StageSlot,
        limit: int,
        now: float,
        blocked: list[str],
        only_channel: str | None = None,
    ) -> list[str]:
        """Claim up to `limit` items for `slot` (on the writer's thread): those the loop may
        start once the pass is committed join `batch.claimed`; returns their run ids."""
        stage = slot.stage

        def describe(item_id: int, key: str, data: dict) -> NewRun:
            return self._new_run(stage, item_id, key, data)

        claimed = self.store.claim(
            slot.pipeline.name, stage.name, limit, now, describe, blocked, only_channel
        )
        started = []
        for item, new_run in claimed:
            earlier = (
                None
                if item.force
                else self.store.earlier_success(
                    item.item_id, slot.pipeline.name, stage.name, new_run.input_fingerprint
                )
            )
            # A checkpoint: this very input already passed this stage.
            if earlier and self._record_skipped(batch, slot, item, new_run, earlier, now):
                continue
            batch.claimed.append((slot, item, new_run))
            started.append(new_run.run_id)
        return started

    def _take_back(self, batch: Batch) -> None:
        """Items handed ahead that may not start go back untouched in this very commit (their
        run rows gone, their attempts unspent): every one when the daemon stops claiming,
        else those a hold keeps back (a halt this pass raised, a pause it sees). Taken under
        the lock the loop hands them out with, none of them reaches a worker after."""
        with self._handing:
            for slot in (*self._slots, *self._retired):
                keep = []
                for claimed, new_run in slot.ahead:
                    if batch.claiming and not self._held_back(slot, new_run, batch.holds):
                        keep.append((claimed, new_run))
                    else:
                        batch.taken_back.append((slot, claimed, new_run))
                if len(keep) < len(slot.ahead):
                    slot.ahead.clear()
                    slot.ahead.extend(keep)
        given_back = [*batch.put_back, *batch.in_doubt, *batch.taken_back]
        if given_back:
            self.store.unclaim([(new_run.run_id, claimed.item_id)
                                for _, claimed, new_run in given_back])  # fmt: skip
            log.info("%d item(s) handed ahead went back to the queue untouched", len(given_back))

    def _return_ahead(self, taken_back: list[Handed]) -> None:
        """A pass rolled back: what it took back is ahead of its slots again."""
        with self._handing:
            for slot, claimed, new_run in reversed(taken_back):
                slot.ahead.appendleft((claimed, new_run))

    def _held_back(self, slot: StageSlot, new_run: NewRun, holds: Holds | None) -> bool:
        if new_run.run_id in self._probes:  # let through to test a halt
            return False
        return holds is not None and (holds.blocks(slot) or new_run.channel in holds.channels)

    def _start_ahead(self, slot: StageSlot) -> None:
        """On the loop: an attempt for each idle worker, from the items handed ahead."""
        while slot.idle > 0 and (handed := self._hand_ahead(slot)) is not None:
            task = asyncio.create_task(self._attempts(slot, *handed))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _hand_ahead(self, slot: StageSlot, sent: bool = False) -> Ahead | None:
        """The slot's next item ahead, now counted in flight for a worker to take (or, when
        `sent`, as sent with the item a worker works on: it begins once that one replies);
        None when there is none, the daemon stops claiming, or a hold keeps it back (a pass
        gives it back)."""
        with self._handing:
            if not slot.ahead or not self.claiming:
                return None
            claimed, new_run = slot.ahead[0]
            if self._held_back(slot, new_run, self._holds):
                return None
            slot.ahead.popleft()
            if sent:
                slot.sent += 1
            else:
                slot.in_flight += 1
        if not sent:
            self._publish_started(slot, claimed, new_run)
        return claimed, new_run

    def _publish_started(self, slot: StageSlot, claimed: Claimed, new_run: NewRun) -> None:
        self.events.publish(
            "run_started", run_id=new_run.run_id, pipeline=slot.pipeline.name,
            stage=slot.stage.name, key=claimed.key, attempt=claimed.attempt,
            channel=new_run.channel, started_at=self.clock.now(),
        )  # fmt: skip

    def _record_skipped(
        self,
        batch: Batch,
        slot: StageSlot,
        claimed: Claimed,
        new_run: NewRun,
        earlier: tuple[str, str],
        now: float,
    ) -> bool:
        """End the claimed run as skipped, its item given what the earlier run merged into
        it, so the next stage sees what it saw then. False (the stage runs) where that
        cannot be given back."""
        earlier_id, produced = earlier
        try:
            merged = json.loads(produced)
            if not isinstance(merged, dict):
                raise ValueError(f"it is {type(merged).__name__}, not an object")
            data = {**claimed.data, **merged}
            item_data = checked_item_data(data)
        except ValueError as exc:
            log.warning(
                "%s %s: run %s's data cannot be given back (%s): the stage runs again",
                slot.stage.qualified_name, claimed.key, earlier_id[:8], exc,
            )  # fmt: skip
            return False
        decision = skipped(slot.pipeline, slot.stage, claimed.attempt, now, earlier_id)
        report = WorkerReport(Verdict.OK)
        run = self._finished_run(
            slot, claimed, new_run, report, decision, data, 0.0, item_data=item_data,
            data_out=produced,
        )  # fmt: skip
        batch.skipped.append(run)
        batch.events.append(("run_finished", finished_event(run, claimed.key, claimed.attempt)))
        log_run(self.config.log_runs, slot.stage, claimed, new_run, decision)
        return True

    def _lift_budget_halts(self, holds: list[Hold], batch: Batch) -> list[Hold]:
        """A budget's halt lifts itself when its day is over; returns the holds still on."""
        active, now = [], batch.now
        for hold in holds:
            lifts_at = batch.guard.budget_lifts_at(hold)
            if lifts_at is None or lifts_at > now:
                active.append(hold)
                continue
            self.store.clear_holds(hold.target, ("halt",), "a new budget day", now)
            log.info("a new budget day: the halt on pipeline %s is lifted", hold.target)
            self.notifier.halt_resolved(hold, "A new budget day began", now)
        return active

    def _start_probe(self, batch: Batch, hold: Hold) -> None:
        """After a halt's cool-down, let exactly one item through to test the water."""
        holds, now = batch.holds, batch.now
        assert holds is not None
        for slot in self._slots:
            if self._free(slot, batch) <= 0:
                continue
            if hold.scope == "stage":
                if slot.stage.qualified_name != hold.target:
                    continue
                run_ids = self._claim(batch, slot, 1, now, sorted(holds.channels))
            else:
                others = sorted(holds.channels - {hold.target})
                run_ids = self._claim(batch, slot, 1, now, others, only_channel=hold.target)
            if run_ids:
                batch.probes[run_ids[0]] = hold.id
                self.store.update_hold(hold.id, probe_run_id=run_ids[0])
                log.info("probing halted %s %s with one item", hold.scope, hold.target)
                return

    def _finish_probe(self, hold_id: int, claimed: Claimed, decision: Decision, now: float) -> None:
        """A probe that went through clears its halt. One that failed keeps it, doubles the
        cool-down, and its item waits in the queue without spending an attempt. One that
        tells nothing of the channel (ignored, deferred, an internal error) keeps the halt
        and its cool-down."""
        hold = self.store.hold(hold_id)
        if hold is None or hold.cleared_at is not None:
            return
        if decision.run_status is RunStatus.OK:
            self.store.clear_holds(hold.target, ("halt",), "probe (one item went through)", now)
            log.info("probe passed: halt on %s %s cleared", hold.scope, hold.target)
            self.notifier.halt_resolved(hold, "A probe item went through", now)
            return
        failed = decision.run_status in FAILED and decision.classification is not INTERNAL
        cooldown = (hold.cooldown_s or 60.0) * (2 if failed else 1)
        self.store.update_hold(
            hold.id, probe_at=now + cooldown, cooldown_s=cooldown, probe_run_id=None
        )
        if failed:
            log.warning(
                "probe failed: %s %s stays halted; its item %s is back in the queue"
                " (attempt %d not spent); next probe in %gs",
                hold.scope, hold.target, claimed.key, claimed.attempt, cooldown,
            )  # fmt: skip
        else:
            log.info(
                "probe told nothing (%s): %s %s stays halted; next probe in %gs",
                decision.run_status, hold.scope, hold.target, cooldown,
            )  # fmt: skip

    def _new_run(self, stage: Stage, item_id: int, key: str, data: dict) -> NewRun:
        config_hash = stage.config_hash
        code = self.code.get(stage.qualified_name)
        fingerprint = input_fingerprint(
            stage.pipeline, key, data, config_hash, self.code_ref, code.digest if code else ""
        )
        return NewRun(  # the store gives it its id and trace id
            item_id=item_id,
            channel=stage.channel_for(data),
            input_fingerprint=fingerprint,
            config_hash=config_hash,
            code_ref=self.code_ref,
        )
