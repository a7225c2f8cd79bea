"""Setting up: a new project (`init`), and a check of one (`doctor`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipewarden.cli.shared import COMMON, EXIT_FAILURE, EXIT_OK, add_command


def register(commands: argparse._SubParsersAction) -> None:
    init = add_command(commands, "init", _cmd_init, "write a commented config, rules and a worker")
    init.add_argument("folder", nargs="?", default=".", help="where (default: here)")
    init.add_argument(
        "--packs", default="",
        help="rule packs to add to http, net and os, e.g. browser,sms (see `rules packs`)",
    )  # fmt: skip
    add_command(
        commands, "doctor", _cmd_doctor, "check the config, rules, state dir, workers, targets",
        COMMON,
    )  # fmt: skip


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
