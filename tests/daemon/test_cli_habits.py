"""The CLI's habits operators bring from systemctl, journalctl and the like: --version,
options before the command, a group's own help."""

from __future__ import annotations

from conftest import Project
from pipewarden import __version__

CONFIG = """
sites:
  stages:
    - {name: find, python: "steps:find"}
"""


def test_version_is_printed_and_exits_0(project: Project):
    done = project.cli("--version")
    assert done.stdout == f"pipewarden {__version__}\n"


def test_global_options_are_taken_before_the_command(project: Project):
    project.write("steps.py", "def find(data):\n    return None\n")
    project.configure(CONFIG)
    elsewhere = project.root / "elsewhere.yaml"
    project.config_path.rename(elsewhere)
    state = project.root / "state"
    before = project.cli("--config", str(elsewhere), "--state-dir", str(state), "status")
    assert f"state {state}" in before.stdout
    after = project.cli("status", "--config", str(elsewhere), "--state-dir", str(state))
    assert before.stdout == after.stdout
    # given in both places, the one after the command wins, as it is the nearer
    both = project.cli("--state-dir", "/nowhere", "status", "--config", str(elsewhere),
                       "--state-dir", str(state))  # fmt: skip
    assert f"state {state}" in both.stdout


def test_a_command_group_alone_prints_its_own_help(project: Project):
    for group, commands in (("runs", ("tail", "show")), ("rules", ("check", "test", "packs"))):
        done = project.cli(group, expect=2)
        assert done.stdout.startswith(f"usage: pipewarden {group} [-h] COMMAND ...")
        assert all(f"    {name} " in done.stdout for name in commands)
