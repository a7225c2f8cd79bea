"""/metrics as Prometheus scrapes it: a real daemon over HTTP, parsed by the client library."""

from __future__ import annotations

from typing import Any

import httpx
from conftest import Project, free_port, wait_until
from prometheus_client.parser import text_string_to_metric_families

WORKER = """
import pathlib
import time

def work(data, ctx):
    deadline = time.time() + 30
    while data.get("hold") and not pathlib.Path("release").exists() and time.time() < deadline:
        time.sleep(0.02)
    if data.get("fail"):
        raise RuntimeError("HTTP 404 Not Found. Cannot capture")
    return {"done": True}
"""


class Scraper:
    def __init__(self, project: Project):
        self.url = f"http://127.0.0.1:{project.api_port}/metrics"
        token = (project.state_dir / "api.token").read_text().strip()
        self.headers = {"Authorization": f"Bearer {token}"}

    def text(self) -> str:
        response = httpx.get(self.url, headers=self.headers, timeout=5)
        assert response.status_code == 200
        return response.text

    def samples(self) -> list[Any]:
        return [s for f in text_string_to_metric_families(self.text()) for s in f.samples]

    def value(self, name: str, **labels: str) -> float | None:
        for sample in self.samples():
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
        return None


def start(project: Project, extra: str = "", rules: tuple[str, ...] = ()) -> Scraper:
    project.write("worker.py", WORKER)
    project.configure(
        "sites:\n  stages:\n    - {name: work, python: 'worker:work', retry: {max_attempts: 1}}\n",
        extra=extra,
        rules=rules,
    )
    project.start_daemon()
    wait_until(lambda: (project.state_dir / "api.token").exists(), "the API token")
    scraper = Scraper(project)
    wait_until(lambda: _answers(scraper), "the API")
    return scraper


def _answers(scraper: Scraper) -> bool:
    try:
        return httpx.get(scraper.url, headers=scraper.headers, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_no_created_series_and_a_skipped_run_stays_out_of_the_durations(project: Project):
    scraper = start(project)
    project.cli("enqueue", "sites", "k")
    wait_until(lambda: project.item("sites", "k").state == "done", "the first run")
    # k again with the data it first had (none): the same input, so its stage is skipped.
    project.write("items.jsonl", '{"key": "k", "data": {}}\n{"key": "new"}\n')
    again = project.cli("enqueue", "sites", "--file", "items.jsonl")
    assert "1 known item(s) started again" in again.stdout
    wait_until(lambda: project.item("sites", "new").state == "done", "the new item's run")

    def counted() -> bool:
        return scraper.value("pipewarden_runs_total", status="skipped") == 1

    wait_until(counted, "the skipped run in the metrics")
    text = scraper.text()
    assert "_created" not in text  # each would be a series of its own in Prometheus
    assert scraper.value("pipewarden_runs_total", status="ok") == 2
    assert scraper.value("pipewarden_run_duration_seconds_count", stage="work") == 2
    assert scraper.value("pipewarden_build_info", version="0.1.0") == 1
    assert scraper.value("process_start_time_seconds") is not None
    names = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(names) == len(set(names))


def test_the_oldest_ready_items_age_and_the_attempts_in_flight(project: Project):
    scraper = start(project)
    assert scraper.value("pipewarden_oldest_ready_item_age_seconds", stage="work") == 0
    assert scraper.value("pipewarden_attempts_in_flight") == 0
    project.cli("enqueue", "sites", "busy", "--data", '{"hold": true}')
    wait_until(lambda: scraper.value("pipewarden_attempts_in_flight") == 1, "one attempt running")
    project.cli("enqueue", "sites", "next")  # waits: the stage's one slot is taken

    def waited() -> bool:
        return scraper.value("pipewarden_oldest_ready_item_age_seconds", stage="work") >= 0.5

    wait_until(waited, "the waiting item to age")
    assert project.item("sites", "next").state == "queued"
    project.write("release", "")
    wait_until(lambda: project.item("sites", "next").state == "done", "both items done")
    assert scraper.value("pipewarden_oldest_ready_item_age_seconds", stage="work") == 0
    wait_until(lambda: scraper.value("pipewarden_attempts_in_flight") == 0, "nothing running")


def test_undelivered_notifications_are_the_outbox_backlog(project: Project):
    nobody = f"json://127.0.0.1:{free_port()}/hook"  # nothing listens: every delivery fails
    scraper = start(
        project, extra=f"notify:\n  targets: [{{url: '{nobody}'}}]\n  digest_wait: 0s\n"
    )
    assert scraper.value("pipewarden_outbox_unsent") == 0
    project.cli("enqueue", "sites", "bad", "--data", '{"fail": true}')
    wait_until(lambda: scraper.value("pipewarden_outbox_unsent") == 1, "the failure's notice")

    def tried() -> bool:
        return (scraper.value("pipewarden_notifications_total", result="failed") or 0) >= 1

    wait_until(tried, "a failed delivery")
    assert scraper.value("pipewarden_outbox_unsent") == 1  # kept, to be retried


def test_the_last_reload_is_a_success_flag_and_the_time_of_the_last_success(project: Project):
    rules = project.write("mine.yaml", "rules: []\n")
    scraper = start(project, rules=(str(rules),))
    assert scraper.value("pipewarden_config_last_reload_successful") == 1
    started = scraper.value("pipewarden_config_last_reload_success_timestamp_seconds")
    assert started is not None and started > 0

    rules.write_text("rules: [unclosed\n")
    project.cli("reload", expect=1)
    assert scraper.value("pipewarden_config_last_reload_successful") == 0
    assert scraper.value("pipewarden_config_last_reload_success_timestamp_seconds") == started

    rules.write_text("rules: []\n")
    project.cli("reload")
    assert scraper.value("pipewarden_config_last_reload_successful") == 1
    assert scraper.value("pipewarden_config_last_reload_success_timestamp_seconds") > started
