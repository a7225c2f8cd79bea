"""The status tree against a store with known counts and times: totals, Δ24h, Δ1h."""

from __future__ import annotations

import json
import time

from conftest import Project, wait_until
from freezegun import freeze_time
from pipewarden.config import load_config
from pipewarden.render import Paint, status_tree
from pipewarden.status import status_snapshot

HOUR = 3600


def counted(text: str) -> str:
    """A tree row of one item: its text, then Total, Δ24h and Δ1h."""
    return text + " " * max(1, 46 - len(text)) + "         1       +1       +1"


def put(store, pipeline, stage, key, state, age_s, label=None, group=None, channel=None):
    """An item in `state`, last changed `age_s` ago (by the frozen clock)."""
    now = time.time()
    store.enqueue(pipeline, stage, [(key, {})], now - age_s)
    store.db.connection().execute(
        "UPDATE items SET state = ?, last_label = ?, last_group = ?, updated_at = ?,"
        " channel = COALESCE(?, channel) WHERE pipeline = ? AND key = ?",
        (state, label, group, now - age_s, channel, pipeline, key),
    )


def build(project: Project) -> None:
    project.configure(
        """
        sites:
          stages:
            - {name: find, command: [x]}
            - {name: capture, command: [x]}
        outreach:
          stages:
            - {name: send, command: [x], channel: "{data.contact_method}"}
        """
    )
    store = project.store()
    ages = [0.5 * HOUR] * 4 + [5 * HOUR] * 3 + [48 * HOUR] * 3  # 4 in 1h, 7 in 24h
    for n, age in enumerate(ages):
        put(store, "sites", "capture", f"done-{n}", "done", age)
    for n, age in enumerate([0.1 * HOUR, 0.2 * HOUR, 30 * HOUR]):
        put(store, "sites", "capture", f"conflict-{n}", "failed", age,
            "Browser launch conflict", "retriable")  # fmt: skip
    for n in range(2):
        put(store, "sites", "capture", f"gone-{n}", "failed", 72 * HOUR,
            "Permanent HTTP error", "terminal")  # fmt: skip
    filters = ["Social media", "Business directory", "Franchise", "Government domain",
               "Non-commercial", "Country mismatch", "Duplicate domain"]  # fmt: skip
    for n, label in enumerate(filters):
        for m in range(len(filters) - n):  # 7 Social media, 6 Business directory, ...
            put(store, "sites", "find", f"{label}-{m}", "ignored", 2 * HOUR, label, "ignore")
    for n, channel in enumerate(["sms", "sms", "email"]):
        put(store, "outreach", "send", f"o-{n}", "queued", 0.1 * HOUR, channel=channel)
    store.db.connection().commit()
    store.close()


@freeze_time("2026-11-21 12:00:00")
def test_the_tree_counts_totals_and_deltas_and_folds_small_labels(project: Project):
    build(project)
    config = load_config(project.config_path)
    store = project.store()
    snapshot = status_snapshot(config, store, time.time())
    store.close()

    lines = status_tree(snapshot, Paint(False))
    assert lines[1:] == [
        "",
        "sites                                              Total     Δ24h      Δ1h",
        "─" * 74,
        "▸ find                                                28      +28       +0",
        "  └─ ignored                                          28      +28       +0",
        "     ├─ Social media                                   7       +7       +0",
        "     ├─ Business directory                             6       +6       +0",
        "     ├─ Franchise                                      5       +5       +0",
        "     ├─ Government domain                              4       +4       +0",
        "     ├─ Non-commercial                                 3       +3       +0",
        "     └─ Other (2 more)                                 3       +3       +0",
        "▸ capture                                             15       +9       +6",
        "  ├─ done                                             10       +7       +4",
        "  └─ failed                                            5       +2       +2",
        "     ├─ Retries exhausted                              3       +2       +2",
        "     │  └─ Browser launch conflict                     3       +2       +2",
        "     └─ Terminal                                       2       +0       +0",
        "        └─ Permanent HTTP error                        2       +0       +0",
        "",
        "outreach                                           Total     Δ24h      Δ1h",
        "─" * 74,
        "▸ send                                                 3       +3       +3",
        "  └─ queued                                            3       +3       +3",
        "     ├─ sms                                            2       +2       +2",
        "     └─ email                                          1       +1       +1",
    ]
    assert json.loads(json.dumps(snapshot)) == snapshot  # --json carries the whole tree
    assert status_tree(json.loads(json.dumps(snapshot)), Paint(False)) == lines


def test_colours_only_on_request(project: Project):
    build(project)
    config = load_config(project.config_path)
    store = project.store()
    snapshot = status_snapshot(config, store, time.time())
    store.close()
    coloured = "\n".join(status_tree(snapshot, Paint(True)))
    assert "\x1b[32m  ├─ done\x1b[0m" in coloured  # good progress: green
    assert "\x1b[31m  └─ failed\x1b[0m" in coloured  # failures: red
    assert "\x1b[90m  └─ ignored\x1b[0m" in coloured  # expected filters: grey
    plain = project.cli("status").stdout  # not a terminal: no colour codes at all
    assert "\x1b[" not in plain and "▸ capture" in plain


FILER = """
def capture(data):
    if data.get("locked"):
        raise RuntimeError("EACCES: permission denied, open '/mnt/store/shot.png'")
    if data.get("gone"):
        raise RuntimeError("HTTP 404 Not Found. Cannot capture")
    if data.get("odd"):
        raise RuntimeError("the flux capacitor is misaligned")
    return {}


def publish(data):
    if data.get("flaky"):
        raise RuntimeError("the flux capacitor is misaligned")
    if data.get("later"):
        return {"defer": "1h"}
    return {}
"""


def test_the_tree_files_items_where_a_person_looks_for_them(project: Project):
    closed_day = time.strftime("%a", time.gmtime(time.time() + 2 * 86400)).lower()
    project.write("filer.py", FILER)
    project.configure(
        """
        sites:
          stages:
            - {name: capture, python: "filer:capture", retry: {max_attempts: 2, backoff: 10ms}}
            - name: publish
              python: "filer:publish"
              channel: "{data.via}"
              retry: {max_attempts: 3, backoff: 1h}
        """,
        extra=f"channels:\n  print: {{days: {closed_day}, hours: '09:00-17:00'}}\n",
    )
    items = {"locked": {"locked": True}, "gone": {"gone": True}, "odd": {"odd": True},
             "flaky": {"flaky": True, "via": "web"}, "later": {"later": True, "via": "web"},
             "paper": {"via": "print"}}  # fmt: skip
    project.write("items.jsonl", "".join(json.dumps({"key": k, "data": d}) + "\n"
                                         for k, d in items.items()))  # fmt: skip
    project.cli("enqueue", "sites", "--file", "items.jsonl")
    daemon = project.start_daemon()
    settled = {"locked": "failed", "gone": "failed", "odd": "failed", "flaky": "retrying",
               "later": "deferred", "paper": "deferred"}  # fmt: skip
    wait_until(
        lambda: {k: project.item("sites", k).state for k in items} == settled, "items to settle"
    )
    daemon.terminate()
    daemon.wait(15)

    def until(key: str) -> str:
        ready_at = project.item("sites", key).ready_at
        shape = "%H:%M" if ready_at - time.time() < 86400 else "%a %H:%M"
        return time.strftime(shape, time.localtime(ready_at))

    lines = project.cli("status").stdout.splitlines()
    assert lines[lines.index(next(x for x in lines if x.startswith("▸ capture"))) :] == [
        "▸ capture                                              3       +3       +3",
        "  └─ failed                                            3       +3       +3",
        "     ├─ Retries exhausted                              1       +1       +1",
        "     │  └─ Permission denied                           1       +1       +1",
        "     ├─ Terminal                                       1       +1       +1",
        "     │  └─ Permanent HTTP error                        1       +1       +1",
        "     └─ Unknown                                        1       +1       +1",
        "▸ publish                                              3       +3       +3",
        "  ├─ retrying                                          1       +1       +1",
        "  │  └─ Unknown                                        1       +1       +1",
        "  └─ deferred                                          2       +2       +2",
        counted(f"     ├─ Deferred by the worker · until {until('later')}"),
        counted(f"     └─ Outside business hours · until {until('paper')}"),
    ]
    (capture, publish) = json.loads(project.cli("status", "--json").stdout)["pipelines"][0][
        "stages"
    ]  # --json carries the same structure
    assert [g["name"] for g in capture["states"][0]["groups"]] == [
        "Retries exhausted", "Terminal", "Unknown",
    ]  # fmt: skip
    (deferred,) = [s for s in publish["states"] if s["state"] == "deferred"]
    assert [(r["reason"], r["total"]) for r in deferred["reasons"]] == [
        ("Deferred by the worker", 1), ("Outside business hours", 1),
    ]  # fmt: skip
    assert deferred["reasons"][1]["wakes_at"] == project.item("sites", "paper").ready_at


@freeze_time("2026-11-21 12:00:00")
def test_a_quick_stage_with_many_items_claimed_ahead_lists_ten_of_them_and_counts_the_rest(
    project: Project,
):
    """A no-op pool stage has hundreds of items claimed ahead, each a running run: the tree
    lists the first RUNNING_SHOWN (or the stage's concurrency, if larger), then a count."""
    from pipewarden.store import NewRun

    project.configure(
        "sites:\n  stages:\n    - {name: find, python: 'w:work', mode: pool, concurrency: 2}\n"
    )
    config = load_config(project.config_path)
    store = project.store()
    store.enqueue("sites", "find", [(f"site-{n:02}", {}) for n in range(30)], time.time() - 60)

    def describe(item_id: int, key: str, data: dict) -> NewRun:
        return NewRun(item_id, None, f"{item_id:016x}", None, None)

    for n in range(30):  # one claim a second, so that the oldest are listed first
        store.claim("sites", "find", 1, time.time() - 30 + n, describe)
    snapshot = status_snapshot(config, store, time.time())
    store.close()

    lines = status_tree(snapshot, Paint(False))
    assert lines[4] == "▸ find  30 running                                    30      +30      +30"
    assert lines[5] == "  └─ running                                          30      +30      +30"
    assert lines[6:] == [
        *(f"     ├─ site-{n:02}#1 ({30 - n}.0s)" for n in range(10)),
        "     └─ … and 20 more",
    ]
    (stage,) = snapshot["pipelines"][0]["stages"]
    assert (len(stage["running"]), stage["running_more"]) == (10, 20)
