"""Live reload: watch the config file, the rule files and the stages' own code, and load
them off the loop.

A change (or SIGHUP, or `pipewarden reload`) makes the daemon load everything again
in a thread, validate and compile it, and swap it in at once. A bad edit raises a
ConfigError with file:line:column; the daemon keeps the last good rules in force. The
daemon supervises the watcher: if it ever fails, it is logged and started again.

A stage's code is the source files under the config's folder that its worker runs: a
`python:` stage's module and the modules it imports from there, a command's script (and
its imports, for a Python script). Their hashes are part of every run's input fingerprint,
and a pool stage whose code changed gets new workers (the scheduler's part).
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from pipewarden.config import Config, Stage, load_config
from pipewarden.limits import MIB
from pipewarden.rules import RuleSet, load_rules

log = logging.getLogger("pipewarden.reload")

DEBOUNCE_MS = 50  # editors write a file in several steps; wait this long for quiet
CATCH_UP_MS = 1000  # a watch started again reloads at most this long after it is in place
RULE_SUFFIXES = (".yaml", ".yml")
CODE_FILES_MAX = 500  # a stage's source files followed at most: a reload stays quick
CODE_FILE_READ_MAX = 4 * MIB  # bigger files are known by size and time, not read


@dataclass(frozen=True)
class StageCode:
    """A stage's own source files, each with the hash of what it holds."""

    files: dict[Path, str]

    @cached_property
    def digest(self) -> str:
        blob = "\n".join(f"{path}={digest}" for path, digest in sorted(self.files.items()))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def edited(self, before: StageCode | None, root: Path) -> list[str]:
        """The files (relative to `root`) that differ from `before`: changed, new or gone."""
        old = before.files if before else {}
        paths = {p for p in {*old, *self.files} if old.get(p) != self.files.get(p)}
        return sorted(_shown(path, root) for path in paths)


def stage_code(config: Config) -> dict[str, StageCode]:
    """Each stage's code (by its qualified name), where any is under the config's folder."""
    import importlib

    importlib.invalidate_caches()  # a module written since the last look is found
    root = config.path.parent.resolve()
    hashes: dict[Path, str] = {}
    code = {}
    for pipeline in config.pipelines.values():
        for stage in pipeline.stages:
            files = _source_files(stage, root)
            for path in files - hashes.keys():
                hashes[path] = _file_hash(path)
            if files:
                code[stage.qualified_name] = StageCode({path: hashes[path] for path in files})
    return code


def code_folders(code: dict[str, StageCode]) -> set[Path]:
    """The folders the stages' code lives in (a new module in one of them counts)."""
    return {path.parent for stage in code.values() for path in stage.files if path.parent.is_dir()}


def _source_files(stage: Stage, root: Path) -> set[Path]:
    """What the stage's worker runs from under `root`; its imports followed from where the
    worker imports them (its cwd for a `python:` stage, a script's own folder)."""
    if stage.python:
        return _followed([stage.python.partition(":")[0]], stage.cwd.resolve(), root)
    scripts = [path for arg in stage.command or () if (path := _script(arg, stage.cwd, root))]
    files = set(scripts)
    for script in scripts:
        if script.suffix == ".py":
            files |= _followed(_imports(script, ""), script.parent, root)
    return files


def _script(arg: str, cwd: Path, root: Path) -> Path | None:
    """The file under `root` a command's argument names, if it names one."""
    try:
        path = (cwd / arg).resolve()
        return path if path.is_relative_to(root) and path.is_file() else None
    except (OSError, RuntimeError, ValueError):  # a name too long, a symlink loop, a NUL
        return None


def _followed(modules: list[str], search: Path, root: Path) -> set[Path]:
    """The source files under `root` of `modules` and of what they import, transitively, as
    an import finds them from `search` (the worker's first sys.path entry)."""
    found: set[Path] = set()
    pending, seen = list(modules), set()
    while pending and len(found) < CODE_FILES_MAX:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        for name, path, package in _located(module, search):
            if path in found or not path.is_relative_to(root):
                continue
            found.add(path)
            pending += _imports(path, name if package else name.rpartition(".")[0])
    return found


def _located(module: str, search: Path) -> Iterator[tuple[str, Path, bool]]:
    """(name, source file, is a package) of `module` and the packages above it, as found
    from `search`; nothing for what is not there (the standard library, installed ones)."""
    from importlib.machinery import PathFinder

    locations = [str(search)]
    parts = module.split(".")
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        try:
            spec = PathFinder.find_spec(name, locations)
        except (ImportError, ValueError, OSError):
            return
        if spec is None:
            return
        package = spec.submodule_search_locations is not None
        if spec.has_location and spec.origin and spec.origin.endswith(".py"):
            yield name, Path(spec.origin).resolve(), package
        if not package:
            return
        locations = list(spec.submodule_search_locations or ())


def _imports(path: Path, package: str) -> list[str]:
    """The modules a source file imports (anywhere in it), as absolute names; none where it
    cannot be read or parsed (the file itself still counts: fixing it is a change)."""
    try:
        tree = ast.parse(path.read_bytes(), str(path))
    except (OSError, SyntaxError, ValueError, RecursionError):
        return []
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, package)
            if base is None:
                continue
            if base:
                names.append(base)
            names += [f"{base}.{a.name}" if base else a.name for a in node.names if a.name != "*"]
    return names


def _absolute(module: str | None, level: int, package: str) -> str | None:
    """`from .x import y` in `package` as an absolute name; None where it cannot resolve."""
    if level == 0:
        return module or ""
    parts = package.split(".") if package else []
    if level > len(parts):
        return None
    base = parts[: len(parts) - level + 1]
    return ".".join([*base, module] if module else base)


def _file_hash(path: Path) -> str:
    """What the file holds, as a hash; a big one (a command's data file, not its code) by its
    size and time of change, so a reload never reads gigabytes."""
    try:
        stat = path.stat()
        if stat.st_size > CODE_FILE_READ_MAX:
            return f"{stat.st_size} bytes, changed {stat.st_mtime_ns}"
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError as exc:  # gone or unreadable since it was found: that, too, is its state
        return f"unreadable: {exc.strerror}"


def _shown(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


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
    code: Callable[[], dict[str, StageCode]] = dict,
) -> None:
    """Call `on_change` whenever the config, a rule file or a stage's code changes, until
    `stop` is set.

    `current` gives the config in force, `code` the stages' code as last loaded. This
    returns (for the caller to watch again) when a reload changes the folders to watch, or
    a watched folder itself is removed or made anew: a folder made anew is not watched
    until then. A missing config or rules folder is a FileNotFoundError (a code folder
    that is gone is simply not watched). With `catch_up`, `on_change` is also called once
    the watch is in place, for what changed while nothing watched.
    """
    import watchfiles  # only the daemon watches

    required = watched_folders(current())
    for folder in sorted(required):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not there to watch")
    sources = code_folders(code())
    folders = required | sources

    def relevant(_change: watchfiles.Change, path: str) -> bool:
        changed = Path(path)
        return (
            changed == current().path
            or changed in folders
            or (changed.suffix in RULE_SUFFIXES and changed.parent in required)
            or any(changed in stage.files for stage in code().values())
            # any module there: one a changed file now imports may be new
            or (changed.suffix == ".py" and changed.parent in sources)
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
        now_watched = watched_folders(current()) | code_folders(code())
        if now_watched != folders or any(Path(p) in folders for _, p in changes):
            return
