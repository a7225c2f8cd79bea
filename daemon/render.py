"""Text for people: the status tree, the runs table, one run in full.

Pure functions from plain data to lines, so tests assert exactly what a user sees.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pipewarden.inputs import escape_controls
from pipewarden.types import ItemState

NAME_WIDTH = 46
RULE = "─" * (NAME_WIDTH + 28)
_CODES = {"green": "32", "red": "31", "grey": "90", "cyan": "36", "bold": "1", "yellow": "33"}
# Green is good progress, red failures and their growth, grey what is expected and not
# actionable, cyan the neutral middle of the pipeline.
STATE_COLOURS = {
    ItemState.DONE: "green", ItemState.FAILED: "red", ItemState.RETRYING: "red",
    ItemState.IGNORED: "grey",
}  # fmt: skip
GROUP_COLOURS = {
    "Terminal": "red", "Retries exhausted": "red", "Unknown": "yellow", "Retriable": "yellow",
    "Ignored": "grey",
}  # fmt: skip
DAY_S = 86400.0
DATA_ON_ONE_LINE = 80  # an item's data longer than this is shown a key a line


class Paint:
    """ANSI colours, or none (not a terminal, or NO_COLOR set)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __call__(self, text: str, colour: str) -> str:
        return f"\x1b[{_CODES[colour]}m{text}\x1b[0m" if self.enabled and text else text


def status_tree(snapshot: dict[str, Any], paint: Paint, verbose: bool = False) -> list[str]:
    """The seed's breakdown: pipelines, stages, states, labels; totals, Δ24h and Δ1h."""
    lines = health_lines(snapshot, paint)
    for pipeline in snapshot["pipelines"]:
        header = paint(pipeline["name"], "bold")
        lines += ["", _row(header, len(pipeline["name"]), "Total", "Δ24h", "Δ1h"), RULE]
        for stage in pipeline["stages"]:
            lines += _stage_lines(stage, paint, verbose)
    if verbose and snapshot.get("advice"):
        from pipewarden.advising import advice_lines

        lines += ["", "what the rules advise:"]
        for label, advice in snapshot["advice"].items():
            lines += [f"  {escape_controls(label)}", *advice_lines(advice, "    ")]
    return lines


def describe_rule_trouble(trouble: dict[str, Any]) -> str:
    """One rule that gave up on messages, as `status` and `doctor` say it."""
    times = "once" if trouble["count"] == 1 else f"{trouble['count']} times"
    return (
        f"rule {trouble['rule']} ('{trouble['pattern']}') {trouble['problem']} {times},"
        f" last {format_time(trouble['last_at'])}: counted as no match"
        " — simplify it (`pipewarden rules check` says why)"
    )


def health_lines(snapshot: dict[str, Any], paint: Paint) -> list[str]:
    """The lines above the tree: rules health, halts and pauses, stuck items."""
    lines = []
    reload = snapshot["rules"]
    if reload is None:
        lines.append("rules: not loaded by a daemon yet")
    elif reload["ok"]:
        restart = ""
        if reload.get("needs_restart"):
            restart = paint(f" — needs restart: {', '.join(reload['needs_restart'])}", "red")
        lines.append(
            f"rules: version {reload['version']} ({reload['rules']} rules),"
            f" loaded {format_time(reload['at'])}{restart}"
        )
        lines += [f"  reloaded {format_time(reload['at'])}: {escape_controls(change)}"
                  for change in reload.get("changes", ())]  # fmt: skip
    else:
        failed = f"rules: reload failed at {format_time(reload['at'])} — {reload['error']}"
        lines.append(paint(failed, "red") + f" (version {reload['version']} still in force)")
    for trouble in (reload or {}).get("trouble", ()):
        lines.append(paint(f"  {describe_rule_trouble(trouble)}", "yellow"))
    for hold in snapshot["holds"]:
        word = "halted" if hold["kind"] == "halt" else "paused"
        lines.append(paint(f"{word}: {describe_hold(hold)}", "red" if word == "halted" else "cyan"))
    for entry in snapshot["stuck"]:
        stuck = (
            f"stuck: {entry['items']} item(s) of {entry['pipeline']}/{entry['stage']} requeued"
            f" {entry['requeues']}+ times still fail with '{entry['label']}' — look before"
            " requeueing again"
        )
        lines.append(paint(stuck, "red"))
    return lines


def _stage_lines(stage: dict[str, Any], paint: Paint, verbose: bool) -> list[str]:
    running = len(stage["running"]) + stage.get("running_more", 0)
    notes = [f"{running:,} running"] if running else []
    queue = stage["queue"]
    if queue and queue["eta"]:
        notes.append(f"ETA {format_duration(queue['eta']['seconds'])}")
    note = "  " + " · ".join(notes) if notes else ""
    lines = [_counted(f"▸ {stage['name']}", stage, "cyan", paint, note)]
    if queue:
        lines += ["    " + paint(text, "grey") for text in _queue_notes(queue)]
    if verbose and stage.get("telemetry"):
        lines.append("    " + paint(_telemetry(stage["telemetry"]), "grey"))
    states = stage["states"]
    for index, state in enumerate(states):
        last = index == len(states) - 1
        colour = STATE_COLOURS.get(state["state"], "cyan")
        lines.append(_counted(f"  {'└─' if last else '├─'} {state['state']}", state, colour, paint))
        children = _state_children(state, stage)
        prefix = "  " + ("   " if last else "│  ")
        for c_index, (text, counts, child_colour, grandchildren) in enumerate(children):
            c_last = c_index == len(children) - 1
            row = f"{prefix}{'└─' if c_last else '├─'} {text}"
            lines.append(_counted(row, counts, child_colour, paint) if counts else row)
            g_prefix = prefix + ("   " if c_last else "│  ")
            for g_index, (g_text, g_counts) in enumerate(grandchildren):
                twig = "└─" if g_index == len(grandchildren) - 1 else "├─"
                lines.append(_counted(f"{g_prefix}{twig} {g_text}", g_counts, child_colour, paint))
    return lines


def _queue_notes(queue: dict[str, Any]) -> list[str]:
    """What the queue's ETA rests on, and what keeps queued items back."""
    notes = []
    if eta := queue["eta"]:
        notes.append(
            f"ETA from {eta['items']:,} queued, {eta['concurrency']} at a time, at the median"
            f" {format_duration(eta['median_s'])} of the last {eta['runs']:,} ok runs"
        )
    for waiting in queue["waiting"]:
        notes.append(f"{waiting['items']:,} queued wait: {waiting['why']}")
    return notes


def _state_children(state: dict[str, Any], stage: dict[str, Any]) -> list[tuple]:
    """(text, counts or None, colour, [(text, counts)]) for the rows under one state."""
    if state["state"] == ItemState.RUNNING:
        lines = [(_running_line(run), None, "cyan", []) for run in stage["running"]]
        if more := stage.get("running_more"):
            lines.append((f"… and {more:,} more", None, "cyan", []))
        return lines
    if state.get("reasons"):
        return [
            (f"{reason['reason']} · {_wake(reason)}", reason, "cyan", [])
            for reason in state["reasons"]
        ]
    if not state["groups"]:
        return [
            (escape_controls(channel["name"]), channel, "cyan", []) for channel in state["channels"]
        ]
    children = []
    for group in state["groups"]:
        colour = GROUP_COLOURS.get(group["name"], "cyan")
        labels = [(_label_text(row), row) for row in group["labels"]]
        if group["other"]:
            labels.append((f"Other ({group['other']['more']} more)", group["other"]))
        if group["name"] == "Ignored":
            children += [(text, counts, colour, []) for text, counts in labels]
        elif [text for text, _ in labels] == [group["name"]]:  # "Unknown" says it all
            children.append((group["name"], group, colour, []))
        else:
            children.append((group["name"], group, colour, labels))
    return children


def _label_text(row: dict[str, Any]) -> str:
    """A label, and how many of its items a reclassify put there (their runs say from what)."""
    if row.get("rebucketed"):
        return f"{row['label']} ({row['rebucketed']:,} re-bucketed)"
    return row["label"]


def _wake(waiting: dict[str, Any]) -> str:
    """When deferred items wake: 'until 09:00' within a day, 'until Mon 09:00' within a
    week, else 'until 23 Nov 09:00'."""
    if waiting["wakes_at"] is None or not waiting["wakes_in_s"]:
        return "due now"
    shape = "%d %b %H:%M"
    if waiting["wakes_in_s"] < 6 * DAY_S:
        shape = "%H:%M" if waiting["wakes_in_s"] < DAY_S else "%a %H:%M"
    return "until " + time.strftime(shape, time.localtime(waiting["wakes_at"]))


def _running_line(run: dict[str, Any]) -> str:
    progress = f" {run['progress'] * 100:.0f}%" if finite(run["progress"]) is not None else ""
    message = f" {escape_controls(run['message'])}" if run["message"] else ""
    elapsed = format_duration(run["elapsed_s"])
    left = (
        f", ~{format_duration(run['eta_s'])} left at its progress rate"
        if run["eta_s"] is not None
        else ""
    )
    return f"{escape_controls(run['key'])}#{run['attempt']}{progress}{message} ({elapsed}{left})"


def _counted(text: str, counts: dict, colour: str, paint: Paint, note: str = "") -> str:
    shown = paint(text, colour) + paint(note, "cyan")
    return _row(
        shown, len(text) + len(note), f"{counts['total']:,}",
        _delta(counts["d24"], colour, paint), _delta(counts["d1"], colour, paint),
    )  # fmt: skip


def _row(shown: str, visible: int, total: str, d24: str, d1: str) -> str:
    pad = " " * max(1, NAME_WIDTH - visible)
    return f"{shown}{pad}{total:>10}{_rjust(d24, 9)}{_rjust(d1, 9)}"


def _rjust(text: str, width: int) -> str:
    return " " * max(0, width - len(_strip(text))) + text


def _delta(value: int, colour: str, paint: Paint) -> str:
    text = f"+{value:,}"
    return paint(text, "grey") if not value else paint(text, colour)


def _strip(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _telemetry(telemetry: dict[str, Any]) -> str:
    parts = []
    for window in ("1h", "24h"):
        t = telemetry[window]
        if not t["runs"]:
            parts.append(f"{window}: no runs")
            continue
        parts.append(
            f"{window}: {t['runs']:,} runs, {t['success_rate'] * 100:.0f}% ok,"
            f" p50 {format_duration(t['p50_s'])}, p95 {format_duration(t['p95_s'])}"
        )
    return " · ".join(parts)


# The runs table's columns of a fixed width: RUN, #, STATUS, TIME and the gaps (STARTED
# is 20 wide, or 12 on a narrow terminal).
_RUN_FIXED = 9 + 3 + 12 + 8
_ERROR_AT_LEAST = 30  # on a terminal the error keeps this much; stage and item give way
_NAME_AT_LEAST = 8
NARROW = 110  # below this many columns: the start without seconds, the error on a line of its own


@dataclass(frozen=True)
class RunColumns:
    """How wide the runs table's STAGE, ITEM and ERROR are: as wide as their longest value,
    cut (with …) only to fit a terminal's `width`; None: never cut (a pipe, a file). On a
    narrow terminal the error goes on a line of its own under its run."""

    stage: int
    item: int
    error: int | None
    narrow: bool = False

    @classmethod
    def fitting(
        cls, runs: Sequence[Any], width: int | None, names: Iterable[str] = (),
        keys_at_least: int = 0,
    ) -> RunColumns:  # fmt: skip
        """Columns for `runs` (plus stage `names` and keys of `keys_at_least` characters
        that rows followed later may bring)."""
        stage = max([len("STAGE"), *map(len, names), *(len(_stage_of(r)) for r in runs)])
        item = max([len("ITEM"), keys_at_least, *(len(escape_controls(r.item_key)) for r in runs)])
        if width is None:
            return cls(stage, item, None)
        narrow = width < NARROW
        room = width - _RUN_FIXED - (12 if narrow else 20) - 2  # 2: the gaps after the names
        if not narrow:
            longest_error = max([len("ERROR"), *(len(_label_and_error(r)) for r in runs)])
            room -= 2 + min(longest_error, _ERROR_AT_LEAST)
        if stage + item > room:  # the longer of the two gives way first
            room = max(room, 2 * _NAME_AT_LEAST)
            stage = max(_NAME_AT_LEAST, min(stage, room // 2, room - item))
            item = max(_NAME_AT_LEAST, room - stage)
        if narrow:
            return cls(stage, item, max(len("ERROR"), width - 4), narrow=True)
        rest = width - _RUN_FIXED - 20 - stage - item - 4
        return cls(stage, item, max(len("ERROR"), rest))

    def header(self) -> str:
        started = f"{'STARTED':<12}" if self.narrow else f"{'STARTED':<20}"
        return (
            f"{'RUN':<9}{started}{'STAGE':<{self.stage + 1}}{'ITEM':<{self.item + 1}}"
            f"{'#':>2} {'STATUS':<12}{'TIME':>8}" + ("" if self.narrow else "  ERROR")
        )

    def row(self, run: Any) -> str:
        """The run's line (on a narrow terminal, with its error on a second line)."""
        error, key, stage = _label_and_error(run), escape_controls(run.item_key), _stage_of(run)
        if self.error is not None:  # a terminal: cut to fit (else wider values push on)
            error, key, stage = (
                _cut(error, self.error),
                _cut(key, self.item),
                _cut(stage, self.stage),
            )
        if self.narrow:
            started = f"{_short_time(run.started_at):<12}"
        else:
            started = f"{format_time(run.started_at):<20}"
        line = (
            f"{run.id[:8]:<9}{started}"
            f"{stage:<{self.stage}} {key:<{self.item}} "
            f"{run.attempt:>2} {run.status:<12}{format_duration(run.duration_s):>8}"
        )
        if self.narrow:
            return line + (f"\n    {error}" if error else "")
        return f"{line}  {error}".rstrip()


def _short_time(epoch: float | None) -> str:
    return format_time(epoch)[5:16] if valid_time(epoch) and epoch is not None else "-"


def _stage_of(run: Any) -> str:
    return f"{run.pipeline}/{run.stage}"


def runs_table(runs: Iterable[Any], width: int | None = None) -> list[str]:
    """The runs, a line each under a header, fitting `width` (None: never cut)."""
    runs = list(runs)
    columns = RunColumns.fitting(runs, width)
    return [columns.header(), *(columns.row(run) for run in runs)]


def item_detail(item: Any, now: float) -> list[str]:
    lines = [
        f"{'item':<12}{item.pipeline}/{escape_controls(item.key)}",
        f"{'state':<12}{item.state} at stage {item.stage} ({item.attempt} attempt(s) made there)",
    ]
    if item.state in (ItemState.RETRYING, ItemState.DEFERRED, ItemState.QUEUED):
        lines.append(f"{'next':<12}{_next_run(item, now)}")
    if item.last_label:
        lines.append(f"{'last label':<12}{item.last_label} ({item.last_group})")
    if item.last_error:
        lines.append(f"{'last error':<12}{first_line(item.last_error)}")
    return lines + _data_lines(item.data)


def _data_lines(stored: str | None) -> list[str]:
    """The item's data as its stages have merged it: on one line if short, else indented."""
    data = json.loads(stored or "{}")
    compact = json.dumps(data, ensure_ascii=False)
    if len(compact) <= DATA_ON_ONE_LINE:
        return [f"{'data':<12}{escape_controls(compact)}"]
    text = json.dumps(data, ensure_ascii=False, indent=2)
    return ["data:", *(f"  {escape_controls(line)}" for line in text.splitlines())]


def _next_run(item: Any, now: float) -> str:
    if not valid_time(item.ready_at):
        return f"never by itself: its ready time ({item.ready_at}) is not a valid time"
    wait = item.ready_at - now
    when = "now" if wait <= 0 else f"in {format_duration(wait)}"
    verb = "retry" if item.state == ItemState.RETRYING else "runs"
    return f"{verb} at {format_time(item.ready_at)} ({when})"


def first_line(text: str | None) -> str:
    """The first non-blank line of an error text, safe to print."""
    lines = (text or "").strip().splitlines()
    return escape_controls(lines[0]) if lines else ""


def _label_and_error(run: Any) -> str:
    replay_of = getattr(run, "replay_of", None)  # followed runs (events) are never replays
    mark = f"(replay of {replay_of[:8]}) " if replay_of else ""
    if not run.error:
        return mark.rstrip()
    first = first_line(run.error)
    return mark + (f"[{run.label}] {first}" if run.label else first)


RUN_FIELDS: Sequence[str] = (
    "id", "pipeline", "stage", "item_key", "attempt", "channel", "status", "started_at",
    "finished_at", "duration_s", "exit_code", "signal", "pid", "daemon", "group_name", "label",
    "category", "type", "rule_id", "rules_version", "error_type", "progress", "message",
    "input_fingerprint", "code_ref", "config_hash", "rows_in", "rows_out", "cost", "trace_id",
    "reclassified_at", "original_group", "original_label", "original_rule_id",
    "original_rules_version", "replay_of",
)  # fmt: skip
_BLOCK_FIELDS = ("error", "traceback", "output")


def run_as_dict(run: Any) -> dict[str, Any]:
    """Every field of a run, for --json and the API (a number JSON has not is null)."""
    return {name: finite(getattr(run, name)) for name in (*RUN_FIELDS, *_BLOCK_FIELDS)}


def finite(value: Any) -> Any:
    """`value`, or None for a float that is NaN or infinite (strict JSON has neither)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def run_detail(run: Any) -> list[str]:
    lines = []
    for name in RUN_FIELDS:
        value = getattr(run, name)
        if value is None:
            continue
        if name.endswith("_at"):
            value = format_time(value, seconds=True)
        elif name == "duration_s":
            value = format_duration(value)
        lines.append(f"{name:<18}{escape_controls(str(value))}")
    for name in _BLOCK_FIELDS:
        value = getattr(run, name)
        if value:
            lines.append("")
            lines.append(f"{name}:")
            text = str(value).rstrip()
            lines.extend("  " + escape_controls(line, keep="\t") for line in text.splitlines())
    return lines


def _probe_line(run: dict[str, Any], holds: list[dict[str, Any]]) -> str:
    """What a run that probed a halt found, and what became of its item."""
    target = next((h["target"] for h in holds if h["id"] == run["probe_of"]), "a halted target")
    head = f"probe of the halt on {escape_controls(str(target))}"
    if run["status"] == "ok":
        return f"{head}: it went through, so the halt was cleared"
    if run["status"] in ("failed", "timed_out"):
        return f"{head}: it failed, so the halt stays; its item waits, no attempt spent"
    return f"{head}: it told nothing ({run['status']}); the halt stays"


def _live(run: dict[str, Any]) -> str:
    """A running attempt's last reported progress and message."""
    if run["status"] != "running":
        return ""
    progress = f" {run['progress'] * 100:.0f}%" if run.get("progress") is not None else ""
    return progress + (f" {run['message']}" if run.get("message") else "")


def format_time(epoch: float | None, seconds: bool = False) -> str:
    if epoch is None:
        return "-"
    if not valid_time(epoch):  # a bad value an older version stored: shown, never a crash
        return f"(not a time: {epoch})"
    text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))
    return text + (f".{int(epoch % 1 * 1000):03d}" if seconds else "")


def valid_time(epoch: float | None) -> bool:
    """True for a UNIX time the local calendar can show (year 1 to 9999)."""
    try:
        time.localtime(epoch if epoch is not None else math.nan)
    except (OverflowError, ValueError, OSError):
        return False
    return True


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if not math.isfinite(seconds):
        return f"(not a duration: {seconds})"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    if seconds < 2 * DAY_S:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / DAY_S:.1f}d"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def describe_hold(hold: Any) -> str:
    """One line a person reads: 'sms — 25× Rate limited within 2h since 14:02'.

    `hold` is a store row or its dict (status JSON); both have the same fields.
    """
    get = hold.get if isinstance(hold, dict) else lambda name: getattr(hold, name)
    created = get("created_at")
    since = time.strftime("%H:%M", time.localtime(created)) if valid_time(created) else "?"
    what = "paused" if get("kind") == "pause" else get("reason")
    by = f" by {get('created_by')}" if get("kind") == "pause" and get("created_by") else ""
    lifts = ""
    if get("kind") == "halt" and get("scope") == "pipeline" and get("probe_at"):  # a budget's
        lifts = f", lifts {time.strftime('%a %H:%M', time.localtime(get('probe_at')))}"
    return f"{escape_controls(str(get('target')))} — {what}{by} since {since}{lifts}"


def _rebucketed_line(was: dict[str, Any]) -> str:
    first = f"{was['group']} · {was['label']}" if was["label"] else "no label"
    by = f", by {was['rule']}" if was["rule"] else ""
    return (
        f"re-bucketed {format_time(was['at'])} by `pipewarden reclassify`; first judged"
        f" [{first}]{by} (rules {was['rules_version'] or '?'})"
    )


def story_lines(story: dict[str, Any]) -> list[str]:
    """`pipewarden why`: the item, each run, the backoff, the holds, what happens next."""
    lines = [
        f"{story['pipeline']}/{escape_controls(story['key'])}: {story['state']} at {story['stage']}"
        + (f" (channel {escape_controls(story['channel'])})" if story["channel"] else ""),
        f"  enqueued {format_time(story['created_at'])},"
        f" last change {format_time(story['updated_at'])}",
        "",
        "runs:" if story["runs"] else "runs: none yet",
    ]
    for run in story["runs"]:
        verdict = f" [{run['group']} · {run['label']}]" if run["label"] else ""
        lines.append(
            f"  {format_time(run['started_at'])}  {run['stage']}#{run['attempt']}"
            f"  {run['status']}{verdict}{_live(run)}  {format_duration(run['duration_s'])}"
            f"  run {run['id'][:8]}"
        )
        if run["error"]:
            lines.append(f"      {first_line(run['error'])}")
        if run["rule"]:
            lines.append(f"      classified by {run['rule']}")
        if run.get("rebucketed"):
            lines.append(f"      {_rebucketed_line(run['rebucketed'])}")
        if run.get("probe_of") is not None:
            lines.append(f"      {_probe_line(run, story['holds'])}")
        if run.get("replay_of"):
            lines.append(
                f"      replay of run {run['replay_of'][:8]} (`pipewarden replay --record`):"
                " not counted as the item's work"
            )
    if story["backoff_s"]:
        delays = ", ".join(format_duration(d) for d in story["backoff_s"])
        lines += ["", f"retry policy at {story['stage']}: {story['max_attempts']} attempts,"
                  f" waits {delays} (plus jitter)"]  # fmt: skip
    if story["holds"]:
        lines += ["", "held by:"]
        for hold in story["holds"]:
            cleared = (
                f", cleared {format_time(hold['cleared_at'])} by {hold['cleared_by']}"
                if hold["cleared_at"]
                else " (active)"
            )
            lines.append(f"  {hold['kind']} {describe_hold(hold)}{cleared}")
    if story.get("advice", {}).get("advice") or story.get("advice", {}).get("runbook"):
        from pipewarden.advising import advice_lines

        lines += ["", f"what to do about '{story['last_label']}':",
                  *advice_lines(story["advice"], "  ")]  # fmt: skip
    lines += ["", f"next: {story['next']}"]
    return lines
