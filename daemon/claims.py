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
from pipewarden.slots import StageSlot
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

    def _dispatch(self, now: float) -> None:
        holds = self._holds
        for hold in holds.probes:
            self._start_probe(hold, now)
        blocked = sorted(holds.channels)
        for slot in self._slots:
            if slot.free > 0 and not holds.blocks(slot):
                self._claim(slot, slot.free, now, blocked)

    def _claim(
        self,
        slot: StageSlot,
        limit: int,
        now: float,
        blocked: list[str],
        only_channel: str | None = None,
    ) -> list[str]:
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
                    slot.pipeline.name, stage.name, new_run.input_fingerprint
                )
            )
            # A checkpoint: this very input already passed this stage.
            if earlier and self._record_skipped(slot, item, new_run, earlier, now):
                continue
            self.events.publish(
                "run_started", run_id=new_run.run_id, pipeline=slot.pipeline.name,
                stage=stage.name, key=item.key, attempt=item.attempt, channel=new_run.channel,
                started_at=now,
            )  # fmt: skip
            slot.in_flight += 1
            task = asyncio.create_task(self._attempt(slot, item, new_run))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            started.append(new_run.run_id)
        return started

    def _record_skipped(
        self,
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
        self._add_finished(
            self._finished_run(
                slot, claimed, new_run, report, decision, data, 0.0, item_data=item_data,
                data_out=produced,
            ),
            claimed.key,
            claimed.attempt,
        )  # fmt: skip
        log_run(self.config.log_runs, slot.stage, claimed, new_run, decision)
        return True

    def _lift_budget_halts(self, holds: list[Hold], now: float) -> list[Hold]:
        """A budget's halt lifts itself when its day is over; returns the holds still on."""
        active = []
        for hold in holds:
            lifts_at = self.guard.budget_lifts_at(hold)
            if lifts_at is None or lifts_at > now:
                active.append(hold)
                continue
            self.store.clear_holds(hold.target, ("halt",), "a new budget day", now)
            log.info("a new budget day: the halt on pipeline %s is lifted", hold.target)
            self.notifier.halt_resolved(hold, "A new budget day began", now)
        return active

    def _start_probe(self, hold: Hold, now: float) -> None:
        """After a halt's cool-down, let exactly one item through to test the water."""
        for slot in self._slots:
            if slot.free <= 0:
                continue
            if hold.scope == "stage":
                if slot.stage.qualified_name != hold.target:
                    continue
                run_ids = self._claim(slot, 1, now, sorted(self._holds.channels))
            else:
                others = sorted(self._holds.channels - {hold.target})
                run_ids = self._claim(slot, 1, now, others, only_channel=hold.target)
            if run_ids:
                self._probes[run_ids[0]] = hold.id
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
