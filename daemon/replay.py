"""`pipewarden replay RUN_ID`: a recorded run's worker run again in the foreground, on the
input that run had, and its result judged by the rules as they are now.

The worker is started as the daemon starts it (the same argv, cwd, stage environment and
PIPEWARDEN_* variables, a process per item or one pool process, in its own process group)
and runs under the stage's timeout; at the timeout, or whatever way the replay ends, its
whole process tree goes, as containment ends an attempt's. Its stdout and stderr reach the
terminal as they come. The request it reads is the run's own: item key, run id, attempt
and trace. PIPEWARDEN_REPLAY names the replayed run, so a worker may tell a replay from
production work (and skip a side effect that must not repeat).

The input is the item's data as it was when the run started: the item's data now, with
what the item's later runs merged into it taken back out (each key as an earlier run left
it). The run's input fingerprint confirms it; where the item's data, or the stage's
config or code, changed since, the replay says it could not confirm the input and runs on
the data as rebuilt.

A replay never goes through a daemon's slots and never changes an item. `--record` keeps
it as a run whose `replay_of` names the replayed run: shown by `why`, `runs tail` and
`runs show`, left out of everything that counts production work (the guard's windows,
budgets, checkpoints, durations, charts).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

from pipewarden.classifier import Classification, Classifier
from pipewarden.config import Config, Stage
from pipewarden.containment import containment
from pipewarden.errors import UsageError
from pipewarden.fingerprint import input_fingerprint
from pipewarden.inputs import encode_json
from pipewarden.outcomes import Decision, decide
from pipewarden.pipes import StderrReader, StdoutReader
from pipewarden.protocol import Verdict, WorkerReport, error_text
from pipewarden.rules import RuleSet
from pipewarden.store import Run, Storage
from pipewarden.types import RunStatus
from pipewarden.workers import Job, PoolWorker, ProcessWorker

REPLAY_VARIABLE = "PIPEWARDEN_REPLAY"  # set to the replayed run's id in the worker's env
_GONE = object()  # a key the item did not have yet


@dataclass(frozen=True)
class ReplayInput:
    data: dict[str, Any]
    confirmed: bool  # the run's input fingerprint matches this data
    note: str  # how the data was found, for the person replaying


@dataclass(frozen=True)
class Replayed:
    """What the replay did, and what the rules in force make of it."""

    run: Run  # the replayed run
    stage: Stage
    input: ReplayInput
    report: WorkerReport
    classification: Classification | None
    decision: Decision
    started_at: float
    duration_s: float
    rules_version: str


def find_run(store: Storage | None, prefix: str) -> Run:
    """The one run whose id starts with `prefix`; UsageError (exit 2) otherwise."""
    prefix = prefix.strip().lower()
    if len(prefix) < 4 and not prefix.isdigit():  # a run's id is a number since schema 13
        raise UsageError("give at least 4 characters of the run id")
    matches = store.runs_with_prefix(prefix, limit=2) if store else []
    if not matches:
        raise UsageError(f"no run with id starting '{prefix}' (see `pipewarden runs tail`)")
    if len(matches) > 1:
        raise UsageError(f"'{prefix}' matches more than one run: give more characters of its id")
    return matches[0]


def stage_of(config: Config, run: Run) -> Stage:
    """The run's stage as the config has it now; UsageError where it has it no more."""
    pipeline = config.pipelines.get(run.pipeline)
    try:
        if pipeline is None:
            raise KeyError(run.pipeline)
        return pipeline.stage(run.stage)
    except KeyError:
        raise UsageError(
            f"run {run.id[:8]} ran stage {run.pipeline}/{run.stage}, which {config.path} no"
            " longer has: nothing to replay it with"
        ) from None


def replay_input(store: Storage, run: Run, stage: Stage, code_digest: str) -> ReplayInput:
    """The data the run started with (see the module's docstring)."""
    item = store.item(run.pipeline, run.item_key)
    if item is None or item.id != run.item_id:
        raise UsageError(f"the item of run {run.id[:8]} is gone: nothing to replay it on")
    current = json.loads(item.data or "{}")
    runs = [r for r in store.item_runs(item.id) if r.replay_of is None or r.id == run.id]
    at = next(n for n, r in enumerate(runs) if r.id == run.id)
    earlier = [_merged(r) for r in runs[:at]]
    rebuilt = dict(current)
    for key in {key for later in runs[at:] for key in _merged(later)}:
        before = next((merged[key] for merged in reversed(earlier) if key in merged), _GONE)
        if before is _GONE:
            rebuilt.pop(key, None)
        else:
            rebuilt[key] = before

    def matches(data: dict[str, Any]) -> bool:
        found = input_fingerprint(
            run.pipeline, run.item_key, data, run.config_hash or "", run.code_ref, code_digest
        )
        # a run recorded before schema 13 kept 32 hex digits, of which these are the first
        return run.input_fingerprint is not None and run.input_fingerprint[:16] == found

    for data in (rebuilt, current):
        if matches(data):
            return ReplayInput(data, True, "the data the run had (its input fingerprint matches)")
    why = (
        "the stage's config changed since"
        if run.config_hash and run.config_hash != stage.config_hash
        else "the item's data, or the stage's code, changed since"
    )
    return ReplayInput(
        rebuilt, False,
        f"the item's data with what its later runs merged taken back out — not confirmed by"
        f" the run's input fingerprint ({why})",
    )  # fmt: skip


def _merged(run: Run) -> dict[str, Any]:
    """What an ok (or skipped) run merged into its item."""
    if run.status not in (RunStatus.OK, RunStatus.SKIPPED) or not run.data_out:
        return {}
    try:
        merged = json.loads(run.data_out)
    except ValueError:
        return {}
    return merged if isinstance(merged, dict) else {}


def replay(
    config: Config, ruleset: RuleSet, run: Run, stage: Stage, found: ReplayInput
) -> Replayed:
    """Run the worker on `found` in the foreground, then judge what it did."""
    job = Job(run.id, run.item_key, run.attempt, found.data, run.trace_id or uuid.uuid4().hex)
    started_at = time.time()
    started = time.monotonic()
    containment.enable(config.state_dir)  # its escaped children come back to be ended too
    try:
        report = asyncio.run(_run_worker(_replaying(stage, run.id), job))
    finally:
        containment.disable()
    duration = time.monotonic() - started
    classification = None
    if report.verdict in (Verdict.ERROR, Verdict.IGNORE):
        classification = Classifier(ruleset).classify(
            error_text(report.error or report.ignore_reason) or "",
            pipeline=stage.pipeline, stage=stage.name, exception_types=report.exception_types,
        )  # fmt: skip
    pipeline = config.pipeline(stage.pipeline)
    decision = decide(
        pipeline, stage, run.attempt, report, classification, time.time(), random.Random()
    )
    return Replayed(
        run, stage, found, report, classification, decision, started_at, duration, ruleset.version
    )


def _replaying(stage: Stage, run_id: str) -> Stage:
    """The stage with PIPEWARDEN_REPLAY in its workers' environment."""
    return replace(stage, env=(*stage.env, (REPLAY_VARIABLE, run_id)))


async def _run_worker(stage: Stage, job: Job) -> WorkerReport:
    worker: ProcessWorker | PoolWorker = (
        _EchoedPoolWorker(stage) if stage.mode == "pool" else _EchoedProcessWorker(stage)
    )
    try:
        return await worker.run(job, lambda progress: None)  # progress lines are shown as output
    except OSError as exc:  # the worker could not even start (missing command, ...)
        return WorkerReport(Verdict.ERROR, error=f"cannot start worker: {exc}")
    finally:
        await worker.stop()


def _echo(stream: Any, data: bytes) -> None:
    stream.flush()
    stream.buffer.write(data)
    stream.buffer.flush()


class _EchoedStdout(StdoutReader):
    def data_received(self, data: bytes) -> None:
        _echo(sys.stdout, data)
        super().data_received(data)


class _EchoedStderr(StderrReader):
    def data_received(self, data: bytes) -> None:
        _echo(sys.stderr, data)
        super().data_received(data)


class _EchoedProcessWorker(ProcessWorker):
    stdout_reader = _EchoedStdout
    stderr_reader = _EchoedStderr


class _EchoedPoolWorker(PoolWorker):
    stdout_reader = _EchoedStdout
    stderr_reader = _EchoedStderr


def replay_record(replayed: Replayed, code_ref: str | None, code_digest: str) -> dict[str, Any]:
    """The recorded replay's run row (for Storage.add_replay). Its cost is not kept: a
    budget counts production spending."""
    run, stage, report, c = replayed.run, replayed.stage, replayed.report, replayed.classification
    data = replayed.input.data
    decision = replayed.decision
    ok = decision.run_status is RunStatus.OK
    return {
        "pipeline": run.pipeline, "stage": run.stage,
        "item_id": run.item_id, "item_key": run.item_key, "attempt": run.attempt,
        "channel": stage.channel_for(data), "status": str(decision.run_status),
        "started_at": replayed.started_at,
        "finished_at": replayed.started_at + replayed.duration_s,
        "duration_s": replayed.duration_s, "exit_code": report.exit_code,
        "signal": report.signal, "pid": report.pid, "pgid": report.pgid,
        "proc_start": report.proc_start, "error": decision.error,
        "error_type": report.error_type, "traceback": report.traceback,
        "output": "\n".join(report.output) or None,
        "group_name": c.group.value if c else None, "label": c.label if c else None,
        "category": c.category if c else None, "type": c.type if c else None,
        "rule_id": c.rule_id if c else None,
        "rules_version": replayed.rules_version if c else None,
        "input_fingerprint": input_fingerprint(
            run.pipeline, run.item_key, data, stage.config_hash, code_ref, code_digest
        ),
        "code_ref": code_ref, "config_hash": stage.config_hash, "rows_in": 1,
        "rows_out": report.rows_out, "trace_id": run.trace_id,
        "progress": 1.0 if ok else None,
        "data_out": encode_json(report.data or {}) if ok else None,
        "replay_of": run.id,
    }  # fmt: skip
