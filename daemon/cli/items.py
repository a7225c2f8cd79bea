"""Items: enqueue them, look one up (`item`, `why`), put them back in the queue (`retry`,
`release`) or end them (`fail`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipewarden.cli.shared import (
    AS_JSON,
    COMMON,
    EXIT_FAILURE,
    EXIT_OK,
    add_command,
    daemon_api,
    load_config,
    open_store,
    print_json,
    terminal_width,
    told,
    who,
)
from pipewarden.errors import ConfigError, PipewardenError, UsageError

if TYPE_CHECKING:
    from pipewarden.client import DaemonApi
    from pipewarden.config import Config
    from pipewarden.dryrun import Preview
    from pipewarden.store import Storage


def register(commands: argparse._SubParsersAction) -> None:
    enqueue = add_command(
        commands, "enqueue", _cmd_enqueue, "add items to a pipeline (idempotent on key)",
        COMMON, AS_JSON,
    )  # fmt: skip
    enqueue.add_argument("pipeline")
    enqueue.add_argument("key", nargs="?", help="the item's key, unique in its pipeline")
    enqueue.add_argument(
        "--data", help="the item's data as a JSON object; for a known key it replaces the item's"
        " data (it does not merge). Without --data a known item keeps the data it has",
    )  # fmt: skip
    enqueue.add_argument(
        "--file", help='a JSON-lines file of {"key": ..., "data": {...}}; a line without'
        " \"data\" keeps a known item's data, one with it replaces that data",
    )  # fmt: skip
    enqueue.add_argument(
        "--force", action="store_true",
        help="start known items again and redo every stage to the end, even where the input"
        " already succeeded",
    )  # fmt: skip
    enqueue.add_argument(
        "--dry-run", action="store_true",
        help="list which items are new and which known (the first 20 of each), change nothing",
    )  # fmt: skip

    why = add_command(
        commands, "why", _cmd_why, "an item's whole story and what happens next", COMMON, AS_JSON
    )
    why.add_argument("key")
    why.add_argument("--pipeline", help="needed when several pipelines have an item with this key")

    item = add_command(
        commands, "item", _cmd_item, "one item: its state, next retry and runs", COMMON, AS_JSON
    )
    item.add_argument("pipeline")
    item.add_argument("key")

    retry = add_command(
        commands, "retry", _cmd_retry,
        "put failed and retrying items with a label back in the queue", COMMON, AS_JSON,
    )  # fmt: skip
    retry.add_argument("--label", required=True, help='e.g. "Browser launch conflict"')
    retry.add_argument("--pipeline")
    retry.add_argument("--stage")
    retry.add_argument("--since", help="only items that changed within this long, e.g. 24h")
    retry.add_argument(
        "--dry-run", action="store_true", help="list them (the first 20) and count, change nothing"
    )
    retry.add_argument(
        "--force", action="store_true", help="redo work whose input already succeeded"
    )

    for name, handler, what in (
        ("release", _cmd_release, "put held items back in the queue, at the attempt they were"
         " held at (their side effects may happen again)"),
        ("fail", _cmd_fail, "end held items as failed, with the reason given"),
    ):  # fmt: skip
        sub = add_command(commands, name, handler, what, COMMON, AS_JSON)
        sub.add_argument("pipeline")
        sub.add_argument("keys", nargs="*", metavar="KEY", help="the held items' keys")
        sub.add_argument("--all-held", action="store_true", help="every held item of the pipeline")
        sub.add_argument("--dry-run", action="store_true", help="list them, change nothing")
        if name == "fail":
            sub.add_argument("--reason", required=True, help="why they fail, as their error text")


RETRY_CHUNK = 1000  # items requeued a transaction (and an API request), as an enqueue
ENQUEUE_CHUNK = 1000  # items a transaction (and an API request) takes: a daemon's loop and
# its /health keep answering between them, whatever the size of the file


def _cmd_enqueue(args: argparse.Namespace) -> int:
    config = load_config(args)
    pipeline = config.pipeline(args.pipeline)
    items = _items_to_enqueue(args)
    first = f"{pipeline.name}/{pipeline.stages[0].name}"
    if args.dry_run:
        return _enqueue_dry_run(args, config, first, items)
    daemon = daemon_api(config)
    merged = _enqueue_in_chunks(config, daemon, pipeline.name, items, args.force)
    result = {"pipeline": pipeline.name, **merged}
    if not daemon.running and (result["new"] or result["restarted"]):
        told(daemon, "enqueued")  # wakes a daemon that runs without its API
    if args.json:
        print_json(result)
        return EXIT_OK
    print("; ".join([f"enqueued {len(result['new'])} new item(s) into {first}",
                     *_known_items(result, args.force)]))  # fmt: skip
    return EXIT_OK


def _enqueue_dry_run(
    args: argparse.Namespace, config: Config, first: str, items: list[tuple[str, Any]]
) -> int:
    from pipewarden.dryrun import enqueue_preview

    store = open_store(config, must_exist=True, read_only=True)
    try:
        found = enqueue_preview(store, args.pipeline, [key for key, _ in items])
    finally:
        if store is not None:
            store.close()
    if args.json:
        print_json({"pipeline": args.pipeline, "dry_run": True,
                    **{name: preview.as_dict() for name, preview in found.items()}})  # fmt: skip
        return EXIT_OK
    new, known = found["new"], found["known"]
    lines = new.lines(f"would enqueue {new.total:,} new item(s) into {first}")
    if known.total:
        again = "every one" if args.force else "those done, failed or ignored"
        lines += known.lines(
            f"{known.total:,} item(s) are known: {again} would start again, the rest stay as"
            " they are"
        )
    print("\n".join(lines))
    return EXIT_OK


def _enqueue_in_chunks(
    config: Config, daemon: DaemonApi, pipeline: str, items: list[tuple[str, Any]], force: bool
) -> dict[str, list[str]]:
    """Every item, ENQUEUE_CHUNK at a time, each chunk its own transaction: through the
    daemon's API when one runs, else on the store. A bar on a terminal for more than one."""
    import time
    from dataclasses import asdict

    from pipewarden.progress import Progress

    merged: dict[str, list[str]] = {}
    store = None if daemon.running else open_store(config)
    try:
        with Progress(len(items), "enqueue", "item", shown=len(items) > ENQUEUE_CHUNK) as bar:
            for start in range(0, max(len(items), 1), ENQUEUE_CHUNK):
                chunk = items[start : start + ENQUEUE_CHUNK]
                if store is None:
                    answer = daemon.post("/api/enqueue", {
                        "pipeline": pipeline, "force": force,
                        "items": [{"key": k, "data": d} for k, d in chunk]})  # fmt: skip
                else:
                    from pipewarden import control  # here: the store's and the notifier's

                    answer = asdict(control.enqueue(store, config, pipeline, chunk, time.time(),
                                                    force))  # fmt: skip
                for name, keys in answer.items():
                    merged.setdefault(name, []).extend(keys)
                bar.advance(len(chunk))
    finally:
        if store is not None:
            store.close()
    return merged


def _known_items(result: dict[str, Any], force: bool) -> list[str]:
    """What enqueueing did to keys already known: started again (with which data), or not."""
    parts = []
    if restarted := len(result["restarted"]):
        how = "every stage redone: --force" if force else "stages already done are skipped"
        replaced, kept = len(result["data_replaced"]), restarted - len(result["data_replaced"])
        data = [f"{replaced} with the data given, which replaces theirs"] if replaced else []
        data += [f"{kept} with the data they had (none given)"] if kept else []
        parts.append(f"{restarted} known item(s) started again ({how}): {', '.join(data)}")
    if result["unchanged"]:
        parts.append(
            f"{len(result['unchanged'])} still queued or running (left as they are, data too)"
        )
    if held := result["held"]:
        hint = f"`pipewarden release {result['pipeline']} KEY...` or `pipewarden fail`"
        parts.append(f"{len(held)} held for a person (left as they are: {hint})")
    return parts


def _items_to_enqueue(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    from pipewarden.inputs import check_item

    if (args.key is None) == (args.file is None):
        raise UsageError("enqueue takes a KEY or --file items.jsonl (one of them)")
    if args.file:
        if args.data:
            raise UsageError("--data goes with KEY; in --file each line carries its own data")
        return _read_items_file(Path(args.file))
    data: Any = None  # none given: a known item keeps its own
    if args.data is not None:
        try:
            data = json.loads(args.data)
        except ValueError as exc:
            raise UsageError(f"--data is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise UsageError('--data must be a JSON object, e.g. \'{"url": "https://..."}\'')
    return [check_item(args.key, data)]


def _read_items_file(path: Path) -> list[tuple[str, dict[str, Any]]]:
    from pipewarden.inputs import data_problem, key_problem

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    items = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            entry = json.loads(line)
        except ValueError as exc:
            raise ConfigError(path, number, exc.colno, f"not valid JSON: {exc.msg}") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            raise ConfigError(path, number, 1, 'each line must be {"key": "...", "data": {...}}')
        if problem := key_problem(entry["key"]):
            raise ConfigError(path, number, 1, f"'key' {problem}")
        data = entry.get("data")  # none (or null): a known item keeps its own
        if data is not None and (problem := data_problem(data)):
            raise ConfigError(path, number, 1, f"'data' {problem}")
        items.append((entry["key"], data))
    return items


def _cmd_item(args: argparse.Namespace) -> int:
    import time

    from pipewarden.render import item_detail, run_as_dict, runs_table

    config = load_config(args)
    config.pipeline(args.pipeline)
    store = open_store(config, must_exist=True, read_only=True)
    item = store.item(args.pipeline, args.key) if store else None
    if item is None:
        raise PipewardenError(f"no item '{args.key}' in pipeline '{args.pipeline}'")
    runs = store.item_runs(item.id)
    store.close()
    if args.json:
        fields = ("pipeline", "key", "stage", "state", "attempt", "ready_at", "channel",
                  "last_error", "last_label", "last_group", "created_at", "updated_at")  # fmt: skip
        print_json(
            {**{name: getattr(item, name) for name in fields}, "data": json.loads(item.data),
             "runs": [run_as_dict(run) for run in runs]}
        )  # fmt: skip
        return EXIT_OK
    print("\n".join(item_detail(item, time.time())))
    print()
    print("\n".join(runs_table(runs, terminal_width())))
    return EXIT_OK


def _cmd_retry(args: argparse.Namespace) -> int:

    from pipewarden._yaml import parse_duration

    config = load_config(args)
    request: dict[str, Any] = {
        "label": args.label, "pipeline": args.pipeline, "stage": args.stage,
        "dry_run": args.dry_run, "force": args.force,
    }  # fmt: skip
    if args.since:
        try:
            request["since_s"] = parse_duration(args.since)
        except ValueError:
            raise UsageError(
                f"--since takes a duration such as 24h or 30m, not '{args.since}'"
            ) from None
    daemon = daemon_api(config)
    preview, held = _retry_preview(config, request)  # the count first: the bar's total
    count = preview.total
    if not args.dry_run:  # nothing changes on a dry run: the store was read, daemon or not
        count, held = _retry_in_chunks(config, daemon, request, count)
    scope = "".join(f" in {v}" for v in (args.pipeline, args.stage) if v)
    if args.json:
        sample = {"sample": preview.sample} if args.dry_run else {}
        print_json({"label": args.label, "items": count, "dry_run": args.dry_run, "held": held,
                    **sample})  # fmt: skip
        return EXIT_OK
    if args.dry_run:
        head = f"would requeue {count:,} failed or retrying item(s) labelled '{args.label}'{scope}"
        print("\n".join(preview.lines(head)))
    elif count:
        print(told(daemon, f"requeued {count} item(s) labelled '{args.label}'{scope}"))
    else:
        print(f"no failed or retrying item is labelled '{args.label}'{scope}")
    if held:  # retry never repeats a side effect a stage said must not repeat
        print(
            f"{held} held item(s) labelled '{args.label}'{scope} wait for a person: let them go"
            " with `pipewarden release PIPELINE KEY...` (or --all-held), or end them with"
            " `pipewarden fail PIPELINE KEY... --reason TEXT`"
        )
    return EXIT_OK


def _retry_in_chunks(
    config: Config, daemon: DaemonApi, request: dict[str, Any], total: int
) -> tuple[int, int]:
    """Requeue RETRY_CHUNK items at a time, each chunk its own transaction, through the
    daemon's API when one runs, else on the store: (items requeued, held ones left). A bar
    on a terminal for more than one chunk."""
    import time

    from pipewarden import control
    from pipewarden.progress import Progress

    # Only items that last changed before now: one requeued and failed again meanwhile is not
    # taken twice.
    chunked = {**request, "before": time.time(), "limit": RETRY_CHUNK}
    store = None if daemon.running else open_store(config)
    count, held = 0, 0
    try:
        with Progress(total, "retry", "item", shown=total > RETRY_CHUNK) as bar:
            while True:
                if store is None:
                    answer = daemon.post("/api/retry", chunked)
                    done, held = answer["items"], answer["held"]
                else:
                    done = control.retry(store, config, chunked, who(), time.time())
                count += done
                bar.advance(done)
                if done < RETRY_CHUNK:
                    break
        if store is not None:
            held = control.held_count(store, request)
    finally:
        if store is not None:
            store.close()
    return count, held


def _retry_preview(config: Config, request: dict[str, Any]) -> tuple[Preview, int]:
    """What `retry --dry-run` would requeue: the first items and a count, from the store."""
    import time

    from pipewarden import control
    from pipewarden.dryrun import Preview, retry_preview

    if request["pipeline"]:
        config.pipeline(request["pipeline"])
    store = open_store(config, must_exist=True, read_only=True)
    if store is None:
        return Preview(0, []), 0
    try:
        since = time.time() - request["since_s"] if request.get("since_s") else None
        found = retry_preview(store, request["label"], request["pipeline"], request["stage"],
                              since)  # fmt: skip
        return found, control.held_count(store, request)
    finally:
        store.close()


def _cmd_release(args: argparse.Namespace) -> int:
    return _change_held(args, "release")


def _cmd_fail(args: argparse.Namespace) -> int:
    return _change_held(args, "fail")


def _change_held(args: argparse.Namespace, command: str) -> int:
    """`release` and `fail`: held items by key (or all of a pipeline's), by the API when a
    daemon runs, else on the store."""
    import time

    from pipewarden import control

    if bool(args.keys) == args.all_held:
        raise UsageError(f"{command} takes KEY... or --all-held (one of them)")
    verb = "released" if command == "release" else "failed"
    config = load_config(args)
    pipeline = config.pipeline(args.pipeline).name
    keys = None if args.all_held else args.keys
    request: dict[str, Any] = {"pipeline": pipeline, "keys": keys, "all_held": args.all_held,
                               "dry_run": args.dry_run}  # fmt: skip
    if command == "fail":
        request["reason"] = control.fail_reason(args.reason)
    daemon = daemon_api(config)
    if daemon.running:
        answer = daemon.post(f"/api/{command}", request)
        changed, not_held = answer[verb], answer["not_held"]
    else:
        store = open_store(config)
        try:
            if command == "release":
                change = control.release(store, config, pipeline, keys, who(), time.time(),
                                         args.dry_run)  # fmt: skip
            else:
                change = control.fail(store, config, pipeline, keys, args.reason, who(),
                                      time.time(), args.dry_run)  # fmt: skip
        finally:
            store.close()
        changed, not_held = change.changed, change.not_held
    if args.json:
        print_json({"pipeline": pipeline, verb: changed, "dry_run": args.dry_run,
                     "not_held": not_held})  # fmt: skip
    else:
        print("\n".join(_held_lines(daemon, pipeline, verb, changed, not_held, args.dry_run)))
    return EXIT_FAILURE if not_held else EXIT_OK


def _held_lines(
    daemon: DaemonApi, pipeline: str, verb: str, changed: list[str],
    not_held: dict[str, str | None], dry_run: bool,
) -> list[str]:  # fmt: skip
    from pipewarden.dryrun import SAMPLE
    from pipewarden.inputs import shown

    what = {"released": "back in the queue at the attempt they were held at",
            "failed": "failed, with the reason given"}[verb]  # fmt: skip
    names = ", ".join(shown(key) for key in changed[:SAMPLE])
    names += f" and {len(changed) - SAMPLE} more" if len(changed) > SAMPLE else ""
    if dry_run:
        lines = [f"would have {verb} {len(changed)} held item(s) of {pipeline}"
                 + (f": {names}" if changed else "")]  # fmt: skip
    elif changed:
        lines = [told(daemon, f"{verb} {len(changed)} held item(s) of {pipeline} ({what}):"
                       f" {names}")]  # fmt: skip
    else:
        lines = [f"no held item of {pipeline} was {verb}"]
    for key, state in not_held.items():
        why = f"it is {state}" if state else "no such item"
        lines.append(f"not held: {shown(key)} ({why})")
    return lines


def _cmd_why(args: argparse.Namespace) -> int:
    import time

    from pipewarden.advising import advice_of, current_rules
    from pipewarden.render import story_lines
    from pipewarden.story import item_story

    config = load_config(args)
    store = open_store(config, must_exist=True, read_only=True)
    if store is None:
        raise PipewardenError("nothing has been enqueued yet")
    try:
        pipeline = args.pipeline or _pipeline_of(store, args.key)
        story = item_story(config, store, pipeline, args.key, time.time())
    finally:
        store.close()
    judged = [run for run in story["runs"] if run["label"] and not run["replay_of"]]
    if story["last_label"] or judged:
        last = judged[-1] if judged else {"rule": None, "label": story["last_label"]}
        story["advice"] = advice_of(current_rules(config), last["rule"], last["label"])
    if args.json:
        print_json(story)
    else:
        print("\n".join(story_lines(story)))
    return EXIT_OK


def _pipeline_of(store: Storage, key: str) -> str:
    pipelines = store.pipelines_of(key)
    if not pipelines:
        raise PipewardenError(f"no item '{key}' (see `pipewarden status`)")
    if len(pipelines) > 1:
        raise UsageError(f"'{key}' is in {', '.join(pipelines)}: add --pipeline")
    return pipelines[0]
