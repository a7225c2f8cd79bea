"""The store's narrow interface: every operation the scheduler, the guard, the notifier,
the status tree, the API and the CLI need, and nothing of how a backend keeps them.

Rows come back as the Peewee models of `models` (Item, Run, Hold, Outbox), which either
backend binds to its own database; what the hot path exchanges are the plain records of
`records`. A backend passes the contract tests in tests/daemon/test_store_contract.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pipewarden.store.models import Hold, Item, Outbox, Run
from pipewarden.store.records import (
    Claimed,
    Enqueued,
    FailureText,
    FinishedRun,
    HeldChange,
    NewRun,
    Recovered,
    Relabel,
    RunFilter,
    RunningRun,
)

if TYPE_CHECKING:
    from pipewarden.faults import StoreFault


class Storage(Protocol):
    """A store: opened by `open_store`, closed with `close`."""

    path: Path  # where it is kept (for SQLite, its file; else the URL, no password), for messages
    kind: str  # "sqlite" | "postgresql"
    writes: int  # write transactions begun (a held queue must begin none)

    def close(self) -> None: ...

    def unwritable(self) -> StoreFault | None:
        """Why a write now would fail or vanish (a full, read-only or vanished store), or
        None when it can take one; cheap, asked before every write pass."""

    def transaction(self) -> Any:
        """One write transaction (a context manager); the scheduler wraps a whole pass in it."""

    def schema_version(self) -> int: ...

    def migrate(self) -> None: ...

    # -- the queue: what the scheduler does on every pass ------------------------------------

    def enqueue(
        self,
        pipeline: str,
        stage: str,
        items: Sequence[tuple[str, dict[str, Any] | None]],
        now: float,
        channel_for: Any = None,  # Callable[[dict], str]: the stage's channel for an item
        force: bool = False,
    ) -> Enqueued:
        """Add items at `stage`, by key: new ones are queued, finished ones start again."""

    def claim(
        self,
        pipeline: str,
        stage: str,
        limit: int,
        now: float,
        describe: Any,  # Callable[[int, str, dict], NewRun]: fills a run's fields per item
        blocked_channels: Sequence[str] = (),
        only_channel: str | None = None,
    ) -> list[tuple[Claimed, NewRun]]:
        """Mark up to `limit` ready items running and write their run rows, atomically."""

    def unclaim(self, runs: Sequence[tuple[str, int]]) -> None:
        """(run id, item id) of claims never sent to a worker (items handed ahead that a halt,
        a pause or a stop kept back), given back untouched: their run rows deleted, their
        items queued again at the attempt they had, last run as before the claim."""

    def finish(
        self, finished: Iterable[FinishedRun], progress: dict[str, tuple[float | None, str | None]]
    ) -> None:
        """Write finished runs, their items' next states and live progress in one commit."""

    def record_processes(self, started: Sequence[tuple[str, int, int, int]]) -> None:
        """(run id, pid, pgid, start time) of worker processes just started, in one commit: if the
        daemon dies, the next one can still find them."""

    def running_processes(self) -> list[tuple[int, int, int]]:
        """(pid, pgid, start time) of the worker processes of runs left `running`."""

    def recover_interrupted(
        self, now: float, hold_stages: set[tuple[str, str]], reason: str
    ) -> list[Recovered]: ...

    def next_ready_at(
        self,
        stages: Sequence[tuple[str, str]],
        blocked_channels: Sequence[str] = (),
        only_channel: str | None = None,
    ) -> float | None:
        """The earliest time an item of these stages becomes claimable, leaving out the
        items of blocked channels (or, with `only_channel`, those of any other)."""

    def pending_count(
        self,
        blocked_channels: Iterable[str] = (),
        blocked_stages: Iterable[str] = (),
        blocked_pipelines: Iterable[str] = (),
    ) -> int:
        """Items with work still ahead: queued, running or retrying, and not held back."""

    # -- halts and pauses --------------------------------------------------------------------

    def active_holds(self) -> list[Hold]: ...

    def add_hold(self, hold: dict[str, Any]) -> Hold | None:
        """Insert an active hold; None when the same one is already active."""

    def clear_holds(self, target: str, kinds: Sequence[str], who: str, now: float) -> list[Hold]:
        """Clear the active holds of `kinds` on `target`; returns the ones cleared."""

    def holds_on(self, targets: Iterable[str], since: float) -> list[Hold]:
        """Holds on these targets that were active at some point since `since`."""

    def update_hold(self, hold_id: int, **fields: Any) -> None: ...

    def halt_cleared_at(self, scope: str, target: str) -> float | None:
        """When a halt on this target was last cleared (by a person, a probe or a new day)."""

    def hold(self, hold_id: int) -> Hold | None: ...

    # -- the runs, read back -----------------------------------------------------------------

    def count_runs(self, pipeline: str, stage: str, status: str, since: float) -> int: ...

    def earlier_success(
        self, item_id: int, pipeline: str, stage: str, fingerprint: str
    ) -> tuple[str, str] | None:
        """(id, data it merged into its item) of the item's latest run that already succeeded
        at this stage on the same input (the fingerprint holds the item's key: no other
        item's run has it). Runs recorded before runs kept their data (schema 7) do not
        count: what they produced cannot be given back."""

    def internal_failures_in_a_row(self, item_id: int, current_run: str, limit: int) -> int:
        """How many of the item's latest runs (up to `limit`, not `current_run`) in a row failed
        for an internal reason: an item the daemon cannot record stops there."""

    def label_failures(
        self, channel: str, label: str, since: float, samples: int
    ) -> tuple[int, list[str]]:
        """How many runs failed with this label on this channel since `since`, and the latest few
        error texts."""

    def last_run_statuses(
        self, pipeline: str, stage: str, count: int, since: float | None = None
    ) -> list[tuple[str, str]]:
        """(status, error) of the stage's last `count` runs finished (after `since`),
        newest first."""

    def cost_since(self, pipeline: str, stages: Sequence[str], since: float) -> float:
        """The pipeline's summed run cost since `since`: one index range per stage."""

    def add_replay(self, run: dict[str, Any]) -> str:
        """A finished run that `pipewarden replay --record` ran: its fields by column name,
        `replay_of` (the run it replayed) among them; returns the id the store gave it. No
        item changes; the reads that count production work (the guard's, budgets,
        checkpoints, durations, charts) leave it out."""

    def running_runs(self) -> list[RunningRun]:
        """Runs in progress (claimed, their items running), oldest first."""

    def recent_durations(self, pipeline: str, stage: str, count: int) -> list[float]:
        """Durations of the stage's last `count` successful runs."""

    def ended_runs(
        self, pipeline: str, stage: str, since: float
    ) -> list[tuple[int, str, int, int]]:
        """(slot, outcome, duration bucket, runs) of the stage's runs that ended in the
        slots from `since`'s on, as store/rollup.py counts them."""

    def recent_runs(
        self, limit: int, stage: str | None = None, status: str | None = None,
        pipeline: str | None = None,
    ) -> list[Run]:  # fmt: skip
        """The latest `limit` runs, newest first, of a stage, status or pipeline if given."""

    def runs_with_prefix(self, prefix: str, limit: int = 20) -> list[Run]: ...

    def item(self, pipeline: str, key: str) -> Item | None: ...

    def item_runs(self, item_id: int) -> list[Run]: ...

    def pipelines_of(self, key: str) -> list[str]:
        """The pipelines that have an item with this key."""

    def item_channels(self) -> list[str]:
        """Every channel an item has now."""

    def item_labels(self) -> list[str]:
        """The labels of the items retrying, failed or ignored now (what `retry --label`
        picks among), sorted."""

    # -- many items at once ------------------------------------------------------------------

    def defer_channel(self, channel: str, until: float, now: float, label: str) -> int:
        """Ready items of a closed channel wait, deferred (not failed), until it opens."""

    def requeue_by_label(
        self, label: str, now: float, pipeline: str | None = None, stage: str | None = None,
        since: float | None = None, dry_run: bool = False, force: bool = False,
        before: float | None = None, limit: int | None = None,
    ) -> int:  # fmt: skip
        """Failed and retrying items with `label` back in the queue, attempts reset; with
        `before`, only those whose last change was before it (a retry in chunks never takes
        an item twice); at most `limit` of them."""

    def change_held(
        self, pipeline: str, keys: Sequence[str] | None, now: float,
        fail_reason: str | None = None, dry_run: bool = False,
    ) -> HeldChange:  # fmt: skip
        """Held items back in the queue at the attempt they were held at, or, with
        `fail_reason`, failed with it (label FAILED_BY_A_PERSON). `keys` None: every held
        item of the pipeline."""

    def held_count(self, label: str, pipeline: str | None = None, stage: str | None = None) -> int:
        """Held items whose last label is `label` (a `retry` by label does not take them)."""

    def stuck_items(self, min_requeues: int) -> list[tuple[str, str, str, int]]:
        """(pipeline, stage, label, count): requeued by hand that often, and failing still."""

    # -- daemon facts and the books ----------------------------------------------------------

    def set_meta(self, key: str, value: Any) -> None: ...

    def get_meta(self, key: str) -> Any: ...

    def prune_batch(self, older_than: float, limit: int = ...) -> int:
        """Delete up to `limit` finished runs that ended before `older_than`."""

    def backup(self, target: Path, on_progress: Any = None) -> None:
        """A consistent copy while others write, from one snapshot; `on_progress(bytes
        copied, bytes in all)`, a Callable[[int, int], None], as it goes."""

    def vacuum(self) -> None: ...

    def export_runs(self, since: float | None) -> Iterator[dict[str, Any]]: ...

    # -- the notification outbox -------------------------------------------------------------

    def add_notification(
        self, key: str, event: str, target: str, title: str, body: str, now: float, due: float
    ) -> None: ...

    def sent_recently(self, key: str, target: str, since: float) -> bool:
        """A notification with this key was queued for `target` since `since`."""

    def next_notification_due(self, targets: Sequence[str]) -> float | None:
        """When the next undelivered notification to one of `targets` is due."""

    def due_notifications(self, now: float, stopping: bool) -> list[Outbox]:
        """Undelivered rows due now (at a stop: also every one never tried), oldest first."""

    def unsent(self, target: str, events: Sequence[str]) -> list[Outbox]:
        """Every undelivered row of these events for `target`, whenever due."""

    def mark_sent(self, ids: Sequence[int], now: float) -> None: ...

    def mark_failed(
        self, ids: Sequence[int], attempts: int, next_try_at: float, error: str
    ) -> None: ...

    def outbox_backlog(self) -> int: ...

    def run_facts(self, run_ids: Sequence[str]) -> dict[str, tuple[str, str, str, str, str]]:
        """run id -> (pipeline, stage, channel, label, item key), for the runs that exist."""

    # -- the status tree's aggregates --------------------------------------------------------

    def state_counts(self, since_24h: float, since_1h: float, pipeline: str | None = None) -> list:
        """(pipeline, stage, state, channel, total, changed in 24h, changed in 1h)."""

    def label_counts(self, since_24h: float, since_1h: float, pipeline: str | None = None) -> list:
        """(pipeline, stage, state, group, label, total, in 24h, in 1h) of labelled states."""

    def item_totals(self) -> dict[tuple[str, str, str], int]:
        """(pipeline, stage, state) -> items, from the trigger-kept counts."""

    def deferred_reasons(
        self, pipeline: str, stage: str, since_24h: float, since_1h: float
    ) -> list[tuple[str | None, int, int, int, float | None]]:
        """(label, items, changed in 24h, in 1h, soonest wake) of the stage's deferred items."""

    # -- re-bucketing history (issue 15) -----------------------------------------------------

    def failure_texts(self, since: float | None) -> list[FailureText]:
        """The failures the rules judged (failed or timed out, not the daemon's own) that
        started since `since`, one row per (pipeline, stage, text, exception type, group,
        label) with its count of runs."""

    def reclassify(
        self, changes: Sequence[Relabel], since: float | None, rules_version: str, now: float
    ) -> tuple[int, int]:
        """Re-bucket the failures since `since` of each changed text (the first classification
        and rules version kept beside the new), and relabel the items they left: (runs,
        items) changed."""

    def reclassified_counts(self) -> dict[tuple[str, str, str, str, str], int]:
        """(pipeline, stage, state, group, label) -> retrying or failed items carrying a label
        that a re-bucketing gave their last run."""

    # -- lookups for the page, the CLI and dry runs; the audit lines -------------------------

    def add_audit(self, who: str, action: str, target: str, detail: str, now: float) -> None:
        """One audit line, inside the caller's transaction when there is one."""

    def audit_lines(self, limit: int) -> list[tuple[int, float, str, str, str, str]]:
        """(id, at, who, action, target, detail) of the newest `limit` lines, newest first."""

    def find_runs(
        self, wanted: RunFilter, columns: Sequence[str], error_shown: int, limit: int
    ) -> list[tuple]:
        """`columns` of the runs `wanted` picks, newest first, then whether a later attempt
        succeeded (0/1); `limit` rows at most, each `error` cut at `error_shown` characters."""

    def later_ok(self, run_id: str) -> bool:
        """Whether the failed run `run_id` was followed by an ok run of its item's stage."""

    def held_items(
        self, pipeline: str | None, limit: int
    ) -> tuple[list[tuple[str, str, str, int, str | None, float]], dict[str, int]]:
        """(pipeline, key, stage, attempt, label, since) of held items, oldest first, and
        how many each pipeline holds."""

    def halts_between(
        self, targets: set[str], any_channel: bool, start: float
    ) -> list[tuple[str, str | None, str | None, float, float | None]]:
        """(target, label, reason, created_at, cleared_at) of the halts on `targets` (and on
        every channel, `any_channel`) active at some time since `start`, oldest first."""

    def labelled_failures(
        self, label: str, pipeline: str | None, stage: str | None, since: float | None,
        sample: int,
    ) -> tuple[int, list[tuple[str, str, str, str]]]:  # fmt: skip
        """How many failed or retrying items have `label` (as requeue_by_label picks them),
        and (pipeline, stage, key, state) of the first `sample`."""

    def prunable_runs(
        self, older_than: float, sample: int
    ) -> tuple[int, list[tuple[str, str, str, str, str]]]:
        """How many runs `prune` would delete, and (id, pipeline, stage, key, status) of the
        first `sample`."""

    def known_keys(self, pipeline: str, keys: Sequence[str]) -> dict[str, str]:
        """Of `keys`, those the pipeline has an item for, with the item's state."""

    def runs_matching(
        self, limit: int | None, pipeline: str | None, stage: str | None, status: str | None,
        since: float | None,
    ) -> list[Run]:  # fmt: skip
        """The latest `limit` runs (None: every one since `since`) of a pipeline, stage or
        status if given, newest first."""

    def runs_started_from(self, after: float) -> list[Run]:
        """Runs started at or after `after`, oldest first."""

    def runs_by_id(self, run_ids: Sequence[str]) -> list[Run]: ...

    def runs_started_since(self, since: float) -> int:
        """How many runs started at or after `since`."""

    # -- templates of unmatched failures, and the rules proposed for them (issue 15) --------

    def templates(self) -> list[tuple[int, str, int]]:
        """(id, template, count) of every stored template, oldest first."""

    def merge_template(self, into: int, gone: int) -> None:
        """The members of template `gone` (which the miner merged) now belong to `into`."""

    def add_template(self, template: str, count: int, seen: float) -> int:
        """A new template; its id."""

    def update_template(self, template_id: int, template: str, count: int, seen: float) -> None: ...

    def add_template_runs(self, members: Sequence[tuple[str, int, str, str, float]]) -> None:
        """(run id, template id, pipeline, stage, seen at) of runs a template now holds."""

    def frequent_templates(self, since: float, min_count: int) -> list[tuple[int, str]]:
        """(id, template) of templates with at least `min_count` members seen since `since`."""

    def latest_templates(self, limit: int) -> list[int]:
        """The ids of the `limit` templates seen most recently."""

    def template_errors(self, template_id: int, limit: int) -> list[str | None]:
        """The errors of the template's latest `limit` member runs still stored, newest first."""

    def template_counts(self, template_id: int, since: float) -> tuple[int, int, dict[str, int]]:
        """The template's members in all, those seen since `since`, and per pipeline/stage."""

    def current_proposal(self, template_id: int) -> tuple[int, str, str] | None:
        """(id, template, state) of the template's latest proposal not superseded."""

    def add_proposal(self, fields: dict[str, Any]) -> None:
        """A new proposal: `fields` are its columns (names from code, never from input)."""

    def update_proposal(self, proposal_id: int, fields: dict[str, Any]) -> None:
        """Set the proposal's columns `fields` (names from code, never from input)."""

    def proposals(self, state: str | None = None) -> list[tuple]:
        """The columns of every proposal (in `state`), oldest first (sqlite/proposals.py)."""

    def proposal(self, proposal_id: int) -> tuple | None: ...
