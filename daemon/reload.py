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
CATCH_UP_MS = 1000  # a watch started again reloads at most this long after it is in place
RULE_SUFFIXES = (".yaml", ".yml")


def load_all(config_path: Path, state_dir: str | None) -> tuple[Config, RuleSet]:
    """Parse, validate and compile the config and its rules (blocking: run it in a thread)."""
    config = load_config(config_path, state_dir)
    return config, load_rules(config.rule_paths, config.path.parent)


def watched_folders(config: Config) -> set[Path]:
    """The folders to watch: the config's, and each rule file's (new files in them count)."""
    return {config.path.parent, *(path.parent for path in config.rule_paths)}


async def watch(
    current: Callable[[], Config],
    on_change: Callable[[str], Awaitable[Any]],
    stop: asyncio.Event,
    catch_up: bool = False,
) -> None:
    """Call `on_change` whenever the config or a rule file changes, until `stop` is set.

    `current` gives the config in force. This returns (for the caller to watch again)
    when a reload changes the folders to watch, or a watched folder itself is removed
    or made anew: a folder made anew is not watched until then. A missing folder is a
    FileNotFoundError. With `catch_up`, `on_change` is also called once the watch is
    in place, for what changed while nothing watched.
    """
    import watchfiles  # only the daemon watches

    folders = watched_folders(current())
    for folder in sorted(folders):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not there to watch")

    def relevant(_change: watchfiles.Change, path: str) -> bool:
        changed = Path(path)
        return (
            changed == current().path
            or changed in folders
            or (changed.suffix in RULE_SUFFIXES and changed.parent in folders)
        )

    async for changes in watchfiles.awatch(
        *folders,
        watch_filter=relevant,
        debounce=DEBOUNCE_MS,
        step=10,
        recursive=False,
        stop_event=stop,
        rust_timeout=CATCH_UP_MS,
        yield_on_timeout=True,  # an empty batch once watching has begun: the time to catch up
    ):
        if catch_up:
            catch_up = False
            await on_change("watching again")
        if not changes:
            continue
        names = sorted({Path(path).name for _, path in changes})
        await on_change(f"changed: {', '.join(names)}")
        if watched_folders(current()) != folders or any(Path(p) in folders for _, p in changes):
            return
