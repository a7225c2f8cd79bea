"""Halts and pauses: list them, clear a halt, pause or resume a channel, stage or pipeline."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from pipewarden.cli.shared import (
    AS_JSON,
    COMMON,
    EXIT_OK,
    add_command,
    daemon_api,
    load_config,
    open_store,
    print_json,
    told,
    who,
)
from pipewarden.errors import UsageError

if TYPE_CHECKING:
    from pipewarden.client import DaemonApi
    from pipewarden.config import Config


def register(commands: argparse._SubParsersAction) -> None:
    halts = add_command(commands, "halts", _cmd_halts, "active halts and pauses", COMMON, AS_JSON)
    halts_commands = halts.add_subparsers(title="commands", metavar="COMMAND")
    clear = add_command(
        halts_commands, "clear", _cmd_halts_clear,
        "clear the halt on a channel, pipeline/stage or pipeline", COMMON, AS_JSON,
    )  # fmt: skip
    clear.add_argument("target", nargs="?", help="e.g. sms, sites/capture or outreach")
    clear.add_argument("--all", action="store_true", help="every active halt")
    clear.add_argument(
        "--dry-run", action="store_true", help="list the halts it would clear, clear nothing"
    )

    for name, handler, verb in (("pause", _cmd_pause, "stop claiming"), ("resume", _cmd_resume,
                                "claim again")):  # fmt: skip
        sub = add_command(
            commands, name, handler, f"{verb} for a channel, a stage or a pipeline",
            COMMON, AS_JSON,
        )  # fmt: skip
        target = sub.add_mutually_exclusive_group(required=True)
        target.add_argument("--channel", help="e.g. sms")
        target.add_argument("--stage", help="pipeline/stage, e.g. sites/capture")
        target.add_argument("--pipeline", help="e.g. outreach")
        if name == "pause":
            sub.add_argument(
                "--force", action="store_true",
                help="pause a channel no item has had yet (else refused as a typo)",
            )  # fmt: skip


def _cmd_halts(args: argparse.Namespace) -> int:
    from pipewarden.render import describe_hold

    config = load_config(args)
    holds = _active_holds(config, daemon_api(config))
    if args.json:
        print_json(holds)
        return EXIT_OK
    if not holds:
        print("no halts or pauses: everything flows")
    for hold in holds:
        print(f"{hold['kind']:<6} {hold['scope']:<9} {describe_hold(hold)}")
        if hold["kind"] == "halt":
            print(f"{'':17}rule {hold['rule']}; clear: pipewarden halts clear {hold['target']}")
    return EXIT_OK


def _cmd_halts_clear(args: argparse.Namespace) -> int:
    if (args.target is None) == (not args.all):
        raise UsageError("halts clear takes a TARGET or --all (one of them)")
    config = load_config(args)
    daemon = daemon_api(config)
    targets = _halted_targets(config, daemon) if args.all else [args.target]
    if args.dry_run:
        return _clear_dry_run(args, config, daemon, targets)
    cleared = [hold for target in targets for hold in _clear(config, daemon, target)]
    if args.json:
        print_json({"cleared": cleared})
    elif not targets:
        print("no active halt: nothing to clear")
    else:
        print(told(daemon, f"cleared the halt on {', '.join(targets)}"))
    return EXIT_OK


def _clear(config: Config, daemon: DaemonApi, target: str) -> list[dict[str, Any]]:
    import time

    from pipewarden import control
    from pipewarden.notifier import Notifier
    from pipewarden.status import hold_as_dict

    if daemon.running:
        return daemon.post("/api/halts/clear", {"target": target})["cleared"]
    store = open_store(config)
    try:
        holds = control.clear_halt(
            store, Notifier(store, config.notify), target, who(), time.time()
        )
        return [hold_as_dict(hold) for hold in holds]
    finally:
        store.close()


def _active_holds(config: Config, daemon: DaemonApi) -> list[dict[str, Any]]:
    from pipewarden.status import hold_as_dict

    if daemon.via_socket:  # the store may be the daemon's own: ask the daemon
        return daemon.get("/api/halts")
    store = open_store(config, must_exist=True, read_only=True)
    if store is None:
        return []
    try:
        return [hold_as_dict(hold) for hold in store.active_holds()]
    finally:
        store.close()


def _halted_targets(config: Config, daemon: DaemonApi) -> list[str]:
    holds = _active_holds(config, daemon)
    return list(dict.fromkeys(hold["target"] for hold in holds if hold["kind"] == "halt"))


def _clear_dry_run(
    args: argparse.Namespace, config: Config, daemon: DaemonApi, targets: list[str]
) -> int:
    from pipewarden.dryrun import listed
    from pipewarden.render import describe_hold

    halts = [h for h in _active_holds(config, daemon) if h["kind"] == "halt"]
    found = listed([describe_hold(h) for h in halts if h["target"] in targets])
    if args.json:
        print_json({"dry_run": True, "halts": found.as_dict()})
    else:
        print("\n".join(found.lines(f"would clear {found.total} halt(s)")))
    return EXIT_OK


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

    config = load_config(args)
    request = _hold_request(args)
    scope, target = request["scope"], control.hold_target(config, **request)
    daemon = daemon_api(config)
    known_only = not getattr(args, "force", False)  # a typo'd channel is refused
    if daemon.running:
        body = {"scope": scope, "target": target, "known_only": known_only}
        answer = daemon.post(f"/api/{action}", body)
        changed = not answer["already"] if action == "pause" else answer["was_paused"]
    else:
        store = open_store(config)
        try:
            change = control.pause if action == "pause" else control.resume
            changed = change(store, config, scope, target, who(), time.time(), known_only)
        finally:
            store.close()
    if args.json:
        print_json({"action": action, "scope": scope, "target": target, "changed": changed})
    elif not changed:
        print(f"{scope} {target} {'was already paused' if action == 'pause' else 'was not paused'}")
    elif action == "pause":
        print(told(daemon, f"paused {scope} {target}: its items stay queued"))
    else:
        print(told(daemon, f"resumed {scope} {target}"))
    return EXIT_OK
