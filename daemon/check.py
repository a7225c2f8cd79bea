"""`pipewarden check`: the status snapshot as a monitor reads it — one line and an exit code
in the Nagios/Icinga convention (0 ok, 1 warning, 2 critical).

Critical: the daemon is down, a halt stands, failures are rising, the store is in trouble.
Warning: a backlog is growing, the last reload failed, a target is paused.
Everything is judged from the snapshot alone, so it reads the same through the daemon's
socket as from the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

OK, WARNING, CRITICAL = 0, 1, 2
LEVEL_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL"}
FAILURES_MIN = 5  # failures in the last hour below this are never "rising"
FAILURES_FACTOR = 2.0  # ... and at least this many times the day's hourly rate before it


@dataclass(frozen=True)
class Problem:
    level: int
    what: str


def problems(snapshot: dict[str, Any]) -> list[Problem]:
    """What is wrong, most severe first."""
    found = [*_daemon(snapshot), *_holds(snapshot), *_rules(snapshot)]
    for pipeline in snapshot["pipelines"]:
        for stage in pipeline["stages"]:
            where = f"{pipeline['name']}/{stage['name']}"
            found += [*_failures(where, stage), *_backlog(where, stage)]
    return sorted(found, key=lambda problem: -problem.level)


def verdict(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The level, the one line, and the problems, for `--json`."""
    found = problems(snapshot)
    level = found[0].level if found else OK
    line = "; ".join(problem.what for problem in found) if found else _all_well(snapshot)
    return {
        "status": LEVEL_NAMES[level].lower(),
        "code": level,
        "line": f"pipewarden {LEVEL_NAMES[level]}: {line}",
        "problems": [{"level": LEVEL_NAMES[p.level].lower(), "what": p.what} for p in found],
    }


def _daemon(snapshot: dict[str, Any]) -> list[Problem]:
    daemon = snapshot["daemon"]
    found = []
    if not daemon["running"]:
        found.append(Problem(CRITICAL, "daemon not running"))
    if daemon.get("store_fault"):
        found.append(Problem(CRITICAL, str(daemon["store_fault"]).splitlines()[0]))
    return found


def _holds(snapshot: dict[str, Any]) -> list[Problem]:
    found = []
    for hold in snapshot["holds"]:
        if hold["kind"] == "halt":
            found.append(Problem(CRITICAL, f"halt on {hold['target']} ({hold['reason']})"))
        else:
            found.append(Problem(WARNING, f"{hold['scope']} {hold['target']} paused"))
    return found


def _rules(snapshot: dict[str, Any]) -> list[Problem]:
    reload = snapshot.get("rules")
    if reload is not None and not reload["ok"]:
        return [Problem(WARNING, f"reload failed ({reload['error']}); old rules in force")]
    return []


def _failures(where: str, stage: dict[str, Any]) -> list[Problem]:
    """Items that failed in the last hour, against the hourly rate of the 23 hours before."""
    failed = next((s for s in stage["states"] if s["state"] == "failed"), None)
    if failed is None or failed["d1"] < FAILURES_MIN:
        return []
    before = (failed["d24"] - failed["d1"]) / 23
    if failed["d1"] < FAILURES_FACTOR * before:
        return []
    return [Problem(CRITICAL, f"{where} failures rising ({failed['d1']} in the last hour,"
                              f" {before:.1f}/h before)")]  # fmt: skip


def _backlog(where: str, stage: dict[str, Any]) -> list[Problem]:
    """More items came into the queue in the last hour, and still wait, than the stage ran."""
    queue = stage.get("queue")
    queued = next((s for s in stage["states"] if s["state"] == "queued"), None)
    ran = ((stage.get("telemetry") or {}).get("1h") or {}).get("runs", 0)
    if not queue or not queue["ready"] or queued is None or queued["d1"] <= ran:
        return []
    return [Problem(WARNING, f"{where} backlog growing ({queued['d1']} queued in the last"
                             f" hour, {ran} run)")]  # fmt: skip


def _all_well(snapshot: dict[str, Any]) -> str:
    pipelines = snapshot["pipelines"]
    queued = sum(
        state["total"]
        for pipeline in pipelines
        for stage in pipeline["stages"]
        for state in stage["states"]
        if state["state"] in ("queued", "retrying")
    )
    return (
        f"daemon running (pid {snapshot['daemon']['pid']}), {len(pipelines)} pipeline(s),"
        f" {queued:,} item(s) waiting, no halt"
    )
