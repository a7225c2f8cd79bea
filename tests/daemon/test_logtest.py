"""`pipewarden rules test --file LOG`: a whole log classified as the daemon would, then
counts per group and label and the unmatched lines; --json gives one object per line."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import Project

LOG = """\
HTTP 429 Too Many Requests (Retry-After: 30)
read ECONNRESET
EACCES: permission denied, open '/run/media/store/shots/capture.png'

read ECONNRESET
the flux capacitor overheated
the flux capacitor overheated
Social media platform: facebook.com
"""


def configured(project: Project) -> Project:
    project.configure("sites:\n  stages:\n    - {name: capture, command: [x]}\n",
                      rules=("pack:http", "pack:net"))  # fmt: skip
    project.write("errors.log", LOG)
    return project


def test_a_log_gets_counts_per_group_and_label_then_its_unmatched_lines(project: Project):
    lines = (
        configured(project)
        .cli("rules", "test", "--file", "errors.log", "--pipeline", "sites")
        .stdout.splitlines()
    )
    assert lines == [
        "7 lines: 5 labelled (71%), 2 unmatched",
        "",
        "retriable        4  (57%)",
        "        2  Network error",
        "        1  Rate limited",
        "        1  Permission denied",
        "ignore           1  (14%)",
        "        1  Social media",
        "unknown          2  (29%)",
        "",
        "unmatched lines (1 distinct), most frequent first:",
        "        2× the flux capacitor overheated",
    ]


def test_json_is_one_object_per_line_in_order(project: Project):
    out = configured(project).cli("rules", "test", "--file", "errors.log", "--json").stdout
    objects = [json.loads(line) for line in out.splitlines()]
    assert [o["line"] for o in objects] == [1, 2, 3, 5, 6, 7, 8]  # the blank line 4 is skipped
    assert objects[0]["label"] == "Rate limited" and objects[0]["rule"].startswith("pack:http:")
    assert objects[4] == {"line": 6, "group": "unknown", "label": "Unknown", "rule": None}
    assert set(objects[1]) == {"line", "group", "label", "rule"}


def test_standard_input_with_a_dash_and_bad_arguments_are_one_line(project: Project):
    configured(project)
    done = subprocess.run(
        [sys.executable, "-m", "pipewarden", "rules", "test", "--file", "-", "--json"],
        cwd=project.root, env=project.env(), input="socket hang up\n\xff\xfe broken\n".encode(),
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    first, second = (json.loads(line) for line in done.stdout.decode().splitlines())
    assert (first["label"], second["group"]) == ("Connection dropped", "unknown")
    missing = project.cli("rules", "test", "--file", "nope.log", expect=2)
    assert (
        missing.stderr == "pipewarden: --file nope.log: cannot read it: No such file or directory\n"
    )
    both = project.cli("rules", "test", "x", "--file", "errors.log", expect=2)
    assert both.stderr == "pipewarden: rules test takes an error text or --file LOG, not both\n"
    neither = project.cli("rules", "test", expect=2)
    assert "rules test needs an error text, or --file LOG" in neither.stderr


def test_rules_test_shows_the_advice_of_the_rule_that_matched(project: Project):
    project.configure(
        "sites:\n  stages:\n    - {name: capture, command: [x]}\n", rules=("pack:os",)
    )
    done = project.cli("rules", "test", "OSError: [Errno 28] No space left on device")
    assert done.stdout.splitlines()[:4] == [
        "group     retriable",
        "label     Disk full",
        "category  infrastructure",
        "type      disk_full",
    ]
    assert done.stdout.splitlines()[-1].startswith(
        "advice    the disk (or the user's quota) is full"
    )
    answer = json.loads(project.cli("rules", "test", "No space left on device", "--json").stdout)
    assert answer["advice"].startswith("the disk") and answer["rule"].startswith("pack:os:")
    assert answer["pattern"]
