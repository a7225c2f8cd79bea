"""Live edits: a saved rule classifies the next failure; a broken save keeps the old rules."""

from __future__ import annotations

import time

from conftest import HttpReceiver, Project, wait_until

WORKER = """
def work(data):
    raise RuntimeError("zorgon overload on node 7")
"""
RULES = """
pipelines: [demo]
rules:
  - {match: "nothing like it", group: terminal, label: Placeholder}
"""
RULES_WITH_ZORGON = """
pipelines: [demo]
rules:
  - {match: "zorgon overload", group: terminal, label: Zorgon overload, category: cluster}
"""


def setup(project: Project, notify_url: str | None = None) -> None:
    project.write("worker.py", WORKER)
    project.write("rules/live.yaml", RULES)
    project.configure(
        """
        demo:
          stages:
            - {name: work, python: "worker:work", retry: {max_attempts: 1}}
        """,
        extra=f"notify:\n  targets: [{{url: '{notify_url}', tags: [reload_failed]}}]\n"
        if notify_url
        else "",
        rules=("rules/*.yaml",),
    )


def last_label(project: Project, key: str) -> str | None:
    runs = [r for r in project.runs(key) if r.status != "running"]
    return runs[-1].label if runs else None


def reload_version(project: Project) -> str | None:
    store = project.store()
    try:
        meta = store.get_meta("reload")
    finally:
        store.close()
    return meta and (meta["version"], meta["ok"], meta["at"])


def test_a_saved_rule_classifies_the_next_failure_within_a_second(project: Project):
    setup(project)
    project.start_daemon()
    project.cli("enqueue", "demo", "before")
    wait_until(lambda: last_label(project, "before") == "Unknown", "the first failure")
    loaded = reload_version(project)

    saved = time.monotonic()
    project.write("rules/live.yaml", RULES_WITH_ZORGON)
    wait_until(lambda: reload_version(project) != loaded, "the reload", timeout=1.0)
    project.cli("enqueue", "demo", "after")
    wait_until(lambda: last_label(project, "after") == "Zorgon overload", "the new rule")
    assert time.monotonic() - saved < 1.0 + 1.0  # the reload itself within a second, see above
    (run,) = project.runs("after")
    assert run.rule_id.endswith("rules/live.yaml:3") and run.category == "cluster"
    assert run.rules_version == reload_version(project)[0]


def test_a_broken_save_keeps_the_old_rules_and_status_says_why(
    project: Project, http_receiver: HttpReceiver
):
    setup(project, http_receiver.url)
    project.write("rules/live.yaml", RULES_WITH_ZORGON)
    project.start_daemon()
    project.cli("enqueue", "demo", "warm-up")  # once it has run, the daemon is watching
    wait_until(lambda: last_label(project, "warm-up") == "Zorgon overload", "the first run")
    good = reload_version(project)

    project.write("rules/live.yaml", RULES_WITH_ZORGON.replace("zorgon overload", "zorgon (over"))
    wait_until(lambda: reload_version(project)[1] is False, "the failed reload")
    project.cli("enqueue", "demo", "still-classified")
    wait_until(lambda: last_label(project, "still-classified"), "the run")

    assert last_label(project, "still-classified") == "Zorgon overload"
    status = project.cli("status").stdout.splitlines()[1]
    assert status.startswith("rules: reload failed at ")
    assert (
        "rules/live.yaml:3:21: invalid regex 'zorgon (over' — missing ')' at position 7" in status
    )
    assert status.endswith(f"(version {good[0]} still in force)")
    assert "reload failed (changed: live.yaml)" in project.daemon_log()
    wait_until(lambda: http_receiver.titles(), "the notification")
    assert http_receiver.titles() == ["pipewarden: rules reload failed"]
    assert "rules/live.yaml:3:21: invalid regex" in http_receiver.bodies[0]["message"]


def test_pipewarden_reload_reports_the_result(project: Project):
    setup(project)
    project.start_daemon()
    project.write("rules/live.yaml", RULES_WITH_ZORGON)
    done = project.cli("reload")
    assert done.stdout.startswith("reloaded: rules version ")
    project.write("rules/live.yaml", "rules:\n  - {match: x, group: retry, label: X}\n")
    failed = project.cli("reload", expect=1)
    assert "reload failed: rules/live.yaml:2:23: group must be one of" in failed.stderr
    assert "stay in force" in failed.stderr
    project.write("config.yaml", project.config_path.read_text() + "bogus: 1\n")
    refused = project.cli("reload", expect=2)
    assert "config.yaml:8:1: unknown key 'bogus' in the config" in refused.stderr


def test_live_settings_change_and_the_state_dir_needs_a_restart(project: Project):
    setup(project)
    project.start_daemon()
    project.cli("enqueue", "demo", "warm-up")  # once it has run, the daemon is watching
    wait_until(lambda: last_label(project, "warm-up"), "the first run")
    started = reload_version(project)
    text = project.config_path.read_text()
    project.write(
        "config.yaml",
        "state_dir: elsewhere\n" + text.replace("max_attempts: 1", "max_attempts: 2"),
    )
    wait_until(lambda: reload_version(project) != started, "the reload")

    running_store = ("--state-dir", str(project.state_dir))  # the daemon's, until it restarts
    project.cli("enqueue", "demo", "twice", *running_store)
    wait_until(lambda: project.item("demo", "twice").state == "retrying", "a retry (attempts: 2)")
    status = project.cli("status", *running_store).stdout
    assert f"needs restart: state_dir (still {project.state_dir})" in status
    assert not (project.root / "elsewhere").exists()
