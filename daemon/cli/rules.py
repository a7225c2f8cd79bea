"""Classification rules: check them, try them on a message or a log, list the packs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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
from pipewarden.errors import UsageError


def register(commands: argparse._SubParsersAction) -> None:
    _, rules_commands = add_group(commands, "rules", "check and try classification rules")
    check = add_command(
        rules_commands, "check", _cmd_rules_check, "validate rule files", COMMON, AS_JSON
    )
    check.add_argument("paths", nargs="*", help="rule files (default: the config's)")
    test = add_command(
        rules_commands, "test", _cmd_rules_test,
        "classify an error message as the daemon would", COMMON, AS_JSON,
    )  # fmt: skip
    test.add_argument("message", nargs="?", help="an error text (or --file)")
    test.add_argument("--pipeline")
    test.add_argument("--stage")
    test.add_argument(
        "--type", dest="exception_type", metavar="TYPE",
        help="the exception: a builtin name (its bases count too, e.g. ConnectionResetError),"
        " module.Class (imported, with its bases), or the chain a worker sends: Name,Base,...",
    )  # fmt: skip
    test.add_argument(
        "--file", metavar="LOG", help="classify every line of LOG ('-': standard input) instead"
    )
    backtest = add_command(
        rules_commands, "backtest", _cmd_rules_backtest,
        "replay the rules over the stored failures: what would change", COMMON, AS_JSON,
    )  # fmt: skip
    backtest.add_argument(
        "paths", nargs="*", metavar="FILE",
        help="edited rule files, each in the place of the config's file of the same name"
        " (default: the config's rules as they are)",
    )  # fmt: skip
    backtest.add_argument(
        "--since", default="7d", help="failures that started within this long (default 7d)"
    )
    reclassify = add_command(
        commands, "reclassify", _cmd_reclassify,
        "apply the current rules to the stored failures (each run keeps its first"
        " classification beside the new)", COMMON, AS_JSON,
    )  # fmt: skip
    reclassify.add_argument(
        "--since", default="30d", help="failures that started within this long (default 30d)"
    )
    reclassify.add_argument(
        "--dry-run", action="store_true", help="say what would change, change nothing"
    )
    add_command(
        rules_commands, "packs", _cmd_rules_packs,
        "the shipped rule packs, to name in the config as pack:NAME", AS_JSON,
    )  # fmt: skip


def _load_rules_for(args: argparse.Namespace):
    from pipewarden.rules import load_rules

    if getattr(args, "paths", None):
        return load_rules([Path(p).resolve() for p in args.paths], Path.cwd())
    config = load_config(args)
    return load_rules(config.rule_paths, config.path.parent)


def _cmd_rules_check(args: argparse.Namespace) -> int:
    ruleset = _load_rules_for(args)
    if args.json:
        print_json(
            {"ok": True, "rules": len(ruleset.rules), "version": ruleset.version,
             "warnings": list(ruleset.warnings)}
        )  # fmt: skip
    else:
        for warning in ruleset.warnings:
            print(f"warning: {warning}")
        print(f"ok: {len(ruleset.rules)} rules (version {ruleset.version})")
    return EXIT_OK


def _cmd_rules_backtest(args: argparse.Namespace) -> int:
    import time

    from pipewarden.backtest import replay, rules_with
    from pipewarden.rules import load_rules

    config = load_config(args)
    since = time.time() - duration_arg(args.since, "--since")
    paths = rules_with(config.rule_paths, [Path(p) for p in args.paths])
    ruleset = load_rules(paths, config.path.parent)
    store = open_store(config, must_exist=True, read_only=True)
    if store is None:
        raise UsageError(f"no store at {config.state_dir}: nothing recorded to replay")
    try:
        found = replay(store, ruleset, since)
    finally:
        store.close()
    if args.json:
        print_json(found.as_dict() | {"since": since, "rules_version": ruleset.version})
    else:
        print("\n".join(found.lines(f"in the last {args.since}")))
    return EXIT_OK


def _cmd_reclassify(args: argparse.Namespace) -> int:
    import time

    from pipewarden.backtest import replay
    from pipewarden.rules import load_rules

    config = load_config(args)
    since = time.time() - duration_arg(args.since, "--since")
    ruleset = load_rules(config.rule_paths, config.path.parent)
    store = open_store(config, must_exist=True, read_only=args.dry_run)
    if store is None:
        raise UsageError(f"no store at {config.state_dir}: nothing recorded to reclassify")
    try:
        found = replay(store, ruleset, since)
        changed = (0, 0)
        if found.relabels and not args.dry_run:
            changed = store.reclassify(found.relabels, since, ruleset.version, time.time())
    finally:
        store.close()
    if args.json:
        print_json(found.as_dict() | {"since": since, "rules_version": ruleset.version,
                   "dry_run": args.dry_run, "runs_changed": changed[0],
                   "items_relabelled": changed[1]})  # fmt: skip
        return EXIT_OK
    print("\n".join(found.lines(f"in the last {args.since}")))
    if args.dry_run:
        print("dry run: nothing changed (run it without --dry-run to re-bucket them)")
    elif found.relabels:
        print(f"re-bucketed {changed[0]:,} runs under rules {ruleset.version} and relabelled"
              f" {changed[1]:,} items; each run keeps its first classification beside the"
              " new (`pipewarden why` shows both)")  # fmt: skip
    return EXIT_OK


def _cmd_rules_test(args: argparse.Namespace) -> int:
    from pipewarden.classifier import Classifier

    if args.file is not None or args.message is None:
        return _cmd_rules_test_file(args)
    ruleset = _load_rules_for(args)
    troubles: list[str] = []
    classifier = Classifier(ruleset, on_trouble=lambda r, why: troubles.append(f"{r.id} {why}"))
    result = classifier.classify(
        args.message, pipeline=args.pipeline, stage=args.stage,
        exception_types=_exception_types(args.exception_type),
    )  # fmt: skip
    rule = next((r for r in ruleset.rules if r.id == result.rule_id), None)
    answer = {
        "group": result.group.value,
        "label": result.label,
        "category": result.category,
        "type": result.type,
        "rule": result.rule_id,
        "pattern": rule.source or None if rule else None,
        "advice": result.advice or None,
        "runbook": result.runbook or None,
        "gave_up": troubles,
    }
    if args.json:
        print_json(answer)
        return EXIT_OK
    for name in ("group", "label", "category", "type"):
        print(f"{name:<10}{answer[name]}")
    if rule:
        shown = rule.source or f"exception {', '.join(rule.exceptions)}"
        print(f"{'rule':<10}{rule.id}  ({shown})")
        for name in ("advice", "runbook"):
            if answer[name]:
                print(f"{name:<10}{answer[name]}")
    else:
        print(f"{'rule':<10}none matched — retried up to the stage's max_attempts, then failed")
    for trouble in troubles:
        print(f"warning: rule {trouble} on this message: counted as no match", file=sys.stderr)
    return EXIT_OK


def _cmd_rules_test_file(args: argparse.Namespace) -> int:
    """`rules test --file LOG`: every line classified as the daemon would, then a summary."""
    from pipewarden.classifier import Classifier
    from pipewarden.logtest import classify_lines, summary_lines

    if args.file is None:
        raise UsageError("rules test needs an error text, or --file LOG ('-' for standard input)")
    if args.message is not None:
        raise UsageError("rules test takes an error text or --file LOG, not both")
    lines = _read_log_lines(args.file)
    classifier = Classifier(_load_rules_for(args))
    exception_types = _exception_types(args.exception_type)
    results = classify_lines(classifier, lines, args.pipeline, args.stage, exception_types)
    if args.json:
        for result in results:
            print(json.dumps(result.as_dict()))
    else:
        print("\n".join(summary_lines(results)))
    return EXIT_OK


def _read_log_lines(where: str) -> list[str]:
    """The lines of a log file, or of standard input for '-'; bytes that are not UTF-8
    are replaced, as a log may hold anything."""
    try:
        raw = sys.stdin.buffer.read() if where == "-" else Path(where).read_bytes()
    except OSError as exc:
        raise UsageError(f"--file {where}: cannot read it: {exc.strerror}") from None
    return raw.decode("utf-8", errors="replace").splitlines()


def _cmd_rules_packs(args: argparse.Namespace) -> int:
    from pipewarden import packs

    found = [packs.describe(name) for name in packs.pack_names()]
    if args.json:
        print_json([{"name": f"pack:{p.name}", "rules": p.rules, "halts": p.halts,
                      "summary": p.summary} for p in found])  # fmt: skip
        return EXIT_OK
    width = max((len(p.name) for p in found), default=0) + len(packs.PREFIX)
    for pack in found:
        halts = f", {pack.halts} halt{'s' * (pack.halts > 1)}" if pack.halts else ""
        counts = f"{pack.rules} rules{halts}"
        print(f"{packs.PREFIX + pack.name:<{width}}  {counts:<19}{pack.summary}")
    print("\nname them in the config's rules (first match wins): [rules/*.yaml, pack:http, ...]")
    return EXIT_OK


def _exception_types(given: str | None) -> tuple[str, ...]:
    """--type as the classifier takes it: the chain a worker would send, most specific first.

    A lone builtin name is walked to its bases by the classifier itself (as for a
    worker's reply); `module.Class` is imported here and walked the same way.
    """
    names = tuple(part.strip() for part in (given or "").split(",") if part.strip())
    if len(names) == 1 and "." in names[0]:
        return _imported_exception(names[0])
    return names


def _imported_exception(dotted: str) -> tuple[str, ...]:
    import importlib

    from pipewarden.classifier import exception_names

    module, _, name = dotted.rpartition(".")
    sys.path.insert(0, str(Path.cwd()))
    try:
        found = getattr(importlib.import_module(module), name)
    except Exception as exc:  # the user's module: anything can go wrong importing it
        raise UsageError(
            f"--type {dotted}: cannot import it ({type(exc).__name__}: {exc}) — run from the"
            f" folder it imports from, or give the chain a worker sends: --type {name},BASE,..."
        ) from None
    finally:
        sys.path.pop(0)
    if not (isinstance(found, type) and issubclass(found, BaseException)):
        raise UsageError(f"--type {dotted}: that is not an exception class")
    return exception_names(found)
