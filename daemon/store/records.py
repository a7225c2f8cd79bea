"""What the scheduler, the guard and the CLI exchange with the store: plain records, the
same whichever backend keeps them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from pipewarden.types import ItemState, RunStatus

FAILURES = "failures"  # the status filter for runs that failed or timed out
FAILED_STATUSES = ("failed", "timed_out")  # the statuses FAILURES is

FAILED_BY_A_PERSON = "Failed by a person"  # the label of a held item a person failed


@dataclass(frozen=True)
class Enqueued:
    new: list[str]  # keys not known before
    restarted: list[str]  # finished items started again at the first stage
    unchanged: list[str]  # still queued, running or waiting: left as they were
    held: list[str]  # held for a person (release or fail them): left as they were
    data_replaced: list[str]  # of `restarted`, those whose data the data given replaced


@dataclass(frozen=True)
class NewRun:
    """What the scheduler knows of a run before its worker starts. The store names the
    run when it records it (`claim` returns it with `run_id` and `trace_id` given): a
    compact, time-ordered key of the store's choosing, a string to everyone else."""

    item_id: int
    channel: str
    input_fingerprint: str
    config_hash: str
    code_ref: str | None
    run_id: str = ""
    trace_id: str = ""


def trace_id_of(run_number: int, started_at: float) -> str:
    """The W3C trace id of a run, derived rather than stored: its start in microseconds
    and its number, 16 hex digits each (unique across stores unless two runs of the same
    number start in the same microsecond). The SQLite schema computes the same in SQL."""
    return f"{int(started_at * 1_000_000) & 0xFFFFFFFFFFFFFFFF:016x}{run_number:016x}"


def span_id_of(run_id: str) -> str:
    """The W3C span id of a run: its number in 16 hex digits (a run recorded before run
    ids were numbers, schema 13, has a uuid: its first 16 hex digits)."""
    return f"{int(run_id):016x}" if run_id.isdigit() else run_id[:16]


@dataclass(frozen=True)
class Claimed:
    item_id: int
    key: str
    data: dict[str, Any]
    attempt: int  # this run's attempt number (1 for the first)
    force: bool = False  # a person asked for the work to be done again


@dataclass(slots=True)  # not frozen: one is built per run, and a frozen one costs 4x as much
class FinishedRun:
    """A run's end and the item's next state, written together (never changed once built)."""

    run_id: str
    item_id: int
    status: RunStatus
    pipeline: str
    stage: str
    channel: str | None
    finished_at: float
    duration_s: float
    item_stage: str
    item_state: ItemState
    item_data: str | None  # JSON; None: the item keeps the data it has
    item_attempt: int
    item_ready_at: float | None
    item_channel: str | None  # the channel at item_stage
    item_force: bool = False  # kept while the item retries at the same stage
    exit_code: int | None = None
    signal: int | None = None
    pid: int | None = None
    pgid: int | None = None
    proc_start: int | None = None
    error: str | None = None
    error_type: str | None = None
    traceback: str | None = None
    output: str | None = None
    group_name: str | None = None
    label: str | None = None
    category: str | None = None
    type: str | None = None
    rule_id: str | None = None
    rules_version: str | None = None
    rows_out: int | None = None
    cost: float | None = None
    progress: float | None = None
    message: str | None = None
    data_out: str | None = None  # JSON: what an ok run merged into the item
    probe_of: int | None = None  # the halt this run probed


class RunningRun(NamedTuple):
    """A run in progress, as the status tree and `runs --follow` show it: the few columns
    they read (a whole Run row, its generated columns computed, took ten times as long for
    the hundred runs a busy daemon has claimed)."""

    id: str
    pipeline: str
    stage: str
    item_key: str
    attempt: int
    channel: str | None
    started_at: float
    progress: float | None
    message: str | None


@dataclass(frozen=True)
class HeldChange:
    """What `release` or `fail` did to held items."""

    changed: list[str]  # the keys released (or failed)
    not_held: dict[str, str | None]  # of the keys given, those not held: key -> state (None: none)


@dataclass(frozen=True)
class Recovered:
    run_id: str
    pipeline: str
    stage: str
    item_key: str
    held: bool


@dataclass(frozen=True)
class FailureText:
    """Stored failures that share a text and a classification (issue 15: a backtest
    classifies each text once, however many runs repeat it)."""

    pipeline: str
    stage: str
    error: str
    error_type: str | None
    group: str
    label: str
    runs: int


@dataclass(frozen=True)
class Relabel:
    """What the current rules say of the failures of one `FailureText`."""

    text: FailureText
    group: str
    label: str
    category: str
    type: str
    rule_id: str | None


@dataclass(frozen=True)
class RunFilter:
    """Which runs the page lists; None is any. `before` = (started_at, id) of the last run
    seen; `status` FAILURES is failed or timed out."""

    pipeline: str | None = None
    stage: str | None = None
    status: str | None = None
    label: str | None = None
    since: float | None = None
    until: float | None = None
    before: tuple[float, str] | None = None
