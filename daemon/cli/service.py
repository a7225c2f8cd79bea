"""The daemon itself: run it, ask it how things stand, reload it, open its page and tray,
test its notification targets."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from pipewarden.cli.shared import (
    AS_JSON,
    COMMON,
    EXIT_FAILURE,
    EXIT_OK,
    add_command,
    add_group,
    daemon_api,
    load_config,
    open_store,
    print_json,
    stores_opened,
)
from pipewarden.errors import PipewardenError, UsageError

if TYPE_CHECKING:
    from pipewarden.config import Config


def register(commands: argparse._SubParsersAction) -> None:
    run = add_command(commands, "run", _cmd_run, "run the daemon in the foreground", COMMON)
    run.add_argument(
        "--until-idle", action="store_true",
        help="exit once no item is queued, running or retrying (deferred items wait)",
    )  # fmt: skip
    status = add_command(
        commands, "status", _cmd_status, "what is stuck and why, at a glance", COMMON, AS_JSON
    )
    status.add_argument("--pipeline", help="only this pipeline")
    status.add_argument(
        "-v", "--verbose", action="store_true", help="with each stage's success rate and p50/p95"
    )
    check = add_command(
        commands, "check", _cmd_check,
        "one line and an exit code for monitoring: 0 ok, 1 warning, 2 critical",
        COMMON, AS_JSON,
    )  # fmt: skip
    check.add_argument("--pipeline", help="only this pipeline")
    add_command(commands, "open", _cmd_open, "open the live web page, signed in", COMMON)
    add_command(
        commands, "tray", _cmd_tray, "the tray icon: health at a glance, halts cleared in a click",
        COMMON,
    )  # fmt: skip
    add_command(
        commands, "reload", _cmd_reload, "make the running daemon reload config and rules",
        COMMON, AS_JSON,
    )  # fmt: skip
    _, notify_commands = add_group(commands, "notify", "notification targets")
    add_command(
        notify_commands, "test", _cmd_notify_test,
        "send a test to every target and report each result", COMMON, AS_JSON,
    )  # fmt: skip


def _cmd_run(args: argparse.Namespace) -> int:
    import asyncio

    from pipewarden import logs
    from pipewarden.daemon import Daemon
    from pipewarden.rules import load_rules
    from pipewarden.store import STORE_FILE

    logs.configure()
    config = load_config(args)
    stores_opened.append(config.state_dir / STORE_FILE)
    rules = load_rules(config.rule_paths, config.path.parent)
    daemon = Daemon(config, rules, state_dir_override=args.state_dir)
    return asyncio.run(daemon.run(until_idle=args.until_idle))


def _cmd_status(args: argparse.Namespace) -> int:
    import os

    from pipewarden.render import Paint, status_tree

    config = load_config(args)
    if args.pipeline:
        config.pipeline(args.pipeline)
    snapshot = status_of(config, args.pipeline, args.verbose)
    if args.json:
        print_json(snapshot)
        return EXIT_OK
    paint = Paint(sys.stdout.isatty() and not os.environ.get("NO_COLOR"))
    print(render_daemon_line(snapshot))
    print("\n".join(status_tree(snapshot, paint, args.verbose)))
    return EXIT_OK


def _cmd_check(args: argparse.Namespace) -> int:
    """Like status, but its exit code is the verdict: a monitor runs it, not a person."""
    from pipewarden.check import verdict

    config = load_config(args)
    if args.pipeline:
        config.pipeline(args.pipeline)
    result = verdict(status_of(config, args.pipeline, verbose=True))
    if args.json:
        print_json(result)
    else:
        print(result["line"])
    return result["code"]


def status_of(config: Config, pipeline: str | None, verbose: bool) -> dict[str, Any]:
    """The status snapshot with the daemon's line: from the daemon where the store may be
    its own (a socket), else read from the store."""
    import time

    from pipewarden import faults
    from pipewarden.advising import advise_snapshot, current_rules
    from pipewarden.lock import running_daemon_pid
    from pipewarden.status import status_snapshot

    daemon = daemon_api(config)
    if daemon.via_socket:  # the store may be the daemon's own: ask the daemon
        query = {"verbose": "1" if verbose else "0", **({"pipeline": pipeline}
                                                       if pipeline else {})}  # fmt: skip
        return daemon.get("/api/status", query)
    store = open_store(config, must_exist=True, read_only=True)
    pid = running_daemon_pid(config.state_dir)
    snapshot = status_snapshot(
        config, store, time.time(), pipeline, verbose, daemon_running=pid is not None
    )
    if store:
        store.close()
    advise_snapshot(snapshot, current_rules(config))
    fault = None
    if store and store.kind == "sqlite":  # a database's faults are its server's to say
        fault = faults.check_files(store.path) or faults.disk_full(store.path)
    snapshot["daemon"] = {
        "running": pid is not None,
        "pid": pid,
        "state_dir": str(config.state_dir),
        "store_fault": str(fault) if fault else None,
    }
    return snapshot


def render_daemon_line(snapshot: dict[str, Any]) -> str:
    daemon = snapshot["daemon"]
    state = f"running (pid {daemon['pid']})" if daemon["running"] else "not running"
    line = f"daemon: {state} · state {daemon['state_dir']}"
    if fault := daemon.get("store_fault"):  # what the daemon waits out: above all the rest
        line += f"\n{fault}"
    return line


def _cmd_reload(args: argparse.Namespace) -> int:
    from pipewarden.reload import load_all

    config = load_config(args)
    daemon = daemon_api(config)
    if not daemon.running:
        _, rules = load_all(config.path, args.state_dir)
        print(f"no daemon is running; config and {len(rules.rules)} rules are valid")
        return EXIT_OK
    result = daemon.post("/api/reload", {}, refusal_ok=True)
    if args.json:
        print_json(result)
    elif result["ok"]:
        print(f"reloaded: rules version {result['version']} ({result['rules']} rules)")
        for change in result.get("changes") or ["nothing changed"]:
            print(f"  {change}")
    else:
        print(f"reload failed: {result['error']}", file=sys.stderr)
        print(f"the last good rules (version {result['version']}) stay in force", file=sys.stderr)
    return EXIT_OK if result["ok"] else EXIT_FAILURE


def _cmd_tray(args: argparse.Namespace) -> int:
    import logging

    from pipewarden import logs

    config = load_config(args)
    daemon = daemon_api(config)  # a socket this user may not use: the line naming the group
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

    config = load_config(args)
    if not config.api.enabled:
        raise UsageError("the page needs the API, which is off: remove `api: {enabled: false}`")
    daemon = daemon_api(config)
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

    config = load_config(args)
    targets = config.notify.targets
    if not targets:
        raise UsageError("no notification targets in the config: add them under notify: targets:")
    results = [
        send(target, "pipewarden test", f"A test from pipewarden ({config.path.name}).")
        for target in targets
    ]
    if args.json:
        print_json([{"target": r.target, "ok": r.ok, "error": r.error} for r in results])
    for result in results if not args.json else ():
        print(f"{result.target:<20} {'ok' if result.ok else 'FAILED: ' + (result.error or '')}")
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILURE
