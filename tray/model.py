"""What the tray shows, as a pure function of the daemon's status snapshot.

Green: all flows. Amber: a retry or defer backlog grew in the last hour, something is
paused, or the last rules reload failed. Red: a channel is halted, or failures are
rising. Grey: the daemon cannot be reached. The tray keeps no state of its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

FAILURES_RED_PER_HOUR = 10  # this many newly failed items in an hour turn the icon red


@dataclass(frozen=True)
class MenuEntry:
    text: str
    action: str | None = None  # "clear:TARGET", "runbook:URL", "pause_all", "resume_all", "reload",
    # "open", "quit"
    enabled: bool = True
    children: tuple[MenuEntry, ...] = ()


SEPARATOR = MenuEntry("-")


@dataclass(frozen=True)
class TrayState:
    colour: str  # green | amber | red | grey
    badge: int | None  # a count drawn on the icon
    tooltip: str
    menu: tuple[MenuEntry, ...]
    halts: tuple[str, ...]  # halted targets, to notice new ones
    halt_notes: tuple[str, ...] = ()  # for each, what its notification says: the rules' advice


def tray_state(snapshot: dict[str, Any] | None) -> TrayState:
    if snapshot is None:
        return TrayState(
            "grey", None, "pipewarden: the daemon cannot be reached",
            (MenuEntry("daemon not reachable", enabled=False), SEPARATOR, *_actions()),
            (),
        )  # fmt: skip
    totals = _totals(snapshot)
    halts = [h for h in snapshot["holds"] if h["kind"] == "halt"]
    paused = [h for h in snapshot["holds"] if h["kind"] == "pause"]
    reload = snapshot.get("rules")
    failed_1h = totals["failed"]["d1"]
    growing = totals["retrying"]["d1"] + totals["deferred"]["d1"]
    if halts or failed_1h >= FAILURES_RED_PER_HOUR:
        colour, badge = "red", len(halts) or failed_1h
    elif growing or paused or (reload is not None and not reload["ok"]):
        colour, badge = "amber", None
    else:
        colour, badge = "green", None
    halted = tuple(h["target"] for h in halts)
    halt_entries = tuple(entry for h in halts for entry in _halt_entries(h)) or (
        MenuEntry("none: everything flows", enabled=False),
    )
    menu = (
        *(_pipeline_line(p) for p in snapshot["pipelines"]),
        SEPARATOR,
        MenuEntry("Halts", children=halt_entries),
        *_actions(),
    )
    tooltip = _tooltip(totals, halted, paused, reload)
    notes = tuple(_halt_note(h) or tooltip for h in halts)
    return TrayState(colour, badge, tooltip, menu, halted, notes)


def _totals(snapshot: dict[str, Any]) -> dict[str, dict[str, int]]:
    totals: dict[str, dict[str, int]] = {}
    for pipeline in snapshot["pipelines"]:
        for stage in pipeline["stages"]:
            for state in stage["states"]:
                entry = totals.setdefault(state["state"], {"total": 0, "d1": 0})
                entry["total"] += state["total"]
                entry["d1"] += state["d1"]
    for name in ("queued", "running", "retrying", "deferred", "done", "failed"):
        totals.setdefault(name, {"total": 0, "d1": 0})
    return totals


def _pipeline_line(pipeline: dict[str, Any]) -> MenuEntry:
    counts: dict[str, int] = {}
    for stage in pipeline["stages"]:
        for state in stage["states"]:
            counts[state["state"]] = counts.get(state["state"], 0) + state["total"]
    order = ("running", "queued", "retrying", "failed", "done")
    shown = [f"{counts[s]:,} {s}" for s in order if counts.get(s)]
    return MenuEntry(f"{pipeline['name']}: {' · '.join(shown) or 'empty'}", enabled=False)


def _halt_entries(hold: dict[str, Any]) -> tuple[MenuEntry, ...]:
    """The halt (a click clears it), then what the rules advise and their runbook's link."""
    since = time.strftime("%H:%M", time.localtime(hold["created_at"]))
    what = f"{hold['count']}× {hold['label']}" if hold.get("label") else hold["reason"]
    entries = [MenuEntry(f"{hold['target']} — {what} since {since}",
                         action=f"clear:{hold['target']}")]  # fmt: skip
    advice = (hold.get("advice") or "").strip()
    entries += [MenuEntry(f"    {line}", enabled=False) for line in advice.splitlines()]
    if runbook := hold.get("runbook"):
        entries.append(MenuEntry(f"    runbook: {runbook}", action=f"runbook:{runbook}"))
    return tuple(entries)


def _halt_note(hold: dict[str, Any]) -> str:
    """A new halt's notification: the reason and the rules' advice, if they give any."""
    advice = " ".join((hold.get("advice") or "").split())
    if not advice and not hold.get("runbook"):
        return ""
    return " — ".join(part for part in (hold["reason"], advice, hold.get("runbook")) if part)


def _actions() -> tuple[MenuEntry, ...]:
    return (
        SEPARATOR,
        MenuEntry("Pause all", action="pause_all"),
        MenuEntry("Resume all", action="resume_all"),
        MenuEntry("Reload rules", action="reload"),
        MenuEntry("Open dashboard", action="open"),
        SEPARATOR,
        MenuEntry("Quit", action="quit"),
    )


def _tooltip(totals: dict, halted: tuple[str, ...], paused: list, reload: Any) -> str:
    parts = []
    if halted:
        parts.append(f"{len(halted)} halted ({', '.join(halted)})")
    if paused:
        parts.append(f"{len(paused)} paused")
    parts.append(f"{totals['running']['total']:,} running")
    parts.append(f"{totals['queued']['total']:,} queued")
    if totals["failed"]["d1"]:
        parts.append(f"{totals['failed']['d1']:,} failed in 1h")
    if reload is not None and not reload["ok"]:
        parts.append("rules reload failed")
    return "pipewarden: " + " · ".join(parts)
