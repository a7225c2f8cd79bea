"""Setting up: a new project (`init`), and a check of one (`doctor`)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from pipewarden.cli.shared import COMMON, EXIT_FAILURE, EXIT_OK, add_command


def register(commands: argparse._SubParsersAction) -> None:
    init = add_command(commands, "init", _cmd_init, "write a commented config, rules and a worker")
    init.add_argument("folder", nargs="?", default=".", help="where (default: here)")
    init.add_argument(
        "--packs", default="",
        help="rule packs to add to http, net and os, e.g. browser,sms (see `rules packs`)",
    )  # fmt: skip
    init.add_argument(
        "--port", type=int,
        help="the API's port (default: 8765, or a free one when that is taken)",
    )  # fmt: skip
    add_command(
        commands, "doctor", _cmd_doctor, "check the config, rules, state dir, workers, targets",
        COMMON,
    )  # fmt: skip


def _cmd_init(args: argparse.Namespace) -> int:
    from pipewarden.ports import DEFAULT_PORT, port_or_free
    from pipewarden.setup import init

    folder = Path(args.folder).resolve()
    extra = tuple(name.strip() for name in args.packs.split(",") if name.strip())
    port = args.port if args.port is not None else port_or_free(DEFAULT_PORT)
    for path in init(folder, extra, port):
        print(f"wrote {path}")
    if port != DEFAULT_PORT and args.port is None:
        print(f"port {DEFAULT_PORT} is taken (another pipewarden?): this project's API uses"
              f" {port} (api: in {folder / 'config.yaml'})")  # fmt: skip
    pw = this_pipewarden()
    print("next:")
    print(f"  cd {shlex.quote(str(folder))}")
    print(f"  {pw} doctor                  # checks the config, rules and workers")
    print(f"  {pw} run &                   # the daemon (Ctrl-C in its terminal stops it)")
    print(f"  {pw} enqueue hello world")
    print(f"  {pw} status")
    return EXIT_OK


def this_pipewarden() -> str:
    """The command that runs this pipewarden, as typed in a shell anywhere: the script
    beside this interpreter (a venv's, pipx's), else the interpreter with -m."""
    import shutil
    import sys

    script = Path(sys.executable).with_name("pipewarden")
    if script.is_file():
        return shlex.quote(str(script))
    on_path = shutil.which("pipewarden")
    if on_path:
        return shlex.quote(on_path)
    return f"{shlex.quote(sys.executable)} -m pipewarden"


def _cmd_doctor(args: argparse.Namespace) -> int:
    from pipewarden.setup import doctor

    failed = 0
    for finding in doctor(args.config, args.state_dir):
        mark = "ok  " if finding.ok else "FAIL"
        print(f"{mark} {finding.what}" + (f" — {finding.fix}" if finding.fix else ""))
        failed += not finding.ok
    print("all good" if not failed else f"{failed} problem(s) to fix")
    return EXIT_OK if not failed else EXIT_FAILURE
