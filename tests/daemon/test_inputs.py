"""Every input bounded: worker replies, keys and data at the door, what the log and `why` show.

A worker here prints the reply an item carries in its data, so each test names the exact
line a misbehaving worker writes.
"""

from __future__ import annotations

import json
import logging
import re
import sys

import httpx
import pytest
from conftest import Project, wait_until
from pipewarden import logs
from pipewarden.limits import ERROR_TEXT_MAX, INTERNAL_FAILURES_MAX
from pipewarden.outcomes import NO_ERROR_TEXT
from pipewarden.protocol import Verdict, parse_line

REPLY_WORKER = """
import json, sys
data = json.loads(sys.stdin.readline())["data"]
reply = data.get("reply") if isinstance(data, dict) else None
print(reply or '{"ok": true, "data": {"seen": true}}', flush=True)
"""

STAGE = """
s:
  stages:
    - name: a
      command: [python3, reply.py]
      retry: {max_attempts: 2, backoff: 0.1s, jitter: 0}
"""


def prepared(project: Project, stage: str = STAGE) -> None:
    project.write("reply.py", REPLY_WORKER)
    project.configure(stage)


def enqueue_reply(project: Project, key: str, reply: str) -> None:
    project.cli("enqueue", "s", key, "--data", json.dumps({"reply": reply}))


def run_until_idle(project: Project) -> None:
    assert project.start_daemon("--until-idle").wait(30) == 0, project.daemon_log()


def api(project: Project) -> tuple[str, dict[str, str]]:
    base = f"http://127.0.0.1:{project.api_port}"

    def up() -> bool:
        try:
            return httpx.get(f"{base}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, "the API")
    token = (project.state_dir / "api.token").read_text().strip()
    return base, {"Authorization": f"Bearer {token}"}


# -- 6, 12: NaN and Infinity in a reply ----------------------------------------------------
@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        ('{"ok": false, "error": "x", "retry_after": NaN}', "'retry_after' is NaN"),
        ('{"defer": NaN}', "'defer' is NaN"),
        ('{"defer": 1e400}', "'defer' is Infinity"),
        ('{"ok": false, "error": "x", "retry_after": Infinity}', "'retry_after' is Infinity"),
    ],
)
def test_nan_or_infinity_in_a_reply_is_a_protocol_error_retried_like_any_failure(
    project: Project, reply: str, problem: str
):
    prepared(project)
    enqueue_reply(project, "k", reply)

    run_until_idle(project)  # before: ready_at NULL or inf, and --until-idle never exited

    runs = project.runs("k")
    assert [r.status for r in runs] == ["failed", "failed"]
    assert runs[0].error.startswith(f"invalid worker reply: {problem}, not a number JSON knows")
    assert runs[0].error_type == "ProtocolError"
    item = project.item("s", "k")
    assert item.state == "failed" and item.ready_at is None
    why = project.cli("why", "k").stdout
    assert "next: nothing: failed" in why and "invalid worker reply" in why


def test_a_reply_keeps_the_workers_error_text_beside_the_protocol_problem(project: Project):
    prepared(project)
    enqueue_reply(project, "k", '{"ok": false, "error": "HTTP 503", "retry_after": -5}')
    run_until_idle(project)
    assert project.runs("k")[0].error == (
        "invalid worker reply: 'retry_after' must be from 0 to 366 days, not -5"
        " — the worker said: HTTP 503"
    )


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"defer": -1}', "'defer' must be from 0 to 366 days, not -1"),
        ('{"defer": "400d"}', "'defer' must be from 0 to 366 days, not '400d'"),
        ('{"defer": {"h": 1}}', "'defer' must be seconds or a duration such as '90s' or '2h'"),
        ('{"ok": false, "retry_after": 1e300}', "'retry_after' must be from 0 to 366 days"),
        ('{"defer_until": "someday"}', "'defer_until' must be an ISO 8601 time"),
        ('{"defer_until": "9999-12-31T00:00:00+00:00"}', "is more than 366 days away"),
        ('{"defer_until": "1970-01-02T00:00:00+00:00"}', "is more than 366 days away"),
        ('{"ok": true, "cost": NaN}', "'cost' is NaN"),
        ('{"ok": true, "cost": -3}', "'cost' must be a number from 0 up, not -3"),
        ('{"ok": true, "cost": 1' + "0" * 400 + "}", "'cost' must be a number from 0 up"),
        ('{"ok": true, "rows_out": 1' + "0" * 30 + "}", "'rows_out' must be a count"),
        ('{"ok": true, "data": {"a": [1, Infinity]}}', "'data' holds NaN or Infinity"),
        ('{"ok": true, "data": [1, 2]}', "'data' must be a JSON object, not a list"),
        ('{"ok": true, "data": {"a": "\\ud800"}}', "'data' holds text that is not valid UTF-8"),
        ('{"ok": true, "data": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deep"),
    ],
)
def test_a_reply_out_of_bounds_is_refused_with_the_reason(line: str, problem: str):
    report = parse_line(line.encode())
    assert report.verdict is Verdict.ERROR and report.error_type == "ProtocolError"
    assert report.error.startswith("invalid worker reply: ")
    assert problem in report.error


def test_reply_texts_are_kept_valid_and_bounded():
    spaces = parse_line(b'{"ok": false, "error": "   \\n "}')
    assert spaces.verdict is Verdict.ERROR and spaces.error is None
    surrogate = parse_line(b'{"ok": false, "error": "bad \\udcff name", "type": "OSError"}')
    assert surrogate.error == "bad ? name"
    said = "e" * 100_000 + " the end"
    refused = parse_line(json.dumps({"ok": False, "error": said, "retry_after": "soon"}).encode())
    assert refused.error.startswith("invalid worker reply: 'retry_after' must be seconds")
    assert refused.error.endswith(" the end") and len(refused.error) < ERROR_TEXT_MAX
    progress = parse_line(b'{"progress": NaN, "message": "\\ud800"}')
    assert (progress.fraction, progress.message) == (None, "?")
    assert parse_line(b'{"progress": 7}').fraction == 1.0
    assert parse_line(b'{"defer_until": "2027-01-01T00:00:00+00:00"}', now=1.8e9).verdict == (
        Verdict.DEFER
    )


def test_bad_values_an_older_version_stored_never_crash_why_item_or_the_api(project: Project):
    prepared(project)
    for key in ("inf", "null", "dead"):
        project.cli("enqueue", "s", key)
    store = project.store()
    store.enqueue("s", "a", [("old\nHALT channel sms", {})], 1.0)  # before keys were checked
    with store.transaction():
        conn = store.db.connection()
        conn.execute("UPDATE items SET state = 'retrying', ready_at = 1e999 WHERE key = 'inf'")
        conn.execute("UPDATE items SET state = 'deferred', ready_at = NULL WHERE key = 'null'")
        conn.execute(
            "INSERT INTO runs (id, pipeline, stage, item_id, item_key, attempt, status,"
            " started_at, finished_at, duration_s, cost, progress, error) SELECT 'run1', 's', 'a',"
            " id, key, 1, 'failed', 1e300, -1e300, 1e999, 1e999, -1e999, 'x' FROM items"
            " WHERE key = 'dead'"
        )
    store.close()

    why = project.cli("why", "inf").stdout
    assert "its ready time (inf) is not a valid time" in why
    assert "its ready time (None) is not a valid time" in project.cli("why", "null").stdout
    assert "(not a time: 1e+300)" in project.cli("why", "dead").stdout
    assert "never by itself" in project.cli("item", "s", "inf").stdout
    assert "(not a duration: inf)" in project.cli("item", "s", "dead").stdout
    assert "s/old\\nHALT channel sms: queued" in project.cli("why", "old\nHALT channel sms").stdout
    assert "(not a time: 1e+300)" in project.cli("runs", "show", "run1").stdout

    project.start_daemon()
    base, auth = api(project)
    for path in ("items/s/inf", "items/s/null", "items/s/dead", "runs", "runs/run1", "status"):
        answer = httpx.get(f"{base}/api/{path}", headers=auth)
        assert answer.status_code == 200, (path, answer.text)
    assert httpx.get(f"{base}/api/items/s/inf", headers=auth).json()["ready_at"] is None
    assert httpx.get(f"{base}/api/runs/run1", headers=auth).json()["cost"] is None


# -- 7: the API checks what it enqueues, and no item loops ---------------------------------
def test_the_api_refuses_every_bad_enqueue_body_with_400_and_the_reason(project: Project):
    prepared(project)
    project.start_daemon()
    base, auth = api(project)
    cases = [
        ({"pipeline": "s", "items": [{"key": "k", "data": [1, 2]}]},
         "'items[0].data' must be an object, not a list"),
        ({"pipeline": "s", "items": [{"data": {}}]}, "'items[0].key' is missing"),
        ({"pipeline": "s", "items": [{"key": 7}]}, "'items[0].key' must be text, not a whole"),
        ({"pipeline": "s", "items": ["k"]}, "'items[0]' must be an object with a key, not text"),
        ({"pipeline": "s", "items": "k"}, "'items' must be a list, not text"),
        ({"pipeline": "s"}, "'items' is missing"),
        ({"items": []}, "'pipeline' is missing"),
        ({"pipeline": ["s"], "items": []}, "'pipeline' must be text, not a list"),
        ({"pipeline": "nope", "items": []}, "no pipeline named 'nope'"),
        ({"pipeline": "s", "items": [], "force": "yes"}, "'force' must be true or false"),
        ({"pipeline": "s", "items": [{"key": ""}]}, "key '' must not be empty or only spaces"),
        ({"pipeline": "s", "items": [{"key": " \t"}]}, "must not be empty or only spaces"),
        ({"pipeline": "s", "items": [{"key": "a\x00b"}]},
         "key 'a\\x00b' contains the control character \\x00 at position 2"),
        ({"pipeline": "s", "items": [{"key": "k" * 1024 * 1024}]},
         "is 1,048,576 bytes long; a key may have at most 1,024 bytes"),
        (b'{"pipeline": "s", "items": [{"key": "k", "data": {"x": NaN}}]}',
         "data of 'k' holds NaN or Infinity"),
        ({"pipeline": "s", "items": [{"key": "ok"}, {"key": "k", "data": {"x": "y" * (9 << 20)}}]},
         "items[1]: data of 'k' is 9,437,"),
    ]  # fmt: skip
    for body, reason in cases:
        sent = {"content": body} if isinstance(body, bytes) else {"json": body}
        answer = httpx.post(f"{base}/api/enqueue", headers=auth, timeout=30, **sent)
        assert answer.status_code == 400, (body if len(str(body)) < 200 else reason, answer.text)
        assert reason in answer.json()["error"]
    for raw in (b"[1]", b"{", b"[" * 100_000):
        answer = httpx.post(f"{base}/api/enqueue", headers=auth, content=raw)
        assert answer.status_code == 400
        assert answer.json() == {"error": "the request body must be a JSON object"}
    assert project.runs() == [] and project.item("s", "ok") is None  # a bad batch adds nothing


def test_an_item_the_daemon_cannot_record_fails_after_three_internal_errors(project: Project):
    prepared(project)
    store = project.store()  # data that is no object: only an older version let it in
    store.enqueue("s", "a", [("listed", [1, 2])], 1.0)
    store.close()
    project.cli("enqueue", "s", "fine")

    run_until_idle(project)  # before: 4,315 `interrupted` runs in 10 s, for ever

    runs = project.runs("listed")
    assert len(runs) == INTERNAL_FAILURES_MAX
    assert {r.status for r in runs} == {"failed"} and {r.label for r in runs} == {"Internal error"}
    assert runs[-1].error.startswith("internal error while recording the run: TypeError: ")
    item = project.item("s", "listed")
    assert (item.state, item.last_label) == ("failed", "Internal error")
    assert item.attempt == 1  # internal errors spend no attempt of the worker's
    assert "Internal error" in project.cli("status").stdout
    assert project.item("s", "fine").state == "done"


# -- 11: log injection -----------------------------------------------------------------------
def test_keys_and_error_texts_cannot_forge_or_colour_a_log_line(project: Project):
    project.write("reply.py", REPLY_WORKER)
    project.configure(STAGE, extra="drain_grace: 5s\nlog_runs: info")  # ok runs' lines too
    store = project.store()  # a key from before keys were checked
    store.enqueue("s", "a", [("evil\nHALT channel sms", {})], 1.0)
    store.close()
    reply = {"ok": False, "error": "boom \x1b[31mred\x1b[0m\x00\nHALT channel sms"}
    enqueue_reply(project, "loud", json.dumps(reply))

    run_until_idle(project)

    lines = project.daemon_log().splitlines()
    assert not [line for line in lines if line.startswith("HALT")]
    assert "\x1b" not in project.daemon_log() and "\x00" not in project.daemon_log()
    assert any("s/a evil\\nHALT channel sms#1" in line for line in lines)
    assert any("boom \\x1b[31mred\\x1b[0m\\x00 -> " in line for line in lines)
    why = project.cli("why", "loud").stdout
    assert "\x1b" not in why and "boom \\x1b[31mred" in why


def test_a_record_is_one_journal_line_and_a_traceback_keeps_its_lines_indented():
    formatter = logs._JournalFormatter("%(message)s")
    record = logging.LogRecord("t", logging.WARNING, "f", 1, "key %s", ("a\nHALT x",), None)
    assert formatter.format(record) == "<4>key a\\nHALT x"
    try:
        raise ValueError("bad\nHALT y \x1b[2J")
    except ValueError:
        failed = logging.LogRecord("t", logging.ERROR, "f", 1, "failed", (), sys.exc_info())
    lines = formatter.format(failed).splitlines()
    assert lines[0] == "<3>failed" and lines[1] == "<3>  Traceback (most recent call last):"
    assert all(line.startswith("<3>  ") for line in lines[1:])
    assert lines[-2:] == ["<3>  ValueError: bad", "<3>  HALT y \\x1b[2J"]


# -- 13: keys and data at the door -------------------------------------------------------------
def test_the_cli_refuses_bad_keys_with_the_reason_and_exit_2(project: Project):
    prepared(project)
    cases = [
        ("", "key '' must not be empty or only spaces"),
        (" ", "key ' ' must not be empty or only spaces"),
        ("a\x1b[31m", "key 'a\\x1b[31m' contains the control character \\x1b at position 2"),
        ("evil\nHALT", "key 'evil\\nHALT' contains the control character \\n at position 5"),
        ("k" * 2000, "is 2,000 bytes long; a key may have at most 1,024 bytes (UTF-8)"),
    ]
    for key, reason in cases:
        done = project.cli("enqueue", "s", key, expect=2)
        assert reason in done.stderr and done.stderr.count("\n") == 1, done.stderr
    project.cli("enqueue", "s", "é" * 512)  # 1,024 bytes of UTF-8: the most a key may have
    assert project.item("s", "é" * 512) is not None
    assert "'\\udcff' is not valid UTF-8" in project.cli("why", "\udcff", expect=2).stderr
    assert "is not valid UTF-8" in project.cli("item", "s", "\udcff", expect=2).stderr


def test_an_items_file_is_checked_line_by_line(project: Project):
    prepared(project)
    lines = [
        ('{"key": "ok"}\n{"key": "  "}\n', "items.jsonl:2:1: 'key' must not be empty"),
        ('{"key": "a\\u0000b"}\n', "items.jsonl:1:1: 'key' contains the control character \\x00"),
        (json.dumps({"key": "k" * (1 << 20)}) + "\n", "items.jsonl:1:1: 'key' is 1,048,576 bytes"),
        ('{"key": "k", "data": {"n": NaN}}\n', "items.jsonl:1:1: 'data' holds NaN or Infinity"),
    ]
    for text, reason in lines:
        project.write("items.jsonl", text)
        done = project.cli("enqueue", "s", "--file", "items.jsonl", expect=2)
        assert done.stderr.startswith(f"pipewarden: {reason}"), done.stderr
    assert project.item("s", "ok") is None


def test_an_error_text_of_spaces_counts_as_none_and_a_long_one_is_cut(project: Project):
    prepared(project)
    enqueue_reply(project, "spaces", '{"ok": false, "error": "   "}')
    enqueue_reply(project, "long", json.dumps({"ok": False, "error": "x" * 50_000 + "!"}))

    run_until_idle(project)

    assert {r.error for r in project.runs("spaces")} == {NO_ERROR_TEXT}
    long = project.runs("long")[0].error
    note, kept = long.split("\n", 1)
    assert re.fullmatch(r"… \d+ bytes cut", note) and kept.endswith("x!")
    assert int(note.split()[1]) + len(kept.encode()) == 50_001  # what is cut is said exactly
    assert len(long.encode()) <= ERROR_TEXT_MAX  # the note included


def test_on_a_hold_stage_an_internal_error_holds_the_item_for_a_person(project: Project):
    project.write("reply.py", REPLY_WORKER)
    project.configure(STAGE.replace("      retry:", "      on_interrupt: hold\n      retry:"))
    store = project.store()
    store.enqueue("s", "a", [("listed", [1, 2])], 1.0)
    store.close()

    run_until_idle(project)

    (run,) = project.runs("listed")
    assert run.status == "failed" and run.label == "Internal error"
    assert project.item("s", "listed").state == "held"


def test_data_a_worker_returns_that_would_outgrow_the_limit_fails_the_run(project: Project):
    prepared(project)
    big = "d" * (5 << 20)
    project.write("items.jsonl", json.dumps({"key": "big", "data": {"a": big}}) + "\n")
    project.cli("enqueue", "s", "--file", "items.jsonl")
    project.write(
        "reply.py",
        """
        import json, sys
        data = json.loads(sys.stdin.readline())["data"]
        print(json.dumps({"ok": True, "data": {"b": data["a"]}}), flush=True)
        """,
    )

    run_until_idle(project)

    runs = project.runs("big")
    assert len(runs) == INTERNAL_FAILURES_MAX
    assert runs[0].error == (
        "internal error while recording the run: ValueError: the item's data would be"
        " 10,485,778 bytes of JSON; at most 8,388,608 are kept"
    )
    item = project.item("s", "big")
    assert item.state == "failed" and len(item.data) < 6 << 20  # it keeps the data it had
