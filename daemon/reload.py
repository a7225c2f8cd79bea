"""Live reload: watch the config file and the rule files, and load them off the loop.

A change (or SIGHUP, or `pipewarden reload`) makes the daemon load everything again
in a thread, validate and compile it, and swap it in at once. A bad edit raises a
ConfigError with file:line:column; the daemon keeps the last good rules in force. The
daemon supervises the watcher: if it ever fails, it is logged and started again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pipewarden.config import Config, load_config
from pipewarden.rules import RuleSet, load_rules

log = logging.getLogger("pipewarden.reload")

DEBOUNCE_MS = 50  # editors write a file in several steps; wait this long for quiet
RULE_SUFFIXES = (".yaml", ".yml")


def load_all(config_path: Path, state_dir: str | None) -> tuple[Config, RuleSet]:
    """Parse, validate and compile the config and its rules (blocking: run it in a thread)."""
    config = load_config(config_path, state_dir)
    return config, load_rules(config.rule_paths, config.path.parent)


def watched_folders(config: Config) -> set[Path]:
    """The folders to watch: the config's, and each rule file's (new files in them count)."""
    return {config.path.parent, *(path.parent for path in config.rule_paths)}


async def watch(
    current: Callable[[], Config], on_change: Callable[[str], Awaitable[Any]], stop: asyncio.Event
) -> None:
    """Call `on_change` whenever the config or a rule file changes, until `stop` is set.

    `current` gives the config in force. When a reload changes the folders to watch
    (a new rules glob), this returns, so that the caller watches the new ones.
    """
    import watchfiles  # only the daemon watches

    folders = watched_folders(current())

    def relevant(_change: watchfiles.Change, path: str) -> bool:
        changed = Path(path)
        return changed == current().path or (
            changed.suffix in RULE_SUFFIXES and changed.parent in folders
        )

    async for changes in watchfiles.awatch(
        *folders,
        watch_filter=relevant,
        debounce=DEBOUNCE_MS,
        step=10,
        recursive=False,
        stop_event=stop,
    ):
        names = sorted({Path(path).name for _, path in changes})
        await on_change(f"changed: {', '.join(names)}")
        if watched_folders(current()) != folders:
            return
