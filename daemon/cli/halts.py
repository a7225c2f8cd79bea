"""Halts and pauses: list them, clear a halt, pause or resume a channel, stage or pipeline."""

from __future__ import annotations

import argparse

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


def register(commands: argparse._SubParsersAction) -> None:
    halts = add_command(commands, "halts", _cmd_halts, "active halts and pauses", COMMON, AS_JSON)
    halts_commands = halts.add_subparsers(title="commands", metavar="COMMAND")
    clear = add_command(
        halts_commands, "clear", _cmd_halts_clear,
        "clear the halt on a channel, pipeline/stage or pipeline", COMMON, AS_JSON,
    )  # fmt: skip
    clear.add_argument("target", help="e.g. sms, sites/capture or outreach")

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
    from pipewarden.status import hold_as_dict

    config = load_config(args)
    daemon = daemon_api(config)
    if daemon.via_socket:  # the store may be the daemon's own: ask the daemon
        holds = daemon.get("/api/halts")
    else:
        store = open_store(config, must_exist=True, read_only=True)
        holds = [hold_as_dict(hold) for hold in store.active_holds()] if store else []
        if store:
            store.close()
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
    import time

    from pipewarden import control
    from pipewarden.notifier import Notifier
    from pipewarden.status import hold_as_dict

    config = load_config(args)
    daemon = daemon_api(config)
    if daemon.running:
        cleared = daemon.post("/api/halts/clear", {"target": args.target})["cleared"]
    else:
        store = open_store(config)
        try:
            holds = control.clear_halt(
                store, Notifier(store, config.notify), args.target, who(), time.time()
            )
            cleared = [hold_as_dict(hold) for hold in holds]
        finally:
            store.close()
    if args.json:
        print_json({"cleared": cleared})
    else:
        print(told(daemon, f"cleared the halt on {args.target}"))
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
