"""Shell completion: the scripts `pipewarden completion bash|zsh` print, run by the real
shells, offering the commands and the names the config and the store know."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, Project, wait_until

CONFIG = """
sites:
  stages:
    - {name: find, python: "steps:find", channel: web}
    - {name: capture, python: "steps:find"}
outreach:
  stages:
    - {name: send, python: "steps:find", channel: sms}
"""


def configured(project: Project) -> Project:
    project.write("steps.py", "def find(data):\n    return None\n")
    project.configure(CONFIG)
    return project


def with_a_label(project: Project) -> Project:
    """An item whose last run failed with the label 'Browser launch conflict'."""
    project.cli("enqueue", "sites", "a")
    store = project.store()
    try:
        store.Item.update(state="failed", last_label="Browser launch conflict").execute()
    finally:
        store.close()
    return project


def test_the_names_command_prints_each_kind_a_line_each(project: Project):
    with_a_label(configured(project))
    project.cli("pause", "--channel", "later", "--force")

    def names(kind: str) -> list[str]:
        return project.cli("_complete", kind).stdout.splitlines()

    assert names("pipelines") == ["outreach", "sites"]
    assert names("stages") == ["sites/find", "sites/capture", "outreach/send"]
    assert names("stage-names") == ["capture", "find", "send"]
    assert names("channels") == ["capture", "later", "sms", "web"]
    assert names("labels") == ["Browser launch conflict"]
    assert names("halts") == []


def test_the_names_command_offers_nothing_without_a_config(project: Project):
    done = project.cli("_complete", "channels")
    assert (done.stdout, done.stderr) == ("", "")


def test_the_hidden_names_command_is_not_in_help(project: Project):
    assert "_complete" not in project.cli("--help").stdout
    assert "completion" in project.cli("--help").stdout


def bash_completes(project: Project, script: str, line: str) -> list[str]:
    """What bash offers for `line` (completing its last word), the script sourced."""
    path = project.write("completion.bash", script)
    words = line.split(" ")
    program = (
        f"source {path}\n"
        f"COMP_WORDS=({' '.join(repr(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        f"COMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}\n"
        "_shtab_pipewarden\n"
        "printf '%s\\n' \"${COMPREPLY[@]}\"\n"
    )
    done = subprocess.run(["bash", "-c", program], cwd=project.root, env=project.env(),
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [word for word in done.stdout.splitlines() if word]


def test_bash_completes_commands_options_and_known_names(project: Project):
    with_a_label(configured(project))
    script = project.cli("completion", "bash").stdout
    assert bash_completes(project, script, "pipewarden ha") == ["halts"]
    assert bash_completes(project, script, "pipewarden runs ") == ["tail", "show"]
    assert "--dry-run" in bash_completes(project, script, "pipewarden retry --")
    assert bash_completes(project, script, "pipewarden pause --channel ") == [
        "capture",
        "sms",
        "web",
    ]
    assert bash_completes(project, script, "pipewarden pause --stage sites/") == [
        "sites/find",
        "sites/capture",
    ]
    assert bash_completes(project, script, "pipewarden runs tail --stage c") == ["capture"]
    assert bash_completes(project, script, "pipewarden enqueue o") == ["outreach"]
    # a label with spaces comes escaped, as the shell will read it back
    assert bash_completes(project, script, "pipewarden retry --label Br") == [
        "Browser\\ launch\\ conflict"
    ]


def test_bash_asks_the_config_typed_on_the_line(project: Project, tmp_path: Path):
    configured(project)
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text(
        f"rules: [{REPO}/rules/*.yaml]\n"
        "pipelines:\n  elsewhere:\n    stages:\n      - {name: a, command: [echo]}\n"
    )
    script = project.cli("completion", "bash").stdout
    line = f"pipewarden status --config {other / 'config.yaml'} --pipeline "
    assert bash_completes(project, script, line) == ["elsewhere"]


def test_a_config_whose_port_another_daemon_serves_still_completes_its_names(
    project: Project, tmp_path: Path
):
    """Another pipewarden on the port the config names (its own state dir): the store
    cannot be read, and the config's names are still offered, with no error on the line."""
    configured(project)
    daemon = project.start_daemon()
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text(
        f"rules: [{REPO}/rules/*.yaml]\napi: {{port: {project.api_port}}}\n"
        "pipelines:\n  elsewhere:\n    stages:\n      - {name: a, command: [echo]}\n"
    )
    elsewhere = ("--config", str(other / "config.yaml"))
    wait_until(  # the daemon answers on that port, for its own state dir
        lambda: "another state dir" in project.cli("status", *elsewhere, expect=None).stderr,
        "the other daemon's API",
    )
    asked = project.cli("_complete", "pipelines", *elsewhere)
    assert (asked.stdout, asked.stderr) == ("elsewhere\n", "")
    daemon.terminate()
    daemon.wait(30)


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_script_loads_and_its_names_come_from_the_store(project: Project):
    with_a_label(configured(project))
    script = project.cli("completion", "zsh").stdout
    assert script.startswith("#compdef pipewarden")
    assert '"--channel[e.g. sms]:channel:_pipewarden_channels"' in script
    assert '"--label[e.g. \\"Browser launch conflict\\"]:label:_pipewarden_labels"' in script
    path = project.write("_pipewarden", script)
    # compadd, as completion would call it, shows what it was given
    program = (
        "autoload -U compinit && compinit -u -D\n"
        f"source {path}\n"
        "compadd() { [[ $1 == -a ]] && print -l -- ${(P)2} }\n"
        "words=(pipewarden pause --channel '')\n"
        "_pipewarden_channels; print -- --; _pipewarden_labels\n"
    )
    done = subprocess.run(["zsh", "-f", "-c", program], cwd=project.root, env=project.env(),
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["capture", "sms", "web", "--", "Browser launch conflict"]
