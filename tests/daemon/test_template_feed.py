"""Unmatched failures mined into templates by the running daemon, kept across restarts."""

from __future__ import annotations

import signal

from conftest import Project, wait_until

WORKER = """
def work(data, ctx):
    if data.get("n") is not None:
        raise RuntimeError(
            f"Widget {data['n']} refused by https://shop.example.com/w/{data['n']} after "
            f"{data['n'] * 7}ms\\nCall log:\\n  - attempt {data['n']}"
        )
    raise RuntimeError("HTTP 404 Not Found. Cannot capture")  # a shipped rule knows this one
"""


def start(project: Project) -> None:
    project.write("worker.py", WORKER)
    project.configure(
        "sites:\n  stages:\n    - {name: work, python: 'worker:work', retry: {max_attempts: 1}}\n"
    )
    project.start_daemon()


def enqueue(project: Project, keys: range) -> None:
    lines = "".join(f'{{"key": "k{n}", "data": {{"n": {n}}}}}\n' for n in keys)
    project.write("items.jsonl", lines + '{"key": "known"}\n')
    project.cli("enqueue", "sites", "--file", "items.jsonl")


def templates(project: Project) -> list[tuple]:
    store = project.store()
    try:
        rows = store.db.execute_sql("SELECT id, template, count FROM templates").fetchall()
        members = store.db.execute_sql(
            "SELECT template_id, count(*) FROM template_runs GROUP BY template_id"
        ).fetchall()
        return [(*row, dict(members).get(row[0], 0)) for row in rows]
    finally:
        store.close()


def failed(project: Project, count: int) -> bool:
    return sum(r.status == "failed" for r in project.runs()) >= count


def test_unmatched_failures_become_one_template_that_survives_a_restart(project: Project):
    start(project)
    enqueue(project, range(1, 13))
    wait_until(lambda: failed(project, 13), "13 failed runs")
    wait_until(lambda: templates(project) and templates(project)[0][2] == 12, "12 in a template")
    ((template_id, template, count, members),) = templates(project)
    # only the unmatched ones: the 404 a shipped rule labels is not a template
    assert template == "RuntimeError: Widget <*> refused by <*> after <*>"
    assert count == 12 and members == 12
    daemon = project._daemons[-1]
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(20)
    project.start_daemon()
    enqueue(project, range(20, 25))
    wait_until(lambda: failed(project, 18), "5 more failed runs")
    wait_until(lambda: templates(project)[0][2] == 17, "the same template, 17 in it")
    assert templates(project) == [(template_id, template, 17, 17)]
