"""Keeping the books: prune old runs, vacuum, back up, migrate and export the store."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pipewarden.cli.shared import (
    AS_JSON,
    COMMON,
    EXIT_OK,
    add_command,
    add_group,
    duration_arg,
    load_config,
    open_store,
    print_json,
)
from pipewarden.errors import PipewardenError, UsageError

if TYPE_CHECKING:
    from pipewarden.store import Store


EXPORT_TICK = 1000  # rows between two moves of the progress bar


def register(commands: argparse._SubParsersAction) -> None:
    prune = add_command(
        commands, "prune", _cmd_prune, "delete old runs (never an item's latest)", COMMON, AS_JSON
    )
    prune.add_argument("--older-than", required=True, help="e.g. 30d")
    prune.add_argument(
        "--dry-run", action="store_true", help="list them (the first 20) and count, delete nothing"
    )
    add_command(
        commands, "vacuum", _cmd_vacuum, "give the space of deleted rows back to the disk", COMMON
    )
    backup = add_command(
        commands, "backup", _cmd_backup, "a consistent copy of the store, while it runs", COMMON
    )
    backup.add_argument("path", help="where to write the copy")
    add_command(commands, "migrate", _cmd_migrate, "upgrade the store to this version's schema",
                COMMON)  # fmt: skip
    _, export_commands = add_group(commands, "export", "export records")
    export_runs = add_command(
        export_commands, "runs", _cmd_export_runs, "every run, oldest first", COMMON
    )
    export_runs.add_argument("--format", choices=("csv", "jsonl"), default="jsonl")
    export_runs.add_argument("--since", help="only runs started within this long, e.g. 7d")
    export_runs.add_argument("--output", help="a file (default: standard output)")


def _cmd_prune(args: argparse.Namespace) -> int:
    import time

    from pipewarden.dryrun import prune_preview
    from pipewarden.progress import Progress

    older_than = time.time() - duration_arg(args.older_than, "--older-than")
    store = open_store(load_config(args), read_only=args.dry_run, must_exist=args.dry_run)
    if store is None:  # a dry run on no store yet
        print(f"would prune 0 run(s) older than {args.older_than}")
        return EXIT_OK
    try:
        found = prune_preview(store, older_than)
        if args.dry_run:
            if args.json:
                print_json({"dry_run": True, "runs": found.as_dict()})
            else:
                head = f"would prune {found.total:,} run(s) older than {args.older_than}"
                print("\n".join(found.lines(head)))
            return EXIT_OK
        total = 0
        with Progress(found.total, "prune", "run") as bar:
            while deleted := store.prune_batch(older_than):
                total += deleted
                bar.advance(deleted)
    finally:
        store.close()
    if args.json:
        print_json({"pruned_runs": total})
    else:
        print(f"pruned {total:,} run(s) older than {args.older_than}")
        print("(`pipewarden vacuum` gives the space back to the disk)")
    return EXIT_OK


def _cmd_vacuum(args: argparse.Namespace) -> int:
    store = open_store(load_config(args))
    if store.kind != "sqlite":
        store.vacuum()
        store.close()
        print(f"vacuumed {store.path} (VACUUM ANALYZE)")
        return EXIT_OK
    before = store.path.stat().st_size
    store.vacuum()
    after = store.path.stat().st_size
    store.close()
    print(f"vacuumed {store.path}: {before / 1e6:,.1f} MB -> {after / 1e6:,.1f} MB")
    return EXIT_OK


def _cmd_backup(args: argparse.Namespace) -> int:
    import sqlite3

    target = Path(args.path).resolve()
    if target.exists():
        raise UsageError(f"{target} exists: choose a new path (a backup never overwrites)")
    from pipewarden.progress import Progress

    store = open_store(load_config(args), must_exist=True)
    if store is None:
        raise PipewardenError("there is no store to back up yet")
    try:
        if store.kind != "sqlite":  # pg_dump checked what it read; restore with pg_restore
            store.backup(target)
            print(f"backed up {store.path} to {target} (pg_dump's custom format: pg_restore"
                  " restores it)")  # fmt: skip
            return EXIT_OK
        with Progress(None, "backup", "B") as bar:
            store.backup(target, bar.reach)
    except sqlite3.Error as exc:  # a damaged store is its own line; else the copy's disk
        from pipewarden.faults import fault_of

        target.unlink(missing_ok=True)
        if (fault := fault_of(exc, store.path)) is not None and not fault.passing:
            raise fault from None
        raise PipewardenError(f"cannot write the backup {target}: {exc}") from None
    finally:
        store.close()
    check = sqlite3.connect(target)
    try:
        result = check.execute("PRAGMA integrity_check").fetchone()[0]
        runs = check.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    finally:
        check.close()
    if result != "ok":
        raise PipewardenError(f"the backup at {target} failed its integrity check: {result}")
    print(f"backed up {runs:,} run(s) to {target} (integrity check: ok)")
    return EXIT_OK


def _cmd_migrate(args: argparse.Namespace) -> int:
    config = load_config(args)
    store = open_store(config, must_exist=True)
    if store is None:
        print(f"no store at {config.state_dir}: nothing to migrate (the first start makes one)")
        return EXIT_OK
    version = store.schema_version()  # its backend's: PostgreSQL has steps SQLite has not
    store.close()
    if store.found_schema == version:
        print(f"store {store.path}: schema {version} already")
    else:
        print(f"store {store.path}: migrated from schema {store.found_schema} to {version}")
    return EXIT_OK


def _cmd_export_runs(args: argparse.Namespace) -> int:
    import csv
    import time

    from pipewarden.progress import Progress

    since = time.time() - duration_arg(args.since, "--since") if args.since else None
    store = open_store(load_config(args), must_exist=True, read_only=True)
    rows = store.export_runs(since) if store else iter(())
    total = _runs_since(store, since) if store else 0
    out = open(args.output, "w", newline="") if args.output else sys.stdout  # noqa: SIM115
    try:
        count = 0
        writer = None
        with Progress(total, "export", "run") as bar:
            for row in rows:
                if args.format == "jsonl":
                    out.write(json.dumps(row) + "\n")
                else:
                    if writer is None:
                        writer = csv.DictWriter(out, fieldnames=list(row))
                        writer.writeheader()
                    writer.writerow(row)
                count += 1
                if count % EXPORT_TICK == 0:
                    bar.advance(EXPORT_TICK)
    finally:
        if args.output:
            out.close()
        if store:
            store.close()
    if args.output:
        print(f"exported {count:,} run(s) to {args.output}")
    return EXIT_OK


def _runs_since(store: Store, since: float | None) -> int:
    return store.runs_started_since(since or 0.0)
