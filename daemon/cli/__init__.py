"""The `pipewarden` command: one module per command group, each registering its commands.

Start-up stays cheap: each command imports what it needs when it runs, so `--help`
and `status` never pay for modules they do not use.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from pipewarden import __version__
from pipewarden.cli import (
    books,
    completion,
    halts,
    items,
    replay,
    rules,
    runs,
    service,
    setup,
    templates,
)
from pipewarden.cli.shared import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    add_global_options,
    stores_opened,
)
from pipewarden.errors import ConfigError, PipewardenError, UsageError

GROUPS = (service, items, runs, replay, halts, rules, books, setup, templates, completion)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(command_asked_for(argv))
    args = parser.parse_args(argv)
    for name in ("config", "state_dir"):  # given neither before nor after the command
        if not hasattr(args, name):
            setattr(args, name, None)
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

        if not stores_opened or (fault := fault_of(exc, stores_opened[-1])) is None:
            raise
        print(f"pipewarden: {fault}", file=sys.stderr)
        return fault.exit_code


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with `command`, only that command's parser is built (the
    other forty cost a one-item enqueue a tenth of its time). A name no group registers
    builds them all, so argparse's 'invalid choice' lists every command."""
    parser = argparse.ArgumentParser(
        prog="pipewarden",
        description="Runs automation pipelines under a watchdog and says what is wrong.",
    )
    parser.add_argument("--version", action="version", version=f"pipewarden {__version__}")
    add_global_options(parser)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    only = _OnlyOne(commands, command) if command is not None else None
    for group in GROUPS:
        group.register(only or commands)  # type: ignore[arg-type]  # the same add_parser
    if only is not None and not only.found:
        return build_parser()
    return parser


def command_asked_for(argv: list[str]) -> str | None:
    """The command word in `argv` (None for none, or when help or the version is asked)."""
    takes_a_value = False
    for arg in argv:
        if takes_a_value:
            takes_a_value = False
        elif arg in ("--config", "--state-dir"):
            takes_a_value = True
        elif arg in ("-h", "--help", "--version"):
            return None
        elif not arg.startswith("-"):
            return arg
    return None


class _OnlyOne:
    """The subparsers as the command groups see them when one command is asked for: its
    parser is made; every other is a _Discarded that takes its arguments and keeps none."""

    def __init__(self, commands: argparse._SubParsersAction, wanted: str):
        self._commands = commands
        self._wanted = wanted
        self.found = False

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        if self._wanted == name or self._wanted in kwargs.get("aliases", ()):
            self.found = True
            return self._commands.add_parser(name, **kwargs)
        return _Discarded()


class _Discarded:
    """A parser not asked for: every method takes anything and returns another one."""

    def __getattr__(self, _name: str) -> Callable[..., _Discarded]:
        return lambda *args, **kwargs: _Discarded()
