"""Recorded runs: the latest (`runs tail`), one in full (`runs show`)."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from pipewarden.cli.shared import (
    AS_JSON,
    COMMON,
    EXIT_OK,
    add_command,
    add_group,
    daemon_api,
    duration_arg,
    load_config,
    open_store,
    print_json,
    terminal_width,
)
from pipewarden.errors import PipewardenError, UsageError
from pipewarden.types import RunStatus

if TYPE_CHECKING:
    from pipewarden.config import Config
    from pipewarden.store import Storage

TAIL_DEFAULT = 20
FOLLOW_KEYS_AT_LEAST = 24  # keys of runs still to come: room for more than the first rows'
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
    tail.add_argument(
        "-n", type=int, default=None,
        help=f"how many (default {TAIL_DEFAULT}; with --since, every one since)",
    )  # fmt: skip
    tail.add_argument(
        "-f", "--follow", action="store_true",
        help="then show each run as it ends, until Ctrl-C (from the daemon's events, or the"
        " store when no daemon runs)",
    )  # fmt: skip
    tail.add_argument("--since", help="only runs started within this long, e.g. 1h or 2d")
    tail.add_argument("--pipeline")
    tail.add_argument("--stage")
    tail.add_argument("--status", type=_run_status, help=", ".join(RUN_STATUSES))
    show = add_command(
        runs_commands, "show", _cmd_runs_show, "everything about one run", COMMON, AS_JSON
    )
    show.add_argument("run_id", metavar="ID_PREFIX")


def _cmd_runs_tail(args: argparse.Namespace) -> int:
    import time

    from pipewarden.render import RunColumns, run_as_dict
    from pipewarden.runfeed import RunFilter, latest_runs

    config = load_config(args)
    if args.pipeline:
        config.pipeline(args.pipeline)
    since = time.time() - duration_arg(args.since, "--since") if args.since else None
    where = RunFilter(args.pipeline, args.stage, args.status, since)
    limit = args.n if args.n is not None or since is not None else TAIL_DEFAULT
    store = open_store(config, must_exist=True, read_only=True)
    read_at = time.time()  # a follow shows what ends from here on, none missed
    running = {run.id for run in store.running_runs()} if store and args.follow else set()
    runs = latest_runs(store, limit, where) if store else []
    if args.json and not args.follow:
        print_json([run_as_dict(run) for run in runs])
        return EXIT_OK
    names = [s.qualified_name for p in config.pipelines.values() for s in p.stages]
    columns = RunColumns.fitting(runs, terminal_width(), names if args.follow else (),
                                 FOLLOW_KEYS_AT_LEAST if args.follow else 0)  # fmt: skip
    show = _json_line if args.json else lambda run: print(columns.row(run), flush=True)
    if not args.json:
        print(columns.header())
    for run in runs:
        show(run)
    if args.follow:
        with contextlib.suppress(KeyboardInterrupt):  # the way out of a follow, as `tail -f`
            _follow(config, store, where, show, read_at, running)
    if store:
        store.close()
    return EXIT_OK


def _json_line(run: Any) -> None:
    from pipewarden.render import run_as_dict

    fields = vars(run) if isinstance(run, SimpleNamespace) else run_as_dict(run)
    print(json.dumps(fields, default=str), flush=True)


def _follow(
    config: Config, store: Storage | None, where: Any, show: Callable[[Any], None],
    read_at: float, running: set[str],
) -> None:  # fmt: skip
    """Show each run as it ends after `read_at` (`running` then: the ids of the runs in
    flight): from the daemon's events while one runs, else (and after it stops) from the
    store; always from the store when a fleet shares it (the daemon here tells only of its
    own runs)."""
    import time

    from pipewarden.runfeed import FLEET_LAG_S, POLL_S, ended_since, follow_events, poll_store

    daemon = daemon_api(config)
    if daemon.running and not config.store_url:

        def catch_up() -> list[Any]:  # what ended before the stream was connected
            nonlocal store
            store = store or open_store(config, must_exist=True, read_only=True)
            return ended_since(store, where, read_at, running) if store else []

        for run in follow_events(daemon, where, catch_up):
            show(run)
        read_at, running = time.time(), set()  # the daemon stopped: what it ended is shown
    while store is None:  # nothing enqueued yet: wait for the store
        time.sleep(POLL_S)
        store = open_store(config, must_exist=True, read_only=True)
    running |= {run.id for run in store.running_runs()}
    lag_s = FLEET_LAG_S if config.store_url else 0.0
    for run in poll_store(store, where, read_at, running, lag_s):
        show(run)


def _cmd_runs_show(args: argparse.Namespace) -> int:
    from pipewarden.advising import advice_lines, advice_of, current_rules
    from pipewarden.inputs import escape_controls
    from pipewarden.render import format_time, run_as_dict, run_detail

    prefix = args.run_id.strip().lower()
    if len(prefix) < 4 and not prefix.isdigit():  # a run's id is a number since schema 13
        raise UsageError("give at least 4 characters of the run id")
    config = load_config(args)
    store = open_store(config, must_exist=True, read_only=True)
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
    run = matches[0]
    advice = advice_of(current_rules(config), run.rule_id, run.label)
    if args.json:
        print_json({**run_as_dict(run), **advice})
    else:
        print("\n".join([*run_detail(run), *(["", *advice_lines(advice)] if any(
            advice.values()) else [])]))  # fmt: skip
    return EXIT_OK
