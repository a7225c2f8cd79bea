"""`pipewarden init` (a commented config, rules and a worker to start from) and
`pipewarden doctor` (checks that say what to fix)."""

from __future__ import annotations

import os
import sqlite3
import stat
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipewarden import packs
from pipewarden.config import Config, find_config_path, load_config
from pipewarden.errors import PipewardenError, UsageError
from pipewarden.patterns import engine
from pipewarden.rules import load_rules
from pipewarden.store import SCHEMA_VERSION, STORE_FILE

STARTER_CONFIG = """\
# pipewarden config. Durations take a unit: 250ms, 30s, 5m, 2h, 1d.
# `pipewarden doctor` checks it; `pipewarden rules check` checks the rules.

# state_dir: .pipewarden          # the store and the daemon's lock (default: beside this file)
rules:                            # first match wins; edit your files while the daemon runs
  - rules/*.yaml                  # yours (copied from the shipped ones), tried first
{packs}# retention: 90d                  # runs older than this are pruned (0: keep forever)
# drain_grace: 30s                # on stop, how long running attempts may finish
# api: {port: 8765}               # HTTP on 127.0.0.1 for the CLI, the page and the tray

defaults:
  timeout: 2m                     # the watchdog kills the worker's whole process group
  retry: {max_attempts: 3, backoff: 10s, factor: 2, max_backoff: 1h}

pipelines:
  hello:
    stages:
      - name: greet
        python: workers.hello:greet     # a function: module:function, run in a worker pool
        concurrency: 2
      # - name: shout
      #   command: [python3, workers/shout.py]   # or any command: argv, never a shell

# channels:                       # business hours: outside them items wait, never fail
#   sms: {days: mon-fri, hours: "09:00-17:00", timezone: Europe/London}
# notify:                         # Apprise URLs (Slack, email, ...): never logged or shown
#   targets:
#     - url: "slack://TokenA/TokenB/TokenC/#ops"
"""

STARTER_WORKER = '''\
"""A worker: a plain function of the item's data. Raise to fail; return data to merge."""


def greet(data: dict, ctx) -> dict:
    ctx.progress(0.5, "thinking of something nice")
    return {"greeting": f"hello, {data.get('name', 'world')}"}
'''


# Errors every starter meets (HTTP, sockets, the OS); `init --packs` adds the others.
STARTER_PACKS = ("http", "net", "os")


def starter_config(extra_packs: tuple[str, ...] = ()) -> str:
    """The starter config naming the packs it needs, most specific first (packs.ORDER)."""
    known = packs.pack_names()
    for name in extra_packs:
        if name not in known:
            raise UsageError(f"--packs: no pack named '{name}' (shipped: {', '.join(known)})")
    chosen = [name for name in known if name in {*STARTER_PACKS, *extra_packs}]
    others = ", ".join(f"pack:{name}" for name in known if name not in chosen)
    lines = [f"  - pack:{name}" for name in chosen]
    lines += textwrap.wrap(f"# more (`pipewarden rules packs`): {others}", 90,
                           initial_indent="  ", subsequent_indent="  #   ")  # fmt: skip
    return STARTER_CONFIG.replace("{packs}", "".join(f"{line}\n" for line in lines))


def with_port(config: str, port: int) -> str:
    """The starter config with its API on `port` (the usual one was taken)."""
    return config.replace(
        "# api: {port: 8765}               # HTTP on 127.0.0.1",
        f"api: {{port: {port}}}{' ' * (18 - len(str(port)))}# 8765 was taken; HTTP on 127.0.0.1",
    )


def init(folder: Path, extra_packs: tuple[str, ...] = (), api_port: int = 8765) -> list[Path]:
    """Write a starter config, the shipped rules and a worker; never overwrite a file."""
    shipped = packs.shipped_rules_dir()
    if not shipped.is_dir():
        raise PipewardenError(f"the shipped rules are not at {shipped}: reinstall pipewarden")
    planned = {
        folder / "config.yaml": with_port(starter_config(extra_packs), api_port)
        if api_port != 8765
        else starter_config(extra_packs),
        folder / "workers" / "__init__.py": "",
        folder / "workers" / "hello.py": STARTER_WORKER,
        **{folder / "rules" / p.name: p.read_text() for p in sorted(shipped.glob("*.yaml"))},
    }
    existing = [path for path in planned if path.exists()]
    if existing:
        names = ", ".join(str(p) for p in existing)
        raise UsageError(f"{names} already exist: init never overwrites; choose another folder")
    for path, text in planned.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return list(planned)


@dataclass(frozen=True)
class Finding:
    ok: bool
    what: str
    fix: str = ""


def doctor(config_arg: str | None, state_dir: str | None) -> Iterator[Finding]:
    """Every check, in order; a failed config check ends the list (nothing else can run)."""
    try:
        config = load_config(find_config_path(config_arg), state_dir)
    except PipewardenError as exc:
        yield Finding(False, f"config: {exc}", "fix the config, then run doctor again")
        return
    yield Finding(True, f"config: {config.path} ({len(config.pipelines)} pipeline(s))")
    yield from _rules(config)
    yield from _state_dir(config)
    yield from _api_port(config)
    yield from _rule_trouble(config)
    yield from _workers(config)
    yield from _notify(config)


def _rules(config: Config) -> Iterator[Finding]:
    try:
        ruleset = load_rules(config.rule_paths, config.path.parent)
    except PipewardenError as exc:
        yield Finding(False, f"rules: {exc}", "fix the rule; `pipewarden rules check` re-checks")
        return
    yield Finding(True, f"rules: {len(ruleset.rules)} rules, {len(ruleset.halts)} halt rules")
    yield Finding(True, f"rules engine: {engine()}")
    for warning in ruleset.warnings:
        yield Finding(False, f"rules: {warning}")


def _state_dir(config: Config) -> Iterator[Finding]:
    folder = config.state_dir
    if not folder.exists():
        yield Finding(True, f"state dir: {folder} (created at the first start)")
        return
    mode = stat.S_IMODE(folder.stat().st_mode)
    if not os.access(folder, os.X_OK):  # a service's own (0700): its files cannot be checked
        yield Finding(False, f"state dir: {folder} is not this user's ({mode:o})",
                      "run doctor as the daemon's user or as root")  # fmt: skip
        return
    if not os.access(folder, os.W_OK):
        yield Finding(
            False, f"state dir: {folder} is not writable", "chown it to the daemon's user"
        )
    elif mode & 0o077:
        yield Finding(
            False, f"state dir: {folder} is open to others ({mode:o})", f"chmod 700 {folder}"
        )
    else:
        yield Finding(True, f"state dir: {folder} ({mode:o})")
    token = folder / "api.token"
    if token.exists() and stat.S_IMODE(token.stat().st_mode) != 0o600:
        yield Finding(False, f"api token: {token} is readable by others", f"chmod 600 {token}")
    store = folder / STORE_FILE
    if store.exists():
        yield from _store(store)


def _store(path: Path) -> Iterator[Finding]:
    """Its integrity (PRAGMA quick_check, read-only: doctor changes nothing), its schema and
    who may read its files."""
    from pipewarden import faults

    schema = SCHEMA_VERSION
    try:
        faults.refuse_emptied(path)
        connection = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
        try:
            if not (problem := faults.quick_check(connection, path)):
                schema = connection.execute("PRAGMA user_version").fetchone()[0]
        finally:
            connection.close()
    except sqlite3.Error as exc:  # locked, unreadable, ...: said, never a traceback
        fault = faults.fault_of(exc, path)
        if fault is None or fault.passing:
            yield Finding(False, f"store: {path} cannot be checked ({exc})")
            return
        problem = fault.detail
    except faults.StoreFault as fault:  # emptied
        problem = fault.detail
    if problem:
        yield Finding(False, f"store {path} is damaged ({problem})",
                      "restore a backup (pipewarden backup) or move it aside")  # fmt: skip
        return
    yield Finding(True, f"store: {path} passes its integrity check")
    if schema < SCHEMA_VERSION:
        older = f"store: schema {schema}, older than this pipewarden's ({SCHEMA_VERSION})"
        yield Finding(False, older, "start the daemon or run `pipewarden migrate`")
    for suffix in ("", "-wal", "-shm"):
        file = path.with_name(path.name + suffix)
        if file.exists() and (mode := stat.S_IMODE(file.stat().st_mode)) & 0o077:
            yield Finding(False, f"store: {file} is open to others ({mode:o})",
                          f"chmod 600 {file}")  # fmt: skip


def _api_port(config: Config) -> Iterator[Finding]:
    """The API's port is free, or held by this config's own daemon."""
    from pipewarden.client import health_answers
    from pipewarden.lock import running_daemon_pid
    from pipewarden.ports import a_free_port, port_free

    if not config.api.enabled or config.api.socket is not None:
        return
    port = config.api.port
    if port_free(port):
        yield Finding(True, f"api: port {port} is free")
    elif running_daemon_pid(config.state_dir) is not None and health_answers(port):
        yield Finding(True, f"api: port {port} is this daemon's")
    else:
        held = "another pipewarden daemon" if health_answers(port) else "another program"
        yield Finding(False, f"api: port {port} is taken by {held}",
                      f"give this one another: api: {{port: {a_free_port()}}}")  # fmt: skip


def _rule_trouble(config: Config) -> Iterator[Finding]:
    """Rules the daemon found giving up on messages (out of time, or failing)."""
    import json

    from pipewarden.render import describe_rule_trouble

    store = config.state_dir / STORE_FILE
    if not os.access(store, os.R_OK):  # missing or not ours: the state dir check says which
        return
    connection = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        rows = dict(connection.execute(
            "SELECT key, value FROM meta WHERE key IN ('reload', 'rules_trouble')"
        ).fetchall())  # fmt: skip
    except sqlite3.Error:
        return  # an unreadable store is the store check's to report
    finally:
        connection.close()
    reload = json.loads(rows.get("reload") or "null") or {}
    trouble = json.loads(rows.get("rules_trouble") or "null") or {}
    if trouble.get("version") != reload.get("version"):
        return
    for entry in trouble.get("rules", []):
        yield Finding(False, f"rules: {describe_rule_trouble(entry)}")


def _workers(config: Config) -> Iterator[Finding]:
    from pipewarden.worker_check import check_stage

    for pipeline in config.pipelines.values():
        for stage in pipeline.stages:
            yield from check_stage(stage)


def _notify(config: Config) -> Iterator[Finding]:
    if not config.notify.targets:
        yield Finding(True, "notify: no targets (halts and failures are only logged)")
        return
    import apprise

    for target in config.notify.targets:
        if apprise.Apprise().add(target.url):
            yield Finding(True, f"notify: {target.id} understood (`pipewarden notify test` sends)")
        else:
            yield Finding(False, f"notify: {target.id} is not a URL Apprise understands",
                          "see Apprise's list of services")  # fmt: skip
