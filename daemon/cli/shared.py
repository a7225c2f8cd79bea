"""What every command group shares: exit codes, the common options, the config, the store
and the daemon's API as a command reaches them."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipewarden.errors import UsageError

if TYPE_CHECKING:
    from pipewarden.client import DaemonApi
    from pipewarden.config import Config
    from pipewarden.store import Storage

EXIT_OK = 0
EXIT_FAILURE = 1  # the command ran and something is wrong (a run not found, a daemon error)
EXIT_USAGE = 2  # bad arguments, config or rules, a damaged store

Handler = Callable[[argparse.Namespace], int]

stores_opened: list[Path] = []  # an error of the store a command reads is told by its path


def add_global_options(parser: argparse.ArgumentParser) -> None:
    """--config and --state-dir, taken before the command as after it."""
    # SUPPRESS: an option not given after the command leaves the one given before it alone
    # (`pipewarden --config X status`); main() fills in None for neither.
    parser.add_argument(
        "--config", default=argparse.SUPPRESS,
        help="config file (default: $PIPEWARDEN_CONFIG or ./config.yaml)",
    )  # fmt: skip
    parser.add_argument(
        "--state-dir", default=argparse.SUPPRESS,
        help="state directory (default: .pipewarden beside the config)",
    )  # fmt: skip


COMMON = argparse.ArgumentParser(add_help=False)
add_global_options(COMMON)
AS_JSON = argparse.ArgumentParser(add_help=False)
AS_JSON.add_argument("--json", action="store_true", help="print JSON instead of text")


def add_command(
    commands: argparse._SubParsersAction, name: str, handler: Handler, help: str,
    *parents: argparse.ArgumentParser,
) -> argparse.ArgumentParser:  # fmt: skip
    sub = commands.add_parser(name, help=help, description=help, parents=list(parents))
    sub.set_defaults(handler=handler)
    return sub


def add_group(
    commands: argparse._SubParsersAction, name: str, help: str,
    *parents: argparse.ArgumentParser,
) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:  # fmt: skip
    """A command of commands (`runs`, `rules`...): given alone, it prints its own help."""
    group = commands.add_parser(name, help=help, description=help, parents=list(parents))
    group.set_defaults(handler=lambda args: _print_help(group))
    return group, group.add_subparsers(title="commands", metavar="COMMAND")


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return EXIT_USAGE


def load_config(args: argparse.Namespace) -> Config:
    from pipewarden.config import find_config_path
    from pipewarden.config import load_config as load

    return load(find_config_path(args.config), args.state_dir)


def open_store(config: Config, must_exist: bool = False, read_only: bool = False) -> Storage | None:
    """The config's store (None if it `must_exist` and does not); `read_only`: a command
    that only reads opens it so, and never migrates it."""
    from pipewarden.client import store_exists
    from pipewarden.store import STORE_FILE, open_configured

    if config.store_url is not None:  # a database: there, or the open says why not
        stores_opened.append(config.store_url)
        return open_configured(config, read_only=read_only)
    path = config.state_dir / STORE_FILE
    if not store_exists(config, path, look_elsewhere=must_exist) and must_exist:
        return None
    stores_opened.append(path)
    return open_configured(config, read_only=read_only)


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def daemon_api(config: Config) -> DaemonApi:
    from pipewarden.client import DaemonApi

    return DaemonApi(config)


def who() -> str:
    import getpass

    return f"{getpass.getuser()} (cli)"


def told(daemon: DaemonApi, what: str) -> str:
    """Say what changed, and make sure a running daemon acts on it now."""
    from pipewarden.lock import poke_daemon

    # Through the API the daemon already knows; a daemon without an API gets a SIGUSR1.
    if daemon.running or poke_daemon(daemon.config.state_dir):
        return f"{what}; the running daemon has been told"
    return f"{what}; no daemon is running (it takes effect when one starts)"


def duration_arg(text: str, option: str) -> float:
    from pipewarden._yaml import parse_duration

    try:
        return parse_duration(text)
    except ValueError:
        raise UsageError(f"{option} takes a duration such as 30d or 12h, not '{text}'") from None


def terminal_width() -> int | None:
    """The terminal's columns; where output is not a terminal, $COLUMNS if set, else None
    (never cut: a pipe or a file gets every character)."""
    import os
    import shutil

    if sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else None
