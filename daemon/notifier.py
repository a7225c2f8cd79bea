"""Notifications through Apprise, fed from an outbox table.

`notify()` only writes outbox rows (one per target that wants the event), so it
never blocks the scheduler and nothing is lost when a target is down. `tick()`
delivers what is due, off the event loop, and marks each row sent only once its
target accepted it; a failed delivery is retried with backoff. A notification key
is not repeated within the repeat interval.

Messages read like Alertmanager's: failures that arrive within the digest wait go
out as one digest, grouped by (label, channel) with a count and a few example keys,
and capped in length however large the burst; a cleared halt is followed by a
"flows again" message to every target that was told of the halt.

Apprise URLs are secrets: rows and logs name a target by its id, never its URL.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from pipewarden.clock import Clock
from pipewarden.config import NotifySettings, NotifyTarget
from pipewarden.render import format_duration
from pipewarden.store import Hold, Outbox, Storage

log = logging.getLogger("pipewarden.notifier")

DIGEST_EVENTS = {"failure"}  # many small events a person wants as one message
MAX_RETRY_BACKOFF_S = 300.0
DIGEST_LINES = 40  # a digest's body at most; the groups beyond it are summed up in one line
EXAMPLE_KEYS = 3  # item keys named per group of a digest
_FAILURE_KEY = "failure:"  # + the run id: a digest reads the run's facts by it


@dataclass(frozen=True)
class Delivery:
    target: str  # the target's id
    ok: bool
    error: str | None = None


class Notifier:
    def __init__(self, store: Storage, settings: NotifySettings, clock: Clock | None = None):
        self.store = store
        self.settings = settings
        self.clock = clock or Clock()
        self._sending: asyncio.Task[None] | None = None
        self.on_delivered: Callable[[], None] = lambda: None  # the scheduler wakes to look again
        self.on_result: Callable[[bool], None] = lambda ok: None  # counted by the metrics

    def notify(
        self, event: str, key: str, title: str, body: str, now: float, told_of: str = ""
    ) -> int:
        """Queue a notification for every target that wants `event` (or, for a follow-up,
        the event `told_of` it); returns how many."""
        queued = 0
        due = now + (self.settings.digest_wait_s if event in DIGEST_EVENTS else 0)
        since = now - self.settings.repeat_interval_s
        for target in self.settings.targets:
            wanted = target.wants(event) or bool(told_of and target.wants(told_of))
            if not wanted or self.store.sent_recently(key, target.id, since):
                continue
            self.store.add_notification(key, event, target.id, title, body, now, due)
            queued += 1
        return queued

    def failure(self, run_id: str, title: str, error: str, now: float) -> int:
        """An item failed for good in run `run_id`: a line of the next digest."""
        return self.notify("failure", _FAILURE_KEY + run_id, title, error, now)

    def halt_resolved(self, hold: Hold, how: str, now: float) -> int:
        """The all-clear after a halt, to every target that was told of it."""
        told_of = "budget" if hold.scope == "pipeline" else "halt"
        lasted = format_duration(max(0.0, now - hold.created_at))
        return self.notify(
            "halt_cleared", f"cleared:{hold.id}", f"pipewarden: {hold.target} flows again",
            f"{how}; it was halted for {lasted} ({hold.reason}). Its queued items run again.",
            now, told_of,
        )  # fmt: skip

    @property
    def delivering(self) -> bool:
        """A delivery is under way: it wakes the scheduler (`on_delivered`) when it ends."""
        return self._sending is not None and not self._sending.done()

    def next_due(self) -> float | None:
        """When the next undelivered notification is due (None: nothing waits)."""
        return self.store.next_notification_due([target.id for target in self.settings.targets])

    def tick(self, now: float, stopping: bool = False) -> None:
        """Start delivering what is due, unless a delivery is still under way.

        When the daemon stops, digests waiting to gather more events go out at once.
        """
        if self._sending is not None and not self._sending.done():
            return
        next_due = self.next_due()
        if next_due is None or (next_due > now and not stopping):
            return
        due = self._due(now, stopping)
        if due:
            self._sending = asyncio.create_task(self._deliver(due))

    def _due(self, now: float, stopping: bool) -> dict[str, list[Outbox]]:
        rows = self.store.due_notifications(now, stopping)
        by_target: dict[str, list[Outbox]] = defaultdict(list)
        known = {target.id for target in self.settings.targets}
        for row in rows:
            if row.target in known:  # a target removed from the config keeps its rows
                by_target[row.target].append(row)
        # A digest goes whole: a target that gets a delivery now also gets every digest
        # row still waiting for it, whatever retry time each one has drifted to.
        for target, due in by_target.items():
            taken = {row.id for row in due}
            due += [
                row for row in self.store.unsent(target, list(DIGEST_EVENTS)) if row.id not in taken
            ]
        return by_target

    async def _deliver(self, due: dict[str, list[Outbox]]) -> None:
        targets = {target.id: target for target in self.settings.targets}
        try:
            for target_id, rows in due.items():
                for title, body, batch in self._messages(rows):
                    result = await asyncio.to_thread(send, targets[target_id], title, body)
                    self._record(batch, result, self.clock.now())
        finally:
            self.on_delivered()

    def _record(self, rows: list[Outbox], result: Delivery, now: float) -> None:
        self.on_result(result.ok)
        ids = [row.id for row in rows]
        if result.ok:
            self.store.mark_sent(ids, now)
            return
        attempts = rows[0].attempts + 1
        delay = min(MAX_RETRY_BACKOFF_S, self.settings.retry_backoff_s * 2 ** (attempts - 1))
        log.warning(
            "notification to %s failed (attempt %d, next try in %gs): %s",
            result.target, attempts, delay, result.error,
        )  # fmt: skip
        self.store.mark_failed(ids, attempts, now + delay, result.error)

    async def flush(self, now: float, timeout_s: float) -> None:
        """At shutdown: send what waits (digests included) within `timeout_s`."""
        for _ in range(2):  # the delivery under way, then what queued up behind it
            if self._sending is not None and not self._sending.done():
                await asyncio.wait({self._sending}, timeout=timeout_s)
            self.tick(now, stopping=True)

    def _messages(self, rows: list[Outbox]) -> list[tuple[str, str, list[Outbox]]]:
        """Rows to messages: a target's digest events become one digest."""
        messages = [(row.title, row.body, [row]) for row in rows if row.event not in DIGEST_EVENTS]
        digest = [row for row in rows if row.event in DIGEST_EVENTS]
        if digest:
            messages.append((*digest_message(self._failures(digest)), digest))
        return messages

    def _failures(self, rows: list[Outbox]) -> list[Failure]:
        """What each digest row is about, from its run (the row's own text if it is gone)."""
        run_ids = [row.key.removeprefix(_FAILURE_KEY) for row in rows]
        facts = self.store.run_facts(run_ids)
        failures = []
        for row, run_id in zip(rows, run_ids, strict=True):
            error, *advice = row.body.split("\n")  # the error's line, then the rules' advice
            if run_id in facts:
                pipeline, stage, channel, label, key = facts[run_id]
                failures.append(
                    Failure(label or "Unknown", channel, f"{pipeline}/{stage}", key, error, advice)
                )
            else:
                failures.append(Failure(row.title, None, "", None, error, advice))
        return failures


@dataclass(frozen=True)
class Failure:
    """One item that failed for good, as a digest groups it."""

    label: str
    channel: str | None
    stage: str  # "pipeline/stage"
    key: str | None
    error: str
    advice: list[str] = field(default_factory=list)  # the rules' advice and runbook lines


def digest_message(failures: list[Failure]) -> tuple[str, str]:
    """(title, body): one bullet per (label, channel), largest first, with its count, its
    stages, a few example keys and its latest error; at most DIGEST_LINES lines."""
    groups: dict[tuple[str, str | None], list[Failure]] = defaultdict(list)
    for failure in failures:
        groups[(failure.label, failure.channel)].append(failure)
    ordered = sorted(groups.items(), key=lambda kv: -len(kv[1]))
    # Two lines a group (and its advice); past the cap, one line left to sum up the rest.
    blocks = [_group_lines(label, channel, group) for (label, channel), group in ordered]
    shown = len(blocks)
    while shown > 1 and sum(map(len, blocks[:shown])) + (shown < len(blocks)) > DIGEST_LINES:
        shown -= 1
    lines: list[str] = [line for block in blocks[:shown] for line in block]
    if shown < len(ordered):
        rest = sum(len(group) for _, group in ordered[shown:])
        lines.append(f"… and {len(ordered) - shown} more groups ({rest:,} failures)")
    total = len(failures)
    (label, channel), _ = ordered[0]
    what = _what(label, channel)
    if len(ordered) > 1:
        what += f" and {len(ordered) - 1} more"
    return f"pipewarden: {total:,} failure{'s' if total != 1 else ''} — {what}", "\n".join(lines)


def _group_lines(label: str, channel: str | None, group: list[Failure]) -> list[str]:
    stages = sorted({failure.stage for failure in group if failure.stage})
    where = f" ({', '.join(stages)})" if stages else ""
    keys = [failure.key for failure in group if failure.key][:EXAMPLE_KEYS]
    examples = f" — e.g. {', '.join(keys)}" if keys else ""
    if keys and len(group) > len(keys):
        examples += f" (+{len(group) - len(keys):,} more)"
    head = f"• {len(group):,}× {_what(label, channel)}{where}{examples}"
    return [head, f"  last error: {group[-1].error}", *(f"  {line}" for line in group[-1].advice)]


def _what(label: str, channel: str | None) -> str:
    return f"{label} on {channel}" if channel else label


def send(target: NotifyTarget, title: str, body: str) -> Delivery:
    """Deliver one message to one target through Apprise (blocking: run it in a thread)."""
    import apprise  # heavy: only the daemon's notifier and `notify test` pay for it

    client = apprise.Apprise()
    if not client.add(target.url):
        return Delivery(target.id, False, "Apprise does not understand this URL")
    # Apprise's own log says why a delivery failed; keep it, with the URL's secrets removed.
    with apprise.LogCapture(level=logging.WARNING) as captured:
        try:
            ok = client.notify(title=title, body=body)
        except Exception as exc:  # a plugin's bug must not take the notifier down
            ok, captured = False, None
            error = f"{type(exc).__name__}: {exc}"
    if ok:
        return Delivery(target.id, True)
    if captured is not None:
        error = captured.getvalue().strip().splitlines()[-1:] or ["the target did not accept it"]
        error = error[0]
    return Delivery(target.id, False, redact(error, target.url))


def redact(text: str, url: str) -> str:
    """Remove a URL and its credentials from a text that may quote them."""
    secrets = [url, url.split("://", 1)[-1]]
    netloc = url.split("://", 1)[-1].split("/", 1)[0]
    if "@" in netloc:
        credentials = netloc.rsplit("@", 1)[0]
        secrets += [credentials, *credentials.split(":")]
    for secret in sorted((s for s in secrets if len(s) >= 3), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
