"""`pipewarden replay RUN_ID`: a run's worker again, in the foreground, judged by the rules
in force (see replay.py)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from pipewarden.cli.shared import (
    COMMON,
    EXIT_FAILURE,
    EXIT_OK,
    add_command,
    load_config,
    open_store,
    who,
)
from pipewarden.errors import UsageError

if TYPE_CHECKING:
    from pipewarden.config import Stage
    from pipewarden.replay import Replayed
    from pipewarden.store import Run

# Run statuses of a replay whose worker did not fail: the command exits 0 (`git bisect run`).
_NOT_FAILED = ("ok", "ignored", "deferred", "skipped")


def register(commands: argparse._SubParsersAction) -> None:
    replay = add_command(
        commands, "replay", _cmd_replay,
        "run a recorded run's worker again in the foreground, on the input it had, and say"
        " how the current rules classify the result", COMMON,
    )  # fmt: skip
    replay.add_argument("run_id", metavar="RUN_ID", help="the run's id (or its first characters)")
    replay.add_argument(
        "--record", action="store_true",
        help="keep the replay as a run marked replay (shown by `why` and `runs`; never counted"
        " by status, halts, budgets or checkpoints)",
    )  # fmt: skip
    replay.add_argument(
        "--force", action="store_true",
        help="replay a stage whose side effects must not repeat (on_interrupt: hold) anyway",
    )  # fmt: skip


def _cmd_replay(args: argparse.Namespace) -> int:
    import time

    from pipewarden import audit
    from pipewarden.daemon import detect_code_ref
    from pipewarden.reload import stage_code
    from pipewarden.replay import find_run, replay, replay_input, replay_record, stage_of
    from pipewarden.rules import load_rules

    config = load_config(args)
    store = open_store(config, must_exist=True, read_only=not args.record)
    try:
        run = find_run(store, args.run_id)
        assert store is not None
        stage = stage_of(config, run)
        if stage.on_interrupt == "hold" and not args.force:
            raise UsageError(
                f"{stage.qualified_name} does what must not be done twice (on_interrupt: hold):"
                " a replay does it again — add --force to replay it anyway (its worker sees"
                " PIPEWARDEN_REPLAY and may skip the side effect)"
            )
        code = stage_code(config).get(stage.qualified_name)
        code_digest = code.digest if code else ""
        found = replay_input(store, run, stage, code_digest)
        ruleset = load_rules(config.rule_paths, config.path.parent)
        for line in _header(run, stage, found.note):
            print(line, flush=True)
        try:
            replayed = replay(config, ruleset, run, stage, found)
        except KeyboardInterrupt:  # the worker's whole tree was ended on the way out
            print("replay interrupted: the worker and all it started were stopped",
                  file=sys.stderr)  # fmt: skip
            return EXIT_FAILURE
        print("\n".join(_result_lines(replayed)), flush=True)
        if args.record:
            row = replay_record(replayed, detect_code_ref(config.path.parent), code_digest)
            with store.transaction():  # the run and its audit line, together
                recorded = store.add_replay(row)
                target = f"run {run.id[:8]} at {stage.qualified_name}"
                detail = f"recorded as run {recorded[:8]}: {row['status']}"
                audit.record(store, who(), "replay", target, detail, time.time())
            shown = f"`pipewarden runs show {recorded[:8]}`"
            print(f"\nrecorded as run {recorded}, marked a replay ({shown})")
    finally:
        if store is not None:
            store.close()
    return EXIT_OK if replayed.decision.run_status in _NOT_FAILED else EXIT_FAILURE


def _header(run: Run, stage: Stage, note: str) -> list[str]:
    from pipewarden.inputs import escape_controls
    from pipewarden.render import format_duration

    worker = f"python {stage.python}" if stage.python else " ".join(stage.command or ())
    return [
        f"replaying run {run.id[:8]}: {stage.qualified_name} on '{escape_controls(run.item_key)}',"
        f" attempt {run.attempt} (timeout {format_duration(stage.timeout_s)})",
        f"worker:  {escape_controls(worker)} ({stage.mode} mode) in {stage.cwd}",
        f"input:   {note}",
        "--- the worker's output ---",
    ]


def _result_lines(replayed: Replayed) -> list[str]:
    """The result in `runs show`'s words, what the rules advise, and what the daemon would
    do next; the run's first judgement beside it where the rules now say otherwise."""
    from pipewarden.advising import advice_lines
    from pipewarden.inputs import escape_controls
    from pipewarden.render import format_duration

    report, decision, c = replayed.report, replayed.decision, replayed.classification
    fields = {
        "status": decision.run_status, "duration_s": format_duration(replayed.duration_s),
        "exit_code": report.exit_code, "signal": report.signal, "error": decision.error,
        "error_type": report.error_type,
        "group_name": c.group.value if c else None, "label": c.label if c else None,
        "category": c.category if c else None, "type": c.type if c else None,
        "rule_id": (c.rule_id or "none matched") if c else None,
        "rules_version": replayed.rules_version if c else None,
        "cost": report.cost, "rows_out": report.rows_out,
    }  # fmt: skip
    lines = ["--- the worker is done ---"]
    for name, value in fields.items():
        if value is not None:
            text = escape_controls(str(value).strip().splitlines()[0] if value != "" else "")
            lines.append(f"{name:<18}{text}")
    if report.data and decision.run_status == "ok":
        import json

        lines.append(f"{'data_out':<18}{escape_controls(json.dumps(report.data))}")
    if c is not None and (c.advice or c.runbook):
        lines += advice_lines({"advice": c.advice, "runbook": c.runbook})
    lines.append(f"{'next':<18}{decision.note} (the daemon's decision, had this been the run)")
    run = replayed.run
    then = f" [{run.group_name} · {run.label}]" if run.label else ""
    now = f" [{c.group.value} · {c.label}]" if c else ""
    if run.status != decision.run_status or then != now:
        if then:
            then += f" by {run.rule_id}" if run.rule_id else ""
            then += f" (rules {run.rules_version or '?'})"
        lines.append(f"{'was':<18}{run.status}{then}")
    return lines
