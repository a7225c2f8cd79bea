"""Rules replayed over stored failures (`pipewarden rules backtest`) and history re-bucketed
under the current rules (`pipewarden reclassify`), on a seeded store."""

from __future__ import annotations

import json
import re
import time

from conftest import Project

EXTRA_RULES = """\
# the team's own rules
rules:
  - match: 'quota exceeded'
    group: terminal
    label: Over quota
"""
WIDGET_RULE = """\
  - match: 'Widget \\d+ refused'
    group: retriable
    label: Widget refused
  - match: 'Timed out after 5s'
    group: retriable
    label: Navigation timeout
"""
WIDGET = "RuntimeError: Widget {n} refused by https://shop.example.com/w/{n} after {n}ms"
TIMEOUT = "Timed out after 5s (stopped by SIGTERM)"


def seeded(project: Project) -> None:
    """A store with 40 unmatched widget failures (10 distinct texts, 5 of them older than
    a week), 6 timeouts, a quota failure its rule labelled and ok runs."""
    project.configure("sites:\n  stages:\n    - {name: work, command: 'true'}\n")
    config = project.config_path.read_text()  # the team's rules first: first match wins
    project.write("config.yaml", config.replace("rules: [", "rules: [extra.yaml, ", 1))
    project.write("extra.yaml", EXTRA_RULES)
    store = project.store()
    now = time.time()
    rows = [(WIDGET.format(n=n % 10), "RuntimeError", "unknown", "Unknown", "unknown",
             now - 3600 - n) for n in range(35)]  # fmt: skip
    rows += [(WIDGET.format(n=n), "RuntimeError", "unknown", "Unknown", "unknown",
              now - 9 * 86400) for n in range(5)]  # fmt: skip
    rows += [(TIMEOUT, "TimeoutError", "retriable", "Timeout", "infrastructure", now - 60)] * 6
    rows += [("quota exceeded for key 7", None, "terminal", "Over quota", "unknown", now - 60)]
    with store.transaction():
        conn = store.db.connection()
        for n, (error, error_type, group, label, category, at) in enumerate(rows):
            conn.execute(
                "INSERT INTO items (id, pipeline, key, stage, state, attempt, last_run_id,"
                " last_error, last_label, last_group, created_at, updated_at)"
                " VALUES (?, 'sites', ?, 'work', 'failed', 1, ?, ?, ?, ?, ?, ?)",
                (n + 1, f"k{n}", f"run{n}", error, label, group, at, at),
            )
            conn.execute(
                "INSERT INTO runs (id, pipeline, stage, item_id, item_key, attempt, status,"
                " started_at, finished_at, error, error_type, failure) VALUES (?, 'sites',"
                " 'work', ?, ?, 1, ?, ?, ?, ?, ?, json_object('group_name', ?, 'label', ?,"
                " 'category', ?, 'type', ?, 'rules_version', 'v-old'))",
                (f"run{n}", n + 1, f"k{n}", "timed_out" if error == TIMEOUT else "failed",
                 at, at + 1, error, error_type, group, label, category, category),
            )  # fmt: skip
        for n in range(3):
            conn.execute(
                "INSERT INTO runs (id, pipeline, stage, item_id, item_key, attempt, status,"
                " started_at, finished_at) VALUES (?, 'sites', 'work', 1, 'k0', 2, 'ok', ?, ?)",
                (f"ok{n}", now, now),
            )
    store.close()


def test_backtest_of_the_current_rules_finds_nothing_to_change(project: Project):
    seeded(project)
    out = project.cli("rules", "backtest").stdout
    assert out.splitlines() == [
        "42 stored failures in the last 7d (12 distinct texts)",
        "no run would change its label",
    ]


def test_backtest_of_an_edited_file_counts_the_runs_each_label_would_take(
    project: Project, tmp_path
):
    seeded(project)
    edited = tmp_path / "edited" / "extra.yaml"
    edited.parent.mkdir()
    edited.write_text(EXTRA_RULES + WIDGET_RULE)
    out = project.cli("rules", "backtest", str(edited)).stdout
    assert out.splitlines() == [
        "42 stored failures in the last 7d (12 distinct texts); 41 would change:",
        "35 runs from Unknown → Widget refused (retriable)",
        "6 runs from Timeout → Navigation timeout (retriable)",
    ]
    wider = json.loads(project.cli("rules", "backtest", str(edited), "--since", "30d",
                                   "--json").stdout)  # fmt: skip
    assert (wider["failures"], wider["texts"], wider["changed"]) == (47, 12, 46)
    # nothing was written: the store still says what the daemon decided
    assert {r.label for r in project.runs() if r.error and "Widget" in r.error} == {"Unknown"}


def test_backtest_names_a_missing_file_and_a_bad_duration(project: Project):
    seeded(project)
    missing = project.cli("rules", "backtest", "nope.yaml", expect=2).stderr
    assert missing.strip() == "pipewarden: nope.yaml: no such rules file"
    assert "--since" in project.cli("rules", "backtest", "--since", "soon", expect=2).stderr


def test_reclassify_rebuckets_history_and_keeps_the_first_classification(project: Project):
    seeded(project)
    project.write("extra.yaml", EXTRA_RULES + WIDGET_RULE)  # saved in place this time
    dry = project.cli("reclassify", "--since", "7d", "--dry-run").stdout.splitlines()
    assert dry[1:] == [
        "35 runs from Unknown → Widget refused (retriable)",
        "6 runs from Timeout → Navigation timeout (retriable)",
        "dry run: nothing changed (run it without --dry-run to re-bucket them)",
    ]
    assert {r.label for r in project.runs() if r.error and "Widget" in r.error} == {"Unknown"}

    done = json.loads(project.cli("reclassify", "--since", "7d", "--json").stdout)
    assert (done["runs_changed"], done["items_relabelled"]) == (41, 41)
    widgets = [r for r in project.runs() if r.error and "Widget" in r.error]
    recent = [r for r in widgets if r.reclassified_at is not None]
    assert len(recent) == 35 and len(widgets) == 40  # the 5 older than a week are left alone
    assert {(r.label, r.group_name, r.original_label, r.original_group) for r in recent} == {
        ("Widget refused", "retriable", "Unknown", "unknown")
    }
    assert {(r.rules_version, r.original_rules_version) for r in recent} == {
        (done["rules_version"], "v-old")
    }
    assert {r.rule_id for r in recent} == {"extra.yaml:6"}

    status = project.cli("status").stdout
    assert "Widget refused (35 re-bucketed)" in status
    assert "Navigation timeout (6 re-bucketed)" in status
    assert re.search(r"Unknown\s+5\s", status)  # only the 5 items older than the window
    why = project.cli("why", "k0").stdout
    assert "[retriable · Widget refused]" in why
    assert "first judged [unknown · Unknown] (rules v-old)" in why

    again = project.cli("reclassify", "--since", "7d").stdout.splitlines()
    assert again[-1] == "no run would change its label"
    project.write("extra.yaml", EXTRA_RULES)  # the rule taken out: back to Unknown
    project.cli("reclassify", "--since", "7d")
    back = next(r for r in project.runs("k0"))
    assert (back.label, back.original_label, back.original_rules_version) == (
        "Unknown",
        "Unknown",
        "v-old",
    )  # the first classification stays the one the daemon made
