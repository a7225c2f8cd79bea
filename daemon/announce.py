"""Announcing, a part of the scheduler: halts and failures become notifications (the
outbox), and halts events for the page.
"""

from __future__ import annotations

import json
import logging

from pipewarden.advising import advice_lines, advice_of
from pipewarden.attempts import one_line
from pipewarden.render import describe_hold
from pipewarden.store import FinishedRun, Hold
from pipewarden.types import ItemState, RunStatus

log = logging.getLogger("pipewarden.scheduler")
TIMEOUT_WINDOW_S = 600.0  # watchdog timeouts are counted over this window to notify


class Announce:
    """The scheduler's notifications (see scheduler.Scheduler for the state it shares)."""

    def _notify_halt(self, hold: Hold, now: float, events: list[tuple[str, dict]]) -> None:
        """On the writer's thread: the notification joins the pass, its event `events`."""
        events.append(("halt", dict(target=hold.target, scope=hold.scope, reason=hold.reason)))
        event = "budget" if hold.scope == "pipeline" else "halt"
        samples = json.loads(hold.samples or "[]")
        body = [
            f"{describe_hold(hold)} (rule {hold.rule}).",
            "Its items stay queued; nothing is failed or lost.",
            f"Clear it with: pipewarden halts clear {hold.target}",
        ]
        body += advice_lines(advice_of(self.classifier.ruleset, hold.rule, hold.label))
        if samples:
            body += ["", "Recent errors:", *(f"  {one_line(s)}" for s in samples)]
        self.notifier.notify(
            event, f"halt:{hold.id}", f"pipewarden: {hold.target} halted", "\n".join(body), now
        )

    def _notify_run(self, run: FinishedRun, now: float) -> None:
        if run.item_state is ItemState.FAILED:
            advice = advice_of(self.classifier.ruleset, run.rule_id, run.label)
            self.notifier.failure(
                run.run_id, f"{run.pipeline}/{run.stage} failed: {run.label or 'Unknown'}",
                "\n".join([one_line(run.error), *advice_lines(advice)]), now,
            )  # fmt: skip
        if run.status is RunStatus.TIMED_OUT:
            recent = self.store.count_runs(
                run.pipeline, run.stage, RunStatus.TIMED_OUT, now - TIMEOUT_WINDOW_S
            )
            if recent >= self.config.notify.timeouts_per_10m:
                self.notifier.notify(
                    "timeout", f"timeouts:{run.pipeline}/{run.stage}",
                    f"pipewarden: {run.pipeline}/{run.stage} keeps timing out",
                    f"{recent} watchdog timeouts in 10 minutes. Last: {one_line(run.error)}",
                    now,
                )  # fmt: skip
