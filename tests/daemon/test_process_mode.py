"""A fresh process per item, with the least machinery: what the worker gets is still exact."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import Project, wait_until

LIST_FDS = """
import json, os, sys
item = json.loads(sys.stdin.readline())
fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
with open(f"fds-{item['item']}.json", "w") as out:
    json.dump({"fds": fds, "size": len(item["data"].get("blob", ""))}, out)
"""


def one_stage(project: Project) -> None:
    project.write("list_fds.py", LIST_FDS)
    stage = "{name: work, command: [python3, list_fds.py], mode: process, concurrency: 2,"
    stage += " retry: {max_attempts: 1}}"
    project.configure(f"sites:\n  stages:\n    - {stage}\n")


def seen_by(project: Project, key: str) -> dict:
    path = project.root / f"fds-{key}.json"
    wait_until(lambda: project.item("sites", key).state == "done", f"{key} to be done")
    return json.loads(path.read_text())


def test_a_worker_inherits_no_descriptor_the_daemon_was_started_with(project: Project):
    one_stage(project)
    project.cli("enqueue", "sites", "a")  # before the start: --until-idle may end at once
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)  # as a careless launcher would leave it
    daemon = subprocess.Popen(
        [sys.executable, "-m", "pipewarden", "run", "--until-idle"], cwd=project.root,
        env=project.env(), pass_fds=(write_end,), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(write_end)
    try:
        assert daemon.wait(60) == 0
    finally:
        os.close(read_end)
    fds = seen_by(project, "a")["fds"]
    assert fds == [0, 1, 2, 3], fds  # stdin, stdout, stderr, and the listing's own


def test_an_item_larger_than_a_pipe_reaches_its_worker_whole(project: Project):
    one_stage(project)
    blob = "x" * 600_000  # ten times what a pipe holds: written as the worker reads
    items = [{"key": "big", "data": {"blob": blob}}, {"key": "small", "data": {}}]
    project.write("items.jsonl", "".join(json.dumps(item) + "\n" for item in items))
    project.cli("enqueue", "sites", "--file", "items.jsonl")
    assert project.start_daemon("--until-idle").wait(60) == 0
    assert seen_by(project, "big")["size"] == 600_000
    assert seen_by(project, "small")["size"] == 0
