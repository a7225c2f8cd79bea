"""Notifications through Apprise to real receivers on 127.0.0.1: HTTP (json://), SMTP (mailto://)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from email import message_from_bytes
from email.header import decode_header, make_header

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
        return [str(make_header(decode_header(m["Subject"]))) for m in self.messages]


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
    title = "pipewarden: 3 failures — Opted out on sms"
    assert http_receiver.titles() == [title] and smtp_receiver.subjects() == [title]
    head, error, advice = http_receiver.bodies[0]["message"].splitlines()
    assert "never contact them again" in advice  # what the rule advises, with the label
    assert head.startswith("• 3× Opted out on sms (outreach/send) — e.g. ")
    assert sorted(head.split("e.g. ")[1].split(", ")) == ["a", "b", "c"]
    assert error == "  last error: RuntimeError: sms: recipient opted out"


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
        digest = "pipewarden: 2 failures — Opted out on sms"
        assert sorted(receiver.titles()) == [digest, "pipewarden: sms halted"]
        project.cli("halts", "clear", "sms")
        wait_until(lambda: "pipewarden: sms flows again" in receiver.titles(), "the next one")
        assert receiver.titles()[2] == "pipewarden: sms flows again"
        assert receiver.titles().count(digest) == 1  # nothing was sent twice
    finally:
        receiver.close()

    visible = project.daemon_log() + project.cli("status", "--json").stdout
    visible += json.dumps([[r.target, r.last_error] for r in outbox()])
    assert SECRET not in visible and url not in visible


BURST = """
def send(data):
    raise RuntimeError("Resend: 429 Too Many Requests (rate limit exceeded)")
"""


def burst_config(project: Project, url: str) -> None:
    project.write("sender.py", BURST)
    project.configure(
        """
        outreach:
          stages:
            - name: send
              python: "sender:send"
              channel: "{data.contact_method}"
              concurrency: 8
              retry: {max_attempts: 1}
        """,
        extra=f"notify:\n  digest_wait: 10m\n  targets: [{{url: '{url}'}}]\ndrain_grace: 5s\n",
    )


def enqueue_file(project: Project, items: list[tuple[str, str]]) -> None:
    lines = "".join(
        json.dumps({"key": key, "data": {"contact_method": channel}}) + "\n"
        for key, channel in items
    )
    project.write("items.jsonl", lines)
    project.cli("enqueue", "outreach", "--file", "items.jsonl")


def test_a_burst_of_1282_identical_failures_is_one_short_message(
    project: Project, http_receiver: HttpReceiver
):
    burst_config(project, http_receiver.url)
    # A channel the shipped reputation guard does not watch: every item fails.
    enqueue_file(project, [(f"n-{n:04d}", "newsletter") for n in range(1282)])
    assert project.start_daemon("--until-idle").wait(120) == 0

    wait_until(lambda: http_receiver.bodies, "the digest")
    (message,) = http_receiver.bodies
    assert message["title"] == "pipewarden: 1,282 failures — Rate limited on newsletter"
    head, error = message["message"].splitlines()
    assert head.startswith("• 1,282× Rate limited on newsletter (outreach/send) — e.g. n-")
    assert head.endswith(" (+1,279 more)") and head.count("n-") == 3
    assert (
        error == "  last error: RuntimeError: Resend: 429 Too Many Requests (rate limit exceeded)"
    )


def test_a_digest_of_many_groups_is_capped_and_says_how_many_more(
    project: Project, http_receiver: HttpReceiver
):
    burst_config(project, http_receiver.url)
    items = [(f"k-{n:02d}", f"list-{n:02d}") for n in range(45)]
    items += [(f"k-00-{n}", "list-00") for n in range(3)]  # the largest group: listed first
    enqueue_file(project, items)
    assert project.start_daemon("--until-idle").wait(60) == 0

    wait_until(lambda: http_receiver.bodies, "the digest")
    (message,) = http_receiver.bodies
    assert message["title"] == "pipewarden: 48 failures — Rate limited on list-00 and 44 more"
    lines = message["message"].splitlines()
    assert len(lines) <= 40
    assert lines[0].startswith("• 4× Rate limited on list-00 (outreach/send) — e.g. ")
    assert lines[0].endswith(" (+1 more)")
    assert lines[-1] == "… and 26 more groups (26 failures)"
    assert len([line for line in lines if line.startswith("• ")]) == 19


def test_a_halt_a_person_clears_is_followed_by_its_all_clear(
    project: Project, http_receiver: HttpReceiver
):
    project.write("sender.py", FAILING)
    project.write(
        "halts.yaml", "halts:\n  - {when: same_label, channels: [sms], count: 2, within: 1h}\n"
    )
    project.configure(
        """
        outreach:
          stages:
            - {name: send, python: "sender:send", channel: "{data.contact_method}"}
        """,
        # told of halts only: the all-clear belongs with them all the same
        extra=f"notify:\n  targets: [{{url: '{http_receiver.url}', tags: [halt]}}]\n",
        rules=("halts.yaml",),
    )
    enqueue(project, "a", "b", "c")
    project.start_daemon()
    wait_until(lambda: "pipewarden: sms halted" in http_receiver.titles(), "the halt")

    project.cli("halts", "clear", "sms")
    wait_until(lambda: "pipewarden: sms flows again" in http_receiver.titles(), "the all-clear")
    titles = http_receiver.titles()
    assert titles[:2] == ["pipewarden: sms halted", "pipewarden: sms flows again"]
    resolved = http_receiver.bodies[1]
    assert resolved["message"].startswith("Cleared by ")
    assert "(api from 127.0.0.1); it was halted for " in resolved["message"]
    assert resolved["message"].endswith("(2× Opted out within 1h). Its queued items run again.")
