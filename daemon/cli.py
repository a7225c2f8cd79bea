"""The `pipewarden` command.

Start-up stays cheap: each command imports what it needs when it runs, so `--help`
and `status` never pay for modules they do not use.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipewarden.errors import ConfigError, PipewardenError, UsageError

if TYPE_CHECKING:
    from pipewarden.client import DaemonApi
    from pipewarden.config import Config
    from pipewarden.store import Store

EXIT_OK = 0
EXIT_FAILURE = 1  # the command ran and something is wrong (a run not found, a daemon error)
EXIT_USAGE = 2  # bad arguments, config or rules, a damaged store

_stores_opened: list[Path] = []  # an error of the store a command reads is told by its path


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.handler(args)
    except (ConfigError, UsageError) as exc:
        print(f"pipewarden: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PipewardenError as exc:
        print(f"pipewarden: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", EXIT_FAILURE)  # a damaged store: EXIT_USAGE
    except UnicodeEncodeError as exc:  # an argument in bytes that are not UTF-8 (a key, ...)
        from pipewarden.inputs import shown

        text = exc.object if isinstance(exc.object, str) else "?"
        print(f"pipewarden: '{shown(text)}' is not valid UTF-8 text — pass UTF-8", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except BrokenPipeError:  # `pipewarden runs tail | head`
        return EXIT_OK
    except Exception as exc:  # the store failing under a command (full, damaged): one line
        from pipewarden.faults import fault_of

        if not _stores_opened or (fault := fault_of(exc, _stores_opened[-1])) is None:
            raise
        print(f"pipewarden: {fault}", file=sys.stderr)
        return fault.exit_code


# -- argument parsing ------------------------------------------------------------------
def _build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", help="config file (default: $PIPEWARDEN_CONFIG or ./config.yaml)"
    )
    common.add_argument(
        "--state-dir", help="state directory (default: .pipewarden beside the config)"
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON instead of text")

    parser = argparse.ArgumentParser(
        prog="pipewarden",
        description="Runs automation pipelines under a watchdog and says what is wrong.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], int], help: str, *parents):
        sub = commands.add_parser(name, help=help, description=help, parents=list(parents))
        sub.set_defaults(handler=handler)
        return sub

    run = command("run", _cmd_run, "run the daemon in the foreground", common)
    run.add_argument(
        "--until-idle", action="store_true",
        help="exit once no item is queued, running or retrying (deferred items wait)",
    )  # fmt: skip

    enqueue = command(
        "enqueue", _cmd_enqueue, "add items to a pipeline (idempotent on key)", common, as_json
    )
    enqueue.add_argument("pipeline")
    enqueue.add_argument("key", nargs="?", help="the item's key, unique in its pipeline")
    enqueue.add_argument(
        "--data", help="the item's data as a JSON object; for a known key it replaces the item's"
        " data (it does not merge). Without --data a known item keeps the data it has",
    )  # fmt: skip
    enqueue.add_argument(
        "--file", help='a JSON-lines file of {"key": ..., "data": {...}}; a line without'
        " \"data\" keeps a known item's data, one with it replaces that data",
    )  # fmt: skip
    enqueue.add_argument(
        "--force", action="store_true",
        help="start known items again and redo every stage to the end, even where the input"
        " already succeeded",
    )  # fmt: skip

    status = command("status", _cmd_status, "what is stuck and why, at a glance", common, as_json)
    status.add_argument("--pipeline", help="only this pipeline")
    status.add_argument(
        "-v", "--verbose", action="store_true", help="with each stage's success rate and p50/p95"
    )

    why = command("why", _cmd_why, "an item's whole story and what happens next", common, as_json)
    why.add_argument("key")
    why.add_argument("--pipeline", help="needed when several pipelines have an item with this key")

    command("open", _cmd_open, "open the live web page, signed in", common)
    command(
        "tray", _cmd_tray, "the tray icon: health at a glance, halts cleared in a click", common
    )

    item = command("item", _cmd_item, "one item: its state, next retry and runs", common, as_json)
    item.add_argument("pipeline")
    item.add_argument("key")

    runs = commands.add_parser("runs", help="recorded runs (attempts)")
    runs_commands = runs.add_subparsers(title="commands", metavar="COMMAND")
    tail = runs_commands.add_parser("tail", help="the latest runs", parents=[common, as_json])
    tail.set_defaults(handler=_cmd_runs_tail)
    tail.add_argument("-n", type=int, default=20, help="how many (default 20)")
    tail.add_argument("--pipeline")
    tail.add_argument("--stage")
    tail.add_argument(
        "--status", help="ok, failed, timed_out, interrupted, ignored, deferred, running"
    )
    show = runs_commands.add_parser(
        "show", help="everything about one run", parents=[common, as_json]
    )
    show.set_defaults(handler=_cmd_runs_show)
    show.add_argument("run_id", metavar="ID_PREFIX")

    halts = command("halts", _cmd_halts, "active halts and pauses", common, as_json)
    halts_commands = halts.add_subparsers(title="commands", metavar="COMMAND")
    clear = halts_commands.add_parser(
        "clear", help="clear the halt on a channel, pipeline/stage or pipeline",
        parents=[common, as_json],
    )  # fmt: skip
    clear.set_defaults(handler=_cmd_halts_clear)
    clear.add_argument("target", help="e.g. sms, sites/capture or outreach")

    for name, handler, verb in (("pause", _cmd_pause, "stop claiming"), ("resume", _cmd_resume,
                                "claim again")):  # fmt: skip
        sub = command(
            name, handler, f"{verb} for a channel, a stage or a pipeline", common, as_json
        )
        target = sub.add_mutually_exclusive_group(required=True)
        target.add_argument("--channel", help="e.g. sms")
        target.add_argument("--stage", help="pipeline/stage, e.g. sites/capture")
        target.add_argument("--pipeline", help="e.g. outreach")

    command(
        "reload", _cmd_reload, "make the running daemon reload config and rules", common, as_json
    )

    retry = command(
        "retry", _cmd_retry, "put failed and retrying items with a label back in the queue",
        common, as_json,
    )  # fmt: skip
    retry.add_argument("--label", required=True, help='e.g. "Browser launch conflict"')
    retry.add_argument("--pipeline")
    retry.add_argument("--stage")
    retry.add_argument("--since", help="only items that changed within this long, e.g. 24h")
    retry.add_argument("--dry-run", action="store_true", help="count, change nothing")
    retry.add_argument(
        "--force", action="store_true", help="redo work whose input already succeeded"
    )

    for name, handler, what in (
        ("release", _cmd_release, "put held items back in the queue, at the attempt they were"
         " held at (their side effects may happen again)"),
        ("fail", _cmd_fail, "end held items as failed, with the reason given"),
    ):  # fmt: skip
        sub = command(name, handler, what, common, as_json)
        sub.add_argument("pipeline")
        sub.add_argument("keys", nargs="*", metavar="KEY", help="the held items' keys")
        sub.add_argument("--all-held", action="store_true", help="every held item of the pipeline")
        sub.add_argument("--dry-run", action="store_true", help="list them, change nothing")
        if name == "fail":
            sub.add_argument("--reason", required=True, help="why they fail, as their error text")

    init = commands.add_parser("init", help="write a commented config, rules and a worker")
    init.set_defaults(handler=_cmd_init)
    init.add_argument("folder", nargs="?", default=".", help="where (default: here)")
    init.add_argument(
        "--packs", default="",
        help="rule packs to add to http, net and os, e.g. browser,sms (see `rules packs`)",
    )  # fmt: skip
    command("doctor", _cmd_doctor, "check the config, rules, state dir, workers, targets", common)

    prune = command(
        "prune", _cmd_prune, "delete old runs (never an item's latest)", common, as_json
    )
    prune.add_argument("--older-than", required=True, help="e.g. 30d")
    command("vacuum", _cmd_vacuum, "give the space of deleted rows back to the disk", common)
    backup = command("backup", _cmd_backup, "a consistent copy of the store, while it runs", common)
    backup.add_argument("path", help="where to write the copy")
    command("migrate", _cmd_migrate, "upgrade the store to this version's schema", common)
    export = commands.add_parser("export", help="export records")
    export_commands = export.add_subparsers(title="commands", metavar="COMMAND")
    export_runs = export_commands.add_parser(
        "runs", help="every run, oldest first", parents=[common]
    )
    export_runs.set_defaults(handler=_cmd_export_runs)
    export_runs.add_argument("--format", choices=("csv", "jsonl"), default="jsonl")
    export_runs.add_argument("--since", help="only runs started within this long, e.g. 7d")
    export_runs.add_argument("--output", help="a file (default: standard output)")

    notify = commands.add_parser("notify", help="notification targets")
    notify_commands = notify.add_subparsers(title="commands", metavar="COMMAND")
    notify_test = notify_commands.add_parser(
        "test", help="send a test to every target and report each result", parents=[common, as_json]
    )
    notify_test.set_defaults(handler=_cmd_notify_test)

    rules = commands.add_parser("rules", help="check and try classification rules")
    rules_commands = rules.add_subparsers(title="commands", metavar="COMMAND")
    check = rules_commands.add_parser(
        "check", help="validate rule files", parents=[common, as_json]
    )
    check.set_defaults(handler=_cmd_rules_check)
    check.add_argument("paths", nargs="*", help="rule files (default: the config's)")
    test = rules_commands.add_parser(
        "test", help="classify an error message as the daemon would", parents=[common, as_json]
    )
    test.set_defaults(handler=_cmd_rules_test)
    test.add_argument("message", nargs="?", help="an error text (or --file)")
    test.add_argument("--pipeline")
    test.add_argument("--stage")
    test.add_argument(
        "--type", dest="exception_type", metavar="TYPE",
        help="the exception: a builtin name (its bases count too, e.g. ConnectionResetError),"
        " module.Class (imported, with its bases), or the chain a worker sends: Name,Base,...",
    )  # fmt: skip
    test.add_argument(
        "--file", metavar="LOG", help="classify every line of LOG ('-': standard input) instead"
    )
    packs = rules_commands.add_parser(
        "packs", help="the shipped rule packs, to name in the config as pack:NAME",
        parents=[as_json],
    )  # fmt: skip
    packs.set_defaults(handler=_cmd_rules_packs)
    return parser


# -- helpers -----------------------------------------------------------------------------
def _config(args: argparse.Namespace) -> Config:
    from pipewarden.config import find_config_path, load_config

    return load_config(find_config_path(args.config), args.state_dir)


def _open_store(config: Config, must_exist: bool = False, read_only: bool = False) -> Store | None:
    """The config's store (None if it `must_exist` and does not); `read_only`: a command
    that only reads opens it so, and never migrates it."""
    from pipewarden.client import store_exists
    from pipewarden.store import STORE_FILE, Store

    path = config.state_dir / STORE_FILE
    if not store_exists(config, path) and must_exist:
        return None
    _stores_opened.append(path)
    return Store(config.state_dir, read_only=read_only)


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


# -- commands -----------------------------------------------------------------------------
def _cmd_run(args: argparse.Namespace) -> int:
    import asyncio

    from pipewarden import logs
    from pipewarden.daemon import Daemon
    from pipewarden.rules import load_rules
    from pipewarden.store import STORE_FILE

    logs.configure()
    config = _config(args)
    _stores_opened.append(config.state_dir / STORE_FILE)
    rules = load_rules(config.rule_paths, config.path.parent)
    daemon = Daemon(config, rules, state_dir_override=args.state_dir)
    return asyncio.run(daemon.run(until_idle=args.until_idle))


def _cmd_enqueue(args: argparse.Namespace) -> int:
    import time
    from dataclasses import asdict

    from pipewarden import control

    config = _config(args)
    pipeline = config.pipeline(args.pipeline)
    items = _items_to_enqueue(args)
    daemon = _daemon_api(config)
    if daemon.running:
        result = daemon.post(
            "/api/enqueue",
            {"pipeline": pipeline.name, "force": args.force,
             "items": [{"key": k, "data": d} for k, d in items]},
        )  # fmt: skip
    else:
        store = _open_store(config)
        enqueued = control.enqueue(store, config, pipeline.name, items, time.time(), args.force)
        result = asdict(enqueued)
        store.close()
        if result["new"] or result["restarted"]:
            _told(daemon, "enqueued")  # wakes a daemon that runs without its API
    result = {"pipeline": pipeline.name, **result}
    if args.json:
        _print_json(result)
        return EXIT_OK
    first = f"{pipeline.name}/{pipeline.stages[0].name}"
    print("; ".join([f"enqueued {len(result['new'])} new item(s) into {first}",
                     *_known_items(result, args.force)]))  # fmt: skip
    return EXIT_OK


def _known_items(result: dict[str, Any], force: bool) -> list[str]:
    """What enqueueing did to keys already known: started again (with which data), or not."""
    parts = []
    if restarted := len(result["restarted"]):
        how = "every stage redone: --force" if force else "stages already done are skipped"
        replaced, kept = len(result["data_replaced"]), restarted - len(result["data_replaced"])
        data = [f"{replaced} with the data given, which replaces theirs"] if replaced else []
        data += [f"{kept} with the data they had (none given)"] if kept else []
        parts.append(f"{restarted} known item(s) started again ({how}): {', '.join(data)}")
    if result["unchanged"]:
        parts.append(
            f"{len(result['unchanged'])} still queued or running (left as they are, data too)"
        )
    if held := result["held"]:
        hint = f"`pipewarden release {result['pipeline']} KEY...` or `pipewarden fail`"
        parts.append(f"{len(held)} held for a person (left as they are: {hint})")
    return parts


def _items_to_enqueue(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    from pipewarden.inputs import check_item

    if (args.key is None) == (args.file is None):
        raise UsageError("enqueue takes a KEY or --file items.jsonl (one of them)")
    if args.file:
        if args.data:
            raise UsageError("--data goes with KEY; in --file each line carries its own data")
        return _read_items_file(Path(args.file))
    data: Any = None  # none given: a known item keeps its own
    if args.data is not None:
        try:
            data = json.loads(args.data)
        except ValueError as exc:
            raise UsageError(f"--data is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise UsageError('--data must be a JSON object, e.g. \'{"url": "https://..."}\'')
    return [check_item(args.key, data)]


def _read_items_file(path: Path) -> list[tuple[str, dict[str, Any]]]:
    from pipewarden.inputs import data_problem, key_problem

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    items = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            entry = json.loads(line)
        except ValueError as exc:
            raise ConfigError(path, number, exc.colno, f"not valid JSON: {exc.msg}") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            raise ConfigError(path, number, 1, 'each line must be {"key": "...", "data": {...}}')
        if problem := key_problem(entry["key"]):
            raise ConfigError(path, number, 1, f"'key' {problem}")
        data = entry.get("data")  # none (or null): a known item keeps its own
        if data is not None and (problem := data_problem(data)):
            raise ConfigError(path, number, 1, f"'data' {problem}")
        items.append((entry["key"], data))
    return items


def _cmd_status(args: argparse.Namespace) -> int:
    import os
    import time

    from pipewarden import faults
    from pipewarden.lock import running_daemon_pid
    from pipewarden.render import Paint, status_tree
    from pipewarden.status import status_snapshot

    config = _config(args)
    if args.pipeline:
        config.pipeline(args.pipeline)
    daemon = _daemon_api(config)
    if daemon.via_socket:  # the store may be the daemon's own: ask the daemon
        query = {"verbose": "1" if args.verbose else "0", **({"pipeline": args.pipeline}
                                                            if args.pipeline else {})}  # fmt: skip
        snapshot = daemon.get("/api/status", query)
    else:
        store = _open_store(config, must_exist=True, read_only=True)
        pid = running_daemon_pid(config.state_dir)
        snapshot = status_snapshot(
            config, store, time.time(), args.pipeline, args.verbose, daemon_running=pid is not None
        )
        if store:
            store.close()
        fault = faults.check_files(store.path) or faults.disk_full(store.path) if store else None
        snapshot["daemon"] = {
            "running": pid is not None,
            "pid": pid,
            "state_dir": str(config.state_dir),
            "store_fault": str(fault) if fault else None,
        }
    if args.json:
        _print_json(snapshot)
        return EXIT_OK
    paint = Paint(sys.stdout.isatty() and not os.environ.get("NO_COLOR"))
    print(render_daemon_line(snapshot))
    print("\n".join(status_tree(snapshot, paint, args.verbose)))
    return EXIT_OK


def render_daemon_line(snapshot: dict[str, Any]) -> str:
    daemon = snapshot["daemon"]
    state = f"running (pid {daemon['pid']})" if daemon["running"] else "not running"
    line = f"daemon: {state} · state {daemon['state_dir']}"
    if fault := daemon.get("store_fault"):  # what the daemon waits out: above all the rest
        line += f"\n{fault}"
    return line


def _cmd_item(args: argparse.Namespace) -> int:
    import time

    from pipewarden.render import item_detail, run_as_dict, runs_table

    config = _config(args)
    config.pipeline(args.pipeline)
    store = _open_store(config, must_exist=True, read_only=True)
    item = store.item(args.pipeline, args.key) if store else None
    if item is None:
        raise PipewardenError(f"no item '{args.key}' in pipeline '{args.pipeline}'")
    runs = store.item_runs(item.id)
    store.close()
    if args.json:
        fields = ("pipeline", "key", "stage", "state", "attempt", "ready_at", "channel",
                  "last_error", "last_label", "last_group", "created_at", "updated_at")  # fmt: skip
        _print_json(
            {**{name: getattr(item, name) for name in fields}, "data": json.loads(item.data),
             "runs": [run_as_dict(run) for run in runs]}
        )  # fmt: skip
        return EXIT_OK
    print("\n".join(item_detail(item, time.time())))
    print()
    print("\n".join(runs_table(runs)))
    return EXIT_OK


def _daemon_api(config: Config) -> DaemonApi:
    from pipewarden.client import DaemonApi

    return DaemonApi(config)


def _who() -> str:
    import getpass

    return f"{getpass.getuser()} (cli)"


def _cmd_halts(args: argparse.Namespace) -> int:
    from pipewarden.render import describe_hold
    from pipewarden.status import hold_as_dict

    config = _config(args)
    daemon = _daemon_api(config)
    if daemon.via_socket:  # the store may be the daemon's own: ask the daemon
        holds = daemon.get("/api/halts")
    else:
        store = _open_store(config, must_exist=True, read_only=True)
        holds = [hold_as_dict(hold) for hold in store.active_holds()] if store else []
        if store:
            store.close()
    if args.json:
        _print_json(holds)
        return EXIT_OK
    if not holds:
        print("no halts or pauses: everything flows")
    for hold in holds:
        print(f"{hold['kind']:<6} {hold['scope']:<9} {describe_hold(hold)}")
        if hold["kind"] == "halt":
            print(f"{'':17}rule {hold['rule']}; clear: pipewarden halts clear {hold['target']}")
    return EXIT_OK


def _cmd_halts_clear(args: argparse.Namespace) -> int:
    import time

    from pipewarden import control
    from pipewarden.notifier import Notifier
    from pipewarden.status import hold_as_dict

    config = _config(args)
    daemon = _daemon_api(config)
    if daemon.running:
        cleared = daemon.post("/api/halts/clear", {"target": args.target})["cleared"]
    else:
        store = _open_store(config)
        try:
            holds = control.clear_halt(
                store, Notifier(store, config.notify), args.target, _who(), time.time()
            )
            cleared = [hold_as_dict(hold) for hold in holds]
        finally:
            store.close()
    if args.json:
        _print_json({"cleared": cleared})
    else:
        print(_told(daemon, f"cleared the halt on {args.target}"))
    return EXIT_OK


def _told(daemon: DaemonApi, what: str) -> str:
    """Say what changed, and make sure a running daemon acts on it now."""
    from pipewarden.lock import poke_daemon

    # Through the API the daemon already knows; a daemon without an API gets a SIGUSR1.
    if daemon.running or poke_daemon(daemon.config.state_dir):
        return f"{what}; the running daemon has been told"
    return f"{what}; no daemon is running (it takes effect when one starts)"


def _hold_request(args: argparse.Namespace) -> dict[str, str]:
    for scope in ("channel", "stage", "pipeline"):
        if getattr(args, scope):
            return {"scope": scope, "target": getattr(args, scope)}
    raise UsageError("give --channel, --stage or --pipeline")


def _cmd_pause(args: argparse.Namespace) -> int:
    return _pause_or_resume(args, "pause")


def _cmd_resume(args: argparse.Namespace) -> int:
    return _pause_or_resume(args, "resume")


def _pause_or_resume(args: argparse.Namespace, action: str) -> int:
    import time

    from pipewarden import control

    config = _config(args)
    request = _hold_request(args)
    scope, target = request["scope"], control.hold_target(config, **request)
    daemon = _daemon_api(config)
    if daemon.running:
        answer = daemon.post(f"/api/{action}", {"scope": scope, "target": target})
        changed = not answer["already"] if action == "pause" else answer["was_paused"]
    else:
        store = _open_store(config)
        change = control.pause if action == "pause" else control.resume
        changed = change(store, config, scope, target, _who(), time.time())
        store.close()
    if args.json:
        _print_json({"action": action, "scope": scope, "target": target, "changed": changed})
    elif not changed:
        print(f"{scope} {target} {'was already paused' if action == 'pause' else 'was not paused'}")
    elif action == "pause":
        print(_told(daemon, f"paused {scope} {target}: its items stay queued"))
    else:
        print(_told(daemon, f"resumed {scope} {target}"))
    return EXIT_OK


def _cmd_reload(args: argparse.Namespace) -> int:
    from pipewarden.reload import load_all

    config = _config(args)
    daemon = _daemon_api(config)
    if not daemon.running:
        _, rules = load_all(config.path, args.state_dir)
        print(f"no daemon is running; config and {len(rules.rules)} rules are valid")
        return EXIT_OK
    result = daemon.post("/api/reload", {}, refusal_ok=True)
    if args.json:
        _print_json(result)
    elif result["ok"]:
        print(f"reloaded: rules version {result['version']} ({result['rules']} rules)")
        for change in result.get("changes") or ["nothing changed"]:
            print(f"  {change}")
    else:
        print(f"reload failed: {result['error']}", file=sys.stderr)
        print(f"the last good rules (version {result['version']}) stay in force", file=sys.stderr)
    return EXIT_OK if result["ok"] else EXIT_FAILURE


def _cmd_retry(args: argparse.Namespace) -> int:
    import time

    from pipewarden import control
    from pipewarden._yaml import parse_duration

    config = _config(args)
    request: dict[str, Any] = {
        "label": args.label, "pipeline": args.pipeline, "stage": args.stage,
        "dry_run": args.dry_run, "force": args.force,
    }  # fmt: skip
    if args.since:
        try:
            request["since_s"] = parse_duration(args.since)
        except ValueError:
            raise UsageError(
                f"--since takes a duration such as 24h or 30m, not '{args.since}'"
            ) from None
    daemon = _daemon_api(config)
    if daemon.running:
        answer = daemon.post("/api/retry", request)
        count, held = answer["items"], answer["held"]
    else:
        store = _open_store(config)
        count = control.retry(store, config, request, _who(), time.time())
        held = control.held_count(store, request)
        store.close()
    scope = "".join(f" in {v}" for v in (args.pipeline, args.stage) if v)
    if args.json:
        _print_json({"label": args.label, "items": count, "dry_run": args.dry_run, "held": held})
        return EXIT_OK
    if args.dry_run:
        print(f"would requeue {count} failed or retrying item(s) labelled '{args.label}'{scope}")
    elif count:
        print(_told(daemon, f"requeued {count} item(s) labelled '{args.label}'{scope}"))
    else:
        print(f"no failed or retrying item is labelled '{args.label}'{scope}")
    if held:  # retry never repeats a side effect a stage said must not repeat
        print(
            f"{held} held item(s) labelled '{args.label}'{scope} wait for a person: let them go"
            " with `pipewarden release PIPELINE KEY...` (or --all-held), or end them with"
            " `pipewarden fail PIPELINE KEY... --reason TEXT`"
        )
    return EXIT_OK


def _cmd_release(args: argparse.Namespace) -> int:
    return _change_held(args, "release")


def _cmd_fail(args: argparse.Namespace) -> int:
    return _change_held(args, "fail")


def _change_held(args: argparse.Namespace, command: str) -> int:
    """`release` and `fail`: held items by key (or all of a pipeline's), by the API when a
    daemon runs, else on the store."""
    import time

    from pipewarden import control

    if bool(args.keys) == args.all_held:
        raise UsageError(f"{command} takes KEY... or --all-held (one of them)")
    verb = "released" if command == "release" else "failed"
    config = _config(args)
    pipeline = config.pipeline(args.pipeline).name
    keys = None if args.all_held else args.keys
    request: dict[str, Any] = {"pipeline": pipeline, "keys": keys, "all_held": args.all_held,
                               "dry_run": args.dry_run}  # fmt: skip
    if command == "fail":
        request["reason"] = control.fail_reason(args.reason)
    daemon = _daemon_api(config)
    if daemon.running:
        answer = daemon.post(f"/api/{command}", request)
        changed, not_held = answer[verb], answer["not_held"]
    else:
        store = _open_store(config)
        try:
            if command == "release":
                change = control.release(store, config, pipeline, keys, _who(), time.time(),
                                         args.dry_run)  # fmt: skip
            else:
                change = control.fail(store, config, pipeline, keys, args.reason, _who(),
                                      time.time(), args.dry_run)  # fmt: skip
        finally:
            store.close()
        changed, not_held = change.changed, change.not_held
    if args.json:
        _print_json({"pipeline": pipeline, verb: changed, "dry_run": args.dry_run,
                     "not_held": not_held})  # fmt: skip
    else:
        print("\n".join(_held_lines(daemon, pipeline, verb, changed, not_held, args.dry_run)))
    return EXIT_FAILURE if not_held else EXIT_OK


def _held_lines(
    daemon: DaemonApi, pipeline: str, verb: str, changed: list[str],
    not_held: dict[str, str | None], dry_run: bool,
) -> list[str]:  # fmt: skip
    from pipewarden.inputs import shown

    what = {"released": "back in the queue at the attempt they were held at",
            "failed": "failed, with the reason given"}[verb]  # fmt: skip
    names = ", ".join(shown(key) for key in changed[:10])
    names += f" and {len(changed) - 10} more" if len(changed) > 10 else ""
    if dry_run:
        lines = [f"would have {verb} {len(changed)} held item(s) of {pipeline}"
                 + (f": {names}" if changed else "")]  # fmt: skip
    elif changed:
        lines = [_told(daemon, f"{verb} {len(changed)} held item(s) of {pipeline} ({what}):"
                       f" {names}")]  # fmt: skip
    else:
        lines = [f"no held item of {pipeline} was {verb}"]
    for key, state in not_held.items():
        why = f"it is {state}" if state else "no such item"
        lines.append(f"not held: {shown(key)} ({why})")
    return lines


def _cmd_why(args: argparse.Namespace) -> int:
    import time

    from pipewarden.render import story_lines
    from pipewarden.story import item_story

    config = _config(args)
    store = _open_store(config, must_exist=True, read_only=True)
    if store is None:
        raise PipewardenError("nothing has been enqueued yet")
    try:
        pipeline = args.pipeline or _pipeline_of(store, args.key)
        story = item_story(config, store, pipeline, args.key, time.time())
    finally:
        store.close()
    if args.json:
        _print_json(story)
    else:
        print("\n".join(story_lines(story)))
    return EXIT_OK


def _pipeline_of(store: Store, key: str) -> str:
    pipelines = [row[0] for row in store.db.connection().execute(
        "SELECT pipeline FROM items WHERE key = ?", (key,))]  # fmt: skip
    if not pipelines:
        raise PipewardenError(f"no item '{key}' (see `pipewarden status`)")
    if len(pipelines) > 1:
        raise UsageError(f"'{key}' is in {', '.join(pipelines)}: add --pipeline")
    return pipelines[0]


def _cmd_tray(args: argparse.Namespace) -> int:
    import logging

    from pipewarden import logs

    config = _config(args)
    daemon = _daemon_api(config)  # a socket this user may not use: the line naming the group
    token_file = config.state_dir / "api.token"
    if config.api.socket is None and not token_file.exists():
        raise PipewardenError(
            f"no API token at {token_file}: start the daemon once (`pipewarden run`)"
        )
    logs.configure()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per poll
    try:
        from pipewarden.tray.app import DaemonClient, TrayApp, check_display
    except ImportError as exc:
        raise PipewardenError(
            f"the tray needs its extra: pip install 'pipewarden[tray]' ({exc.name} is missing)"
        ) from None
    check_display()
    if config.api.socket is not None:  # polled even while the daemon is down: grey till it is up
        client = DaemonClient(daemon.page, socket=config.api.socket)
    else:
        client = DaemonClient(daemon.page, token_file.read_text().strip())
    TrayApp(client, list(config.pipelines)).run()
    return EXIT_OK


def _cmd_open(args: argparse.Namespace) -> int:
    import webbrowser

    config = _config(args)
    if not config.api.enabled:
        raise UsageError("the page needs the API, which is off: remove `api: {enabled: false}`")
    daemon = _daemon_api(config)
    if not daemon.running:
        raise PipewardenError("no daemon is running: start one with `pipewarden run`")
    # A one-time code, not the token: the link may sit in a terminal's scrollback, the
    # browser's history or another user's `ps`, but it is dead once used or a minute old.
    code = daemon.post("/api/login-codes", {})
    url = f"{daemon.page}/#code={code['code']}"
    print(f"the live page: {url}")
    print(f"(the link signs one browser in, once, within {code['expires_in_s']:.0f} s)")
    webbrowser.open(url)
    return EXIT_OK


def _cmd_notify_test(args: argparse.Namespace) -> int:
    from pipewarden.notifier import send

    config = _config(args)
    targets = config.notify.targets
    if not targets:
        raise UsageError("no notification targets in the config: add them under notify: targets:")
    results = [
        send(target, "pipewarden test", f"A test from pipewarden ({config.path.name}).")
        for target in targets
    ]
    if args.json:
        _print_json([{"target": r.target, "ok": r.ok, "error": r.error} for r in results])
    for result in results if not args.json else ():
        print(f"{result.target:<20} {'ok' if result.ok else 'FAILED: ' + (result.error or '')}")
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILURE


def _cmd_init(args: argparse.Namespace) -> int:
    from pipewarden.setup import init

    folder = Path(args.folder).resolve()
    extra = tuple(name.strip() for name in args.packs.split(",") if name.strip())
    for path in init(folder, extra):
        print(f"wrote {path}")
    print(f"next: cd {folder}, then: pipewarden doctor; pipewarden enqueue hello world;")
    print("      pipewarden run")
    return EXIT_OK


def _cmd_doctor(args: argparse.Namespace) -> int:
    from pipewarden.setup import doctor

    failed = 0
    for finding in doctor(args.config, args.state_dir):
        mark = "ok  " if finding.ok else "FAIL"
        print(f"{mark} {finding.what}" + (f" — {finding.fix}" if finding.fix else ""))
        failed += not finding.ok
    print("all good" if not failed else f"{failed} problem(s) to fix")
    return EXIT_OK if not failed else EXIT_FAILURE


def _duration_arg(text: str, option: str) -> float:
    from pipewarden._yaml import parse_duration

    try:
        return parse_duration(text)
    except ValueError:
        raise UsageError(f"{option} takes a duration such as 30d or 12h, not '{text}'") from None


def _cmd_prune(args: argparse.Namespace) -> int:
    import time

    older_than = time.time() - _duration_arg(args.older_than, "--older-than")
    store = _open_store(_config(args))
    total = 0
    while deleted := store.prune_batch(older_than):
        total += deleted
    store.close()
    if args.json:
        _print_json({"pruned_runs": total})
    else:
        print(f"pruned {total:,} run(s) older than {args.older_than}")
        print("(`pipewarden vacuum` gives the space back to the disk)")
    return EXIT_OK


def _cmd_vacuum(args: argparse.Namespace) -> int:
    store = _open_store(_config(args))
    before = store.path.stat().st_size
    store.vacuum()
    after = store.path.stat().st_size
    store.close()
    print(f"vacuumed {store.path}: {before / 1e6:,.1f} MB -> {after / 1e6:,.1f} MB")
    return EXIT_OK


def _cmd_backup(args: argparse.Namespace) -> int:
    import sqlite3

    target = Path(args.path).resolve()
    if target.exists():
        raise UsageError(f"{target} exists: choose a new path (a backup never overwrites)")
    store = _open_store(_config(args), must_exist=True)
    if store is None:
        raise PipewardenError("there is no store to back up yet")
    try:
        store.backup(target)
    except sqlite3.Error as exc:  # a damaged store is its own line; else the copy's disk
        from pipewarden.faults import fault_of

        target.unlink(missing_ok=True)
        if (fault := fault_of(exc, store.path)) is not None and not fault.passing:
            raise fault from None
        raise PipewardenError(f"cannot write the backup {target}: {exc}") from None
    finally:
        store.close()
    check = sqlite3.connect(target)
    try:
        result = check.execute("PRAGMA integrity_check").fetchone()[0]
        runs = check.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    finally:
        check.close()
    if result != "ok":
        raise PipewardenError(f"the backup at {target} failed its integrity check: {result}")
    print(f"backed up {runs:,} run(s) to {target} (integrity check: ok)")
    return EXIT_OK


def _cmd_migrate(args: argparse.Namespace) -> int:
    from pipewarden.store import SCHEMA_VERSION

    config = _config(args)
    store = _open_store(config, must_exist=True)
    if store is None:
        print(f"no store at {config.state_dir}: nothing to migrate (the first start makes one)")
        return EXIT_OK
    store.close()
    if store.found_schema == SCHEMA_VERSION:
        print(f"store {store.path}: schema {SCHEMA_VERSION} already")
    else:
        print(f"store {store.path}: migrated from schema {store.found_schema} to {SCHEMA_VERSION}")
    return EXIT_OK


def _cmd_export_runs(args: argparse.Namespace) -> int:
    import csv
    import time

    since = time.time() - _duration_arg(args.since, "--since") if args.since else None
    store = _open_store(_config(args), must_exist=True, read_only=True)
    rows = store.export_runs(since) if store else iter(())
    out = open(args.output, "w", newline="") if args.output else sys.stdout  # noqa: SIM115
    try:
        count = 0
        writer = None
        for row in rows:
            if args.format == "jsonl":
                out.write(json.dumps(row) + "\n")
            else:
                if writer is None:
                    writer = csv.DictWriter(out, fieldnames=list(row))
                    writer.writeheader()
                writer.writerow(row)
            count += 1
    finally:
        if args.output:
            out.close()
        if store:
            store.close()
    if args.output:
        print(f"exported {count:,} run(s) to {args.output}")
    return EXIT_OK


def _cmd_runs_tail(args: argparse.Namespace) -> int:
    from pipewarden.render import run_as_dict, runs_table

    store = _open_store(_config(args), must_exist=True, read_only=True)
    runs = store.recent_runs(args.n, args.stage, args.status, args.pipeline) if store else []
    if args.json:
        _print_json([run_as_dict(run) for run in runs])
    else:
        print("\n".join(runs_table(reversed(runs))))
    return EXIT_OK


def _cmd_runs_show(args: argparse.Namespace) -> int:
    from pipewarden.inputs import escape_controls
    from pipewarden.render import format_time, run_as_dict, run_detail

    prefix = args.run_id.strip().lower()
    if len(prefix) < 4:
        raise UsageError("give at least 4 characters of the run id")
    store = _open_store(_config(args), must_exist=True, read_only=True)
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
        _print_json(run_as_dict(matches[0]))
    else:
        print("\n".join(run_detail(matches[0])))
    return EXIT_OK


def _load_rules_for(args: argparse.Namespace):
    from pipewarden.rules import load_rules

    if getattr(args, "paths", None):
        return load_rules([Path(p).resolve() for p in args.paths], Path.cwd())
    config = _config(args)
    return load_rules(config.rule_paths, config.path.parent)


def _cmd_rules_check(args: argparse.Namespace) -> int:
    ruleset = _load_rules_for(args)
    if args.json:
        _print_json(
            {"ok": True, "rules": len(ruleset.rules), "version": ruleset.version,
             "warnings": list(ruleset.warnings)}
        )  # fmt: skip
    else:
        for warning in ruleset.warnings:
            print(f"warning: {warning}")
        print(f"ok: {len(ruleset.rules)} rules (version {ruleset.version})")
    return EXIT_OK


def _cmd_rules_test(args: argparse.Namespace) -> int:
    from pipewarden.classifier import Classifier

    if args.file is not None or args.message is None:
        return _cmd_rules_test_file(args)
    ruleset = _load_rules_for(args)
    troubles: list[str] = []
    classifier = Classifier(ruleset, on_trouble=lambda r, why: troubles.append(f"{r.id} {why}"))
    result = classifier.classify(
        args.message, pipeline=args.pipeline, stage=args.stage,
        exception_types=_exception_types(args.exception_type),
    )  # fmt: skip
    rule = next((r for r in ruleset.rules if r.id == result.rule_id), None)
    answer = {
        "group": result.group.value,
        "label": result.label,
        "category": result.category,
        "type": result.type,
        "rule": result.rule_id,
        "pattern": rule.source or None if rule else None,
        "advice": result.advice or None,
        "runbook": result.runbook or None,
        "gave_up": troubles,
    }
    if args.json:
        _print_json(answer)
        return EXIT_OK
    for name in ("group", "label", "category", "type"):
        print(f"{name:<10}{answer[name]}")
    if rule:
        shown = rule.source or f"exception {', '.join(rule.exceptions)}"
        print(f"{'rule':<10}{rule.id}  ({shown})")
        for name in ("advice", "runbook"):
            if answer[name]:
                print(f"{name:<10}{answer[name]}")
    else:
        print(f"{'rule':<10}none matched — retried up to the stage's max_attempts, then failed")
    for trouble in troubles:
        print(f"warning: rule {trouble} on this message: counted as no match", file=sys.stderr)
    return EXIT_OK


def _cmd_rules_test_file(args: argparse.Namespace) -> int:
    """`rules test --file LOG`: every line classified as the daemon would, then a summary."""
    from pipewarden.classifier import Classifier
    from pipewarden.logtest import classify_lines, summary_lines

    if args.file is None:
        raise UsageError("rules test needs an error text, or --file LOG ('-' for standard input)")
    if args.message is not None:
        raise UsageError("rules test takes an error text or --file LOG, not both")
    lines = _read_log_lines(args.file)
    classifier = Classifier(_load_rules_for(args))
    exception_types = _exception_types(args.exception_type)
    results = classify_lines(classifier, lines, args.pipeline, args.stage, exception_types)
    if args.json:
        for result in results:
            print(json.dumps(result.as_dict()))
    else:
        print("\n".join(summary_lines(results)))
    return EXIT_OK


def _read_log_lines(where: str) -> list[str]:
    """The lines of a log file, or of standard input for '-'; bytes that are not UTF-8
    are replaced, as a log may hold anything."""
    try:
        raw = sys.stdin.buffer.read() if where == "-" else Path(where).read_bytes()
    except OSError as exc:
        raise UsageError(f"--file {where}: cannot read it: {exc.strerror}") from None
    return raw.decode("utf-8", errors="replace").splitlines()


def _cmd_rules_packs(args: argparse.Namespace) -> int:
    from pipewarden import packs

    found = [packs.describe(name) for name in packs.pack_names()]
    if args.json:
        _print_json([{"name": f"pack:{p.name}", "rules": p.rules, "halts": p.halts,
                      "summary": p.summary} for p in found])  # fmt: skip
        return EXIT_OK
    width = max((len(p.name) for p in found), default=0) + len(packs.PREFIX)
    for pack in found:
        halts = f", {pack.halts} halt{'s' * (pack.halts > 1)}" if pack.halts else ""
        counts = f"{pack.rules} rules{halts}"
        print(f"{packs.PREFIX + pack.name:<{width}}  {counts:<19}{pack.summary}")
    print("\nname them in the config's rules (first match wins): [rules/*.yaml, pack:http, ...]")
    return EXIT_OK


def _exception_types(given: str | None) -> tuple[str, ...]:
    """--type as the classifier takes it: the chain a worker would send, most specific first.

    A lone builtin name is walked to its bases by the classifier itself (as for a
    worker's reply); `module.Class` is imported here and walked the same way.
    """
    names = tuple(part.strip() for part in (given or "").split(",") if part.strip())
    if len(names) == 1 and "." in names[0]:
        return _imported_exception(names[0])
    return names


def _imported_exception(dotted: str) -> tuple[str, ...]:
    import importlib

    from pipewarden.classifier import exception_names

    module, _, name = dotted.rpartition(".")
    sys.path.insert(0, str(Path.cwd()))
    try:
        found = getattr(importlib.import_module(module), name)
    except Exception as exc:  # the user's module: anything can go wrong importing it
        raise UsageError(
            f"--type {dotted}: cannot import it ({type(exc).__name__}: {exc}) — run from the"
            f" folder it imports from, or give the chain a worker sends: --type {name},BASE,..."
        ) from None
    finally:
        sys.path.pop(0)
    if not (isinstance(found, type) and issubclass(found, BaseException)):
        raise UsageError(f"--type {dotted}: that is not an exception class")
    return exception_names(found)
