"""Shared vocabulary: the states of an item and a run, and the groups a rule gives."""

from __future__ import annotations

from enum import StrEnum

PipelineName = str
StageName = str
ItemKey = str
RunId = str


class ItemState(StrEnum):
    QUEUED = "queued"  # waiting for a free slot at its stage
    RUNNING = "running"  # a run of its current stage is in flight
    RETRYING = "retrying"  # failed retriably; claimable again at ready_at
    DEFERRED = "deferred"  # asked to wait (not a failure); claimable again at ready_at
    HELD = "held"  # interrupted at a stage whose side effects must not repeat; a person decides
    FAILED = "failed"  # terminal, or retries exhausted; the last label is kept
    IGNORED = "ignored"  # an expected filter, not a fault
    DONE = "done"  # passed its last stage


# States the scheduler may claim once ready_at has passed.
CLAIMABLE_STATES = (ItemState.QUEUED, ItemState.RETRYING, ItemState.DEFERRED)
# States that still have work ahead of them (used by --until-idle).
PENDING_STATES = (ItemState.QUEUED, ItemState.RUNNING, ItemState.RETRYING)


class RunStatus(StrEnum):
    RUNNING = "running"
    OK = "ok"
    FAILED = "failed"  # the worker reported or exited with an error
    TIMED_OUT = "timed_out"  # the watchdog killed it
    INTERRUPTED = "interrupted"  # the daemon stopped or died while it ran
    IGNORED = "ignored"
    DEFERRED = "deferred"
    SKIPPED = "skipped"  # this input already succeeded at this stage: not run again


class Group(StrEnum):
    RETRIABLE = "retriable"
    TERMINAL = "terminal"
    IGNORE = "ignore"
    DEFER = "defer"
    UNKNOWN = "unknown"  # no rule matched: retried up to max_attempts, then failed
