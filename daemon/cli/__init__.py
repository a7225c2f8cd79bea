"""The `pipewarden` command: one module per command group, each registering its commands.

Start-up stays cheap: each command imports what it needs when it runs, so `--help`
and `status` never pay for modules they do not use.
"""

from __future__ import annotations

import argparse
import sys

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
    parser = build_parser()
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipewarden",
        description="Runs automation pipelines under a watchdog and says what is wrong.",
    )
    parser.add_argument("--version", action="version", version=f"pipewarden {__version__}")
    add_global_options(parser)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for group in GROUPS:
        group.register(commands)
    return parser
