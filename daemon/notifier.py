"""Notifications through Apprise, fed from an outbox table.

`notify()` only writes outbox rows (one per target that wants the event), so it
never blocks the scheduler and nothing is lost when a target is down. `tick()`
delivers what is due, off the event loop, and marks each row sent only once its
target accepted it; a failed delivery is retried with backoff. A notification key
is not repeated within the repeat interval, and failures that arrive within the
digest wait go out together as one message.

Apprise URLs are secrets: rows and logs name a target by its id, never its URL.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from pipewarden.clock import Clock
from pipewarden.config import NotifySettings, NotifyTarget
from pipewarden.store import Outbox, Store

log = logging.getLogger("pipewarden.notifier")

DIGEST_EVENTS = {"failure"}  # many small events a person wants as one message
MAX_RETRY_BACKOFF_S = 300.0


@dataclass(frozen=True)
class Delivery:
    target: str  # the target's id
    ok: bool
    error: str | None = None


class Notifier:
    def __init__(self, store: Store, settings: NotifySettings, clock: Clock | None = None):
        self.store = store
        self.settings = settings
        self.clock = clock or Clock()
        self._sending: asyncio.Task[None] | None = None
        self.on_delivered: Callable[[], None] = lambda: None  # the scheduler wakes to look again
        self.on_result: Callable[[bool], None] = lambda ok: None  # counted by the metrics

    def notify(self, event: str, key: str, title: str, body: str, now: float) -> int:
        """Queue a notification for every target that wants `event`; returns how many."""
        queued = 0
        due = now + (self.settings.digest_wait_s if event in DIGEST_EVENTS else 0)
        since = now - self.settings.repeat_interval_s
        for target in self.settings.targets:
            if not target.wants(event) or self._sent_recently(key, target.id, since):
                continue
            self.store.Outbox.create(
                key=key, event=event, target=target.id, title=title, body=body,
                created_at=now, due_at=due, next_try_at=due,
            )  # fmt: skip
            queued += 1
        return queued

    def _sent_recently(self, key: str, target: str, since: float) -> bool:
        outbox = self.store.Outbox
        return (
            outbox.select()
            .where((outbox.key == key) & (outbox.target == target) & (outbox.created_at >= since))
            .exists()
        )

    def next_due(self) -> float | None:
        """When the next undelivered notification is due (None: nothing waits)."""
        known = [target.id for target in self.settings.targets]
        if not known:
            return None
        # Plain SQL: asked on every scheduler pass.
        return (
            self.store.db.connection()
            .execute(
                "SELECT MIN(next_try_at) FROM outbox WHERE sent_at IS NULL"
                f" AND target IN ({', '.join('?' * len(known))})",
                known,
            )
            .fetchone()[0]
        )

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
        outbox = self.store.Outbox
        ready = (outbox.next_try_at <= now) | (stopping & (outbox.attempts == 0))
        rows = (
            outbox.select().where(outbox.sent_at.is_null() & ready).order_by(outbox.id).limit(500)
        )
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
                row
                for row in outbox.select().where(
                    outbox.sent_at.is_null() & (outbox.target == target)
                    & outbox.event.in_(list(DIGEST_EVENTS))
                )
                if row.id not in taken
            ]  # fmt: skip
        return by_target

    async def _deliver(self, due: dict[str, list[Outbox]]) -> None:
        targets = {target.id: target for target in self.settings.targets}
        try:
            for target_id, rows in due.items():
                for title, body, batch in _messages(rows):
                    result = await asyncio.to_thread(send, targets[target_id], title, body)
                    self._record(batch, result, self.clock.now())
        finally:
            self.on_delivered()

    def _record(self, rows: list[Outbox], result: Delivery, now: float) -> None:
        self.on_result(result.ok)
        outbox = self.store.Outbox
        ids = [row.id for row in rows]
        if result.ok:
            outbox.update(sent_at=now, attempts=outbox.attempts + 1).where(
                outbox.id.in_(ids)
            ).execute()
            return
        attempts = rows[0].attempts + 1
        delay = min(MAX_RETRY_BACKOFF_S, self.settings.retry_backoff_s * 2 ** (attempts - 1))
        log.warning(
            "notification to %s failed (attempt %d, next try in %gs): %s",
            result.target, attempts, delay, result.error,
        )  # fmt: skip
        outbox.update(attempts=attempts, next_try_at=now + delay, last_error=result.error).where(
            outbox.id.in_(ids)
        ).execute()

    async def flush(self, now: float, timeout_s: float) -> None:
        """At shutdown: send what waits (digests included) within `timeout_s`."""
        for _ in range(2):  # the delivery under way, then what queued up behind it
            if self._sending is not None and not self._sending.done():
                await asyncio.wait({self._sending}, timeout=timeout_s)
            self.tick(now, stopping=True)


def _messages(rows: list[Outbox]) -> list[tuple[str, str, list[Outbox]]]:
    """Rows to messages: digest events for one target become one message."""
    messages: list[tuple[str, str, list[Outbox]]] = []
    digest = [row for row in rows if row.event in DIGEST_EVENTS]
    for row in rows:
        if row.event not in DIGEST_EVENTS:
            messages.append((row.title, row.body, [row]))
    if len(digest) == 1:
        messages.append((digest[0].title, digest[0].body, digest))
    elif digest:
        body = "\n".join(f"• {row.title}: {row.body}" for row in digest)
        messages.append((f"pipewarden: {len(digest)} failures", body, digest))
    return messages


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
