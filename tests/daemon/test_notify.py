"""Notifications through Apprise to real receivers on 127.0.0.1: HTTP (json://), SMTP (mailto://)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from email import message_from_bytes

import pytest
from aiosmtpd.controller import Controller
from conftest import HttpReceiver, Project, free_port, wait_until

SECRET = "s3cr3t-token-42"


class SmtpReceiver:
    def __init__(self) -> None:
        self.messages: list = []
        receiver = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                receiver.messages.append(message_from_bytes(envelope.content))
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    @property
    def url(self) -> str:
        return f"mailto://127.0.0.1:{self.port}?from=pipewarden@example.com&to=ops@example.com"

    def subjects(self) -> list[str]:
        return [str(message["Subject"]) for message in self.messages]


@pytest.fixture
def smtp_receiver() -> Iterator[SmtpReceiver]:
    receiver = SmtpReceiver()
    yield receiver
    receiver.controller.stop()


FAILING = """
def send(data):
    raise RuntimeError(f"{data['contact_method']}: recipient opted out")
"""


def configure(project: Project, targets: list[str], halt_after: int | None = None) -> None:
    project.write("sender.py", FAILING)
    target_lines = "".join(f"    - url: '{url}'\n" for url in targets)
    project.configure(
        """
        outreach:
          stages:
            - name: send
              python: "sender:send"
              channel: "{data.contact_method}"
              concurrency: 1
        """,
        extra=f"notify:\n  digest_wait: 300ms\n  retry_backoff: 200ms\n  targets:\n{target_lines}"
        "drain_grace: 5s\n",
        rules=("halts.yaml",) if halt_after else (),
    )
    if halt_after:
        project.write(
            "halts.yaml",
            f"halts:\n  - {{when: same_label, channels: [sms], count: {halt_after}, within: 1h}}\n",
        )


def enqueue(project: Project, *keys: str) -> None:
    for key in keys:
        project.cli("enqueue", "outreach", key, "--data", json.dumps({"contact_method": "sms"}))


def test_notify_test_reaches_an_http_and_an_smtp_receiver(
    project: Project, http_receiver: HttpReceiver, smtp_receiver: SmtpReceiver
):
    dead = f"json://127.0.0.1:{free_port()}/nobody-listens"
    configure(project, [http_receiver.url, smtp_receiver.url, dead])
    done = project.cli("notify", "test", expect=1)

    lines = done.stdout.splitlines()
    assert [line.split()[1] for line in lines] == ["ok", "ok", "FAILED:"]
    assert http_receiver.titles() == ["pipewarden test"]
    assert smtp_receiver.subjects() == ["pipewarden test"]
    assert "nobody-listens" not in done.stdout  # targets are named by id, never by URL


def test_terminal_failures_arrive_as_one_digest_by_json_and_by_mail(
    project: Project, http_receiver: HttpReceiver, smtp_receiver: SmtpReceiver
):
    configure(project, [http_receiver.url, smtp_receiver.url])
    enqueue(project, "a", "b", "c")
    project.start_daemon("--until-idle")

    wait_until(lambda: http_receiver.titles() and smtp_receiver.subjects(), "both deliveries")
    assert http_receiver.titles() == ["pipewarden: 3 failures"]
    assert smtp_receiver.subjects() == ["pipewarden: 3 failures"]
    assert http_receiver.bodies[0]["message"].count("outreach/send failed: Opted out") == 3


def test_a_notification_waits_for_a_receiver_that_is_down_and_arrives_exactly_once(
    project: Project,
):
    port = free_port()
    url = f"json://pipewarden:{SECRET}@127.0.0.1:{port}/hook"
    configure(project, [url], halt_after=2)
    enqueue(project, "a", "b", "c")
    project.start_daemon()

    def outbox():
        store = project.store()
        try:
            return list(store.Outbox.select().order_by(store.Outbox.id))
        finally:
            store.close()

    wait_until(lambda: any(r.attempts >= 2 for r in outbox()), "failed delivery attempts")
    pending = [row for row in outbox() if row.sent_at is None]
    assert pending and all(row.last_error for row in pending)
    receiver = HttpReceiver(port)
    try:
        wait_until(lambda: all(row.sent_at for row in outbox()), "delivery once it is back")
        assert sorted(receiver.titles()) == ["pipewarden: 2 failures", "pipewarden: sms halted"]
        project.cli("halts", "clear", "sms")
        wait_until(lambda: "pipewarden: sms flows again" in receiver.titles(), "the next one")
        assert receiver.titles()[2] == "pipewarden: sms flows again"
        assert receiver.titles().count("pipewarden: 2 failures") == 1  # nothing was sent twice
    finally:
        receiver.close()

    visible = project.daemon_log() + project.cli("status", "--json").stdout
    visible += json.dumps([[r.target, r.last_error] for r in outbox()])
    assert SECRET not in visible and url not in visible
