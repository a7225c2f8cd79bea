"""Recorded runs: the latest (`runs tail`), one in full (`runs show`)."""

from __future__ import annotations

import argparse

from pipewarden.cli.shared import (
    AS_JSON,
    COMMON,
    EXIT_OK,
    add_command,
    add_group,
    load_config,
    open_store,
    print_json,
)
from pipewarden.errors import PipewardenError, UsageError
from pipewarden.types import RunStatus

RUN_STATUSES = tuple(status.value for status in RunStatus)


def _run_status(text: str) -> str:
    if text not in RUN_STATUSES:
        raise argparse.ArgumentTypeError(
            f"no status '{text}' — known statuses: {', '.join(RUN_STATUSES)}"
        )
    return text


def register(commands: argparse._SubParsersAction) -> None:
    _, runs_commands = add_group(commands, "runs", "recorded runs (attempts)")
    tail = add_command(runs_commands, "tail", _cmd_runs_tail, "the latest runs", COMMON, AS_JSON)
    tail.add_argument("-n", type=int, default=20, help="how many (default 20)")
    tail.add_argument("--pipeline")
    tail.add_argument("--stage")
    tail.add_argument("--status", type=_run_status, help=", ".join(RUN_STATUSES))
    show = add_command(
        runs_commands, "show", _cmd_runs_show, "everything about one run", COMMON, AS_JSON
    )
    show.add_argument("run_id", metavar="ID_PREFIX")


def _cmd_runs_tail(args: argparse.Namespace) -> int:
    from pipewarden.render import run_as_dict, runs_table

    store = open_store(load_config(args), must_exist=True, read_only=True)
    runs = store.recent_runs(args.n, args.stage, args.status, args.pipeline) if store else []
    if args.json:
        print_json([run_as_dict(run) for run in runs])
    else:
        print("\n".join(runs_table(reversed(runs))))
    return EXIT_OK


def _cmd_runs_show(args: argparse.Namespace) -> int:
    from pipewarden.inputs import escape_controls
    from pipewarden.render import format_time, run_as_dict, run_detail

    prefix = args.run_id.strip().lower()
    if len(prefix) < 4:
        raise UsageError("give at least 4 characters of the run id")
    store = open_store(load_config(args), must_exist=True, read_only=True)
    matches = store.runs_with_prefix(prefix) if store else []
    if not matches:
        raise PipewardenError(f"no run with id starting '{prefix}' (see `pipewarden runs tail`)")
    if len(matches) > 1:
        lines = [f"'{prefix}' matches {len(matches)} runs; give more characters:"]
        lines += [
            f"  {r.id}  {format_time(r.started_at)}  {r.pipeline}/{r.stage}"
            f" {escape_controls(r.item_key)} {r.status}"
            for r in matches
        ]
        raise UsageError("\n".join(lines))
    if args.json:
        print_json(run_as_dict(matches[0]))
    else:
        print("\n".join(run_detail(matches[0])))
    return EXIT_OK
