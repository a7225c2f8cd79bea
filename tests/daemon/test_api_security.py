"""Only the daemon's own page acts through a browser; every input is checked at the API's door.

Another local program is played by a page on another 127.0.0.1 port (the same site to a
browser, so it gets whatever a browser gives 127.0.0.1) and by plain HTTP clients
sending what a browser would send for a foreign page.
"""

from __future__ import annotations

import http.server
import json
import re
import shutil
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import Project, free_port, wait_until
from pipewarden.auth import (
    LOGIN_CODE_TTL_S,
    LOGIN_CODES_KEPT,
    SESSION_TTL_S,
    Gate,
    LoginCodes,
    foreign_site,
    new_session,
    own_origins,
    session_valid,
)
from pipewarden.limits import API_BODY_MAX
from test_page import CHROMIUM, CHROMIUM_ARGS

WORKER = """
def work(data, ctx):
    if data.get("blocked"):
        raise RuntimeError("Cloudflare challenge blocked the form submit")
    return {"sent": True}
"""
HALT_RULES = "halts:\n  - {when: same_label, channels: [form], count: 1, within: 1h}\n"
BROWSER_SCRIPT = """#!/bin/sh
printf '%s\\n' "$0" "$@" > "$(dirname "$0")/browser-argv"
"""


def start(project: Project) -> tuple[str, dict[str, str]]:
    project.write("worker.py", WORKER)
    project.write("halts.yaml", HALT_RULES)
    project.configure(
        """
        outreach:
          stages:
            - {name: send, python: "worker:work", channel: "{data.contact_method}",
               retry: {max_attempts: 1}}
        """,
        rules=("halts.yaml",),
    )
    project.start_daemon()
    base = f"http://127.0.0.1:{project.api_port}"
    wait_until(lambda: _up(base), "the API")
    token = (project.state_dir / "api.token").read_text().strip()
    return base, {"Authorization": f"Bearer {token}"}


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def halt_the_form_channel(project: Project) -> None:
    project.cli(
        "enqueue", "outreach", "blocked",
        "--data", '{"contact_method": "form", "blocked": true}',
    )  # fmt: skip
    wait_until(lambda: active_holds(project), "the form channel to halt")


def page_base(project: Project) -> str:
    return f"http://127.0.0.1:{project.api_port}/"


def active_holds(project: Project) -> list:
    store = project.store()
    try:
        return store.active_holds()
    finally:
        store.close()


def opened(project: Project) -> str:
    """The link `pipewarden open` prints (the tests' $BROWSER opens nothing)."""
    return re.search(r"http://\S+", project.cli("open").stdout)[0]


# -- 5: a page on another local port, in a real Chromium --------------------------------
ATTACK = """<!doctype html><meta charset="utf-8"><title>another local program</title>
<iframe name="sink"></iframe>
<form id="form" method="post" target="sink" enctype="text/plain" action="{api}/api/halts/clear">
<input name='{{"target": "form", "x": "' value='"}}'></form>
<script>
const url = "{api}/api/halts/clear";
const body = JSON.stringify({{ target: "form" }});
window.results = {{}};
async function attempt(name, options) {{
  try {{
    const sent = {{ method: "POST", credentials: "include", body, ...options }};
    const response = await fetch(url, sent);
    window.results[name] = `${{response.type}} ${{response.status}}`;
  }} catch (error) {{
    window.results[name] = `failed: ${{error.message}}`;
  }}
}}
(async () => {{
  await attempt("no-cors", {{ mode: "no-cors", headers: {{ "Content-Type": "text/plain" }} }});
  await attempt("cors", {{ mode: "cors", headers: {{ "Content-Type": "application/json" }} }});
  await attempt("cors, text", {{ mode: "cors", headers: {{ "Content-Type": "text/plain" }} }});
  window.fetched = true;
  document.getElementById("form").submit();  // a form's POST: the oldest way across sites
}})();
</script>"""


class ForeignSite:
    """Another program's web server on 127.0.0.1: serves the attack, keeps what it was sent."""

    def __init__(self, api: str):
        self.received: list[dict[str, str]] = []
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.received.append(dict(self.headers))
                page = ATTACK.format(api=api).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def browser() -> Iterator:
    if not shutil.which(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def test_a_page_on_another_local_port_cannot_clear_a_halt_but_the_page_itself_can(
    project: Project, browser
):
    start(project)
    halt_the_form_channel(project)
    context = browser.new_context()  # one browser: the page and the other program's page
    page = context.new_page()
    page.goto(opened(project))  # signs in with the one-time code
    page.wait_for_selector("#connection:has-text('live')")
    assert "code" not in page.url
    halt = page.locator("#halts li", has_text="halted: form")
    halt.wait_for()

    foreign = ForeignSite(f"http://127.0.0.1:{project.api_port}")
    answered: list[tuple[str, str, int]] = []  # what the daemon answered the other page
    attacker = context.new_page()
    attacker.on("response", lambda r: r.url.startswith(page_base(project)) and
                answered.append((r.request.resource_type, r.request.method, r.status)))  # fmt: skip
    try:
        with attacker.expect_response(lambda r: r.request.resource_type == "document"
                                      and r.url.endswith("/api/halts/clear")):  # fmt: skip
            attacker.goto(foreign.url)
        attacker.wait_for_function("window.fetched === true")
        results = attacker.evaluate("window.results")
    finally:
        foreign.close()

    assert len(active_holds(project)) == 1, results  # before: the no-cors fetch cleared it
    assert results["no-cors"] == "opaque 0"  # the browser hides the answer from the page
    assert results["cors"].startswith("failed") and results["cors, text"].startswith("failed")
    assert sorted(answered) == [("document", "POST", 403), ("fetch", "POST", 403)]  # no-cors
    assert foreign.received  # the page, and the favicon the browser asks for
    for request in foreign.received:  # before: the token, as a cookie
        assert "pipewarden" not in request.get("Cookie", "")

    halt.get_by_role("button", name="Clear").click()  # the page itself still can
    wait_until(lambda: not active_holds(project), "the page's Clear to clear the halt")
    page.locator("#halts li", has_text="none: everything flows").wait_for()


def test_a_used_link_or_the_token_in_a_url_signs_no_browser_in(project: Project, browser):
    base, auth = start(project)
    url = opened(project)
    first = browser.new_context().new_page()
    first.goto(url)
    first.wait_for_selector("#connection:has-text('live')")

    again = browser.new_context().new_page()  # the same link from history, in another browser
    again.goto(url)
    again.wait_for_selector("#connection:has-text('this sign-in link is unknown, used already')")
    token = auth["Authorization"].removeprefix("Bearer ")
    old = browser.new_context().new_page()
    old.goto(f"{base}/?token={token}")  # what `open` printed before
    old.wait_for_selector("#connection:has-text('not signed in: run `pipewarden open`')")
    assert old.context.cookies() == []


def test_the_page_stays_signed_in_across_a_restart_of_the_daemon(project: Project, browser):
    start(project)
    page = browser.new_page()
    page.goto(opened(project))
    page.wait_for_selector("#connection:has-text('live')")

    daemon = project._daemons[-1]
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(10) == 0  # before: held up ~20 s by the open event stream
    page.wait_for_selector("#connection:has-text('reconnecting')")
    project.start_daemon()
    page.wait_for_selector("#connection:has-text('live')")  # the same session, no new link
    halt_the_form_channel(project)
    page.locator("#halts li", has_text="halted: form").wait_for()


# -- 5: the same, as plain requests --------------------------------------------------------
def test_a_cookie_is_never_a_credential_and_other_sites_are_refused(project: Project):
    base, auth = start(project)
    token = auth["Authorization"].removeprefix("Bearer ")
    other = free_port()
    pause = b'{"scope": "channel", "target": "sms"}'
    cookie = {"Cookie": f"pipewarden_token={token}", "Content-Type": "text/plain"}
    foreign = ["http://evil.example", "null", f"http://127.0.0.1:{other}",
               f"http://localhost:{other}", "http://127.0.0.1",
               f"https://127.0.0.1:{project.api_port}"]  # fmt: skip
    for origin in foreign:
        answer = httpx.post(
            f"{base}/api/pause", content=pause, headers={**cookie, "Origin": origin}
        )
        assert answer.status_code == 403, (origin, answer.text)  # before: 200
        assert answer.json()["error"] == (
            f"a request from another site (Origin {origin}): only the daemon's own page may"
            " call the API from a browser"
        )
    for site in ("same-site", "cross-site"):  # even with the real token in the header
        answer = httpx.post(f"{base}/api/pause", content=pause,
                            headers={**auth, "Sec-Fetch-Site": site})  # fmt: skip
        assert answer.status_code == 403, site
        assert f"(Sec-Fetch-Site {site})" in answer.json()["error"]
    preflight = httpx.options(
        f"{base}/api/pause",
        headers={"Origin": f"http://127.0.0.1:{other}", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 403 and "access-control-allow-origin" not in preflight.headers
    answer = httpx.post(f"{base}/api/pause", content=pause, headers=cookie)
    assert answer.status_code == 401  # no Origin: still a cookie is nothing
    assert active_holds(project) == []

    for own in (f"http://127.0.0.1:{project.api_port}", f"http://localhost:{project.api_port}"):
        headers = {**auth, "Origin": own, "Sec-Fetch-Site": "same-origin"}
        answer = httpx.post(f"{base}/api/pause", content=pause, headers=headers)
        assert answer.status_code == 200, own
    answer = httpx.get(f"{base}/api/halts", headers={**auth, "Sec-Fetch-Site": "none"})
    assert [hold["target"] for hold in answer.json()] == ["sms"]


def test_open_signs_in_with_a_one_time_code_never_the_token(
    project: Project, monkeypatch: pytest.MonkeyPatch
):
    base, auth = start(project)
    token = auth["Authorization"].removeprefix("Bearer ")
    browser = project.write("browser.sh", BROWSER_SCRIPT)
    browser.chmod(0o755)
    monkeypatch.setenv("BROWSER", str(browser))
    printed = project.cli("open").stdout
    argv = (project.root / "browser-argv").read_text()
    assert token not in printed and token not in argv  # before: ?token=TOKEN in both
    url = re.search(r"http://\S+", printed)[0]
    assert argv.splitlines()[1:] == [url]
    assert printed.splitlines()[1] == "(the link signs one browser in, once, within 60 s)"
    code = re.fullmatch(rf"{base}/#code=([\w-]+)", url)[1]

    signed_in = httpx.post(f"{base}/api/session", json={"code": code})
    assert signed_in.status_code == 200
    session = {"Authorization": f"Bearer {signed_in.json()['session']}"}
    assert httpx.get(f"{base}/api/status", headers=session).status_code == 200
    answer = httpx.post(
        f"{base}/api/pause", headers=session, json={"scope": "channel", "target": "sms"}
    )
    assert answer.status_code == 200

    reused = httpx.post(f"{base}/api/session", json={"code": code})
    assert reused.status_code == 401
    assert reused.json()["error"] == (
        "this sign-in link is unknown, used already or older than 60 s: run `pipewarden open` again"
    )
    assert httpx.post(f"{base}/api/login-codes", headers=session).status_code == 401
    assert httpx.post(f"{base}/api/login-codes").status_code == 401
    page = httpx.get(f"{base}/?token={token}", headers={"Cookie": f"pipewarden_token={token}"})
    assert page.status_code == 200 and token not in page.text
    assert page.headers["set-cookie"].startswith('pipewarden_token=""; ')  # the old one, deleted
    assert page.headers["content-security-policy"] == "frame-ancestors 'none'"


def test_open_without_the_api_says_so(project: Project):
    project.write("worker.py", WORKER)
    project.configure("s:\n  stages:\n    - {name: a, python: 'worker:work'}\n")
    config = project.config_path.read_text()
    project.config_path.write_text(re.sub(r"api: \{port: \d+\}", "api: {enabled: false}", config))
    done = project.cli("open", expect=2)
    assert done.stderr == (
        "pipewarden: the page needs the API, which is off: remove `api: {enabled: false}`\n"
    )


def test_the_tray_opens_the_page_with_a_one_time_code(project: Project):
    from pipewarden.tray.app import DaemonClient

    base, auth = start(project)
    client = DaemonClient(base, auth["Authorization"].removeprefix("Bearer "))
    url = client.sign_in_url()
    client.http.close()
    assert url is not None and url.startswith(f"{base}/#code=")
    code = url.split("#code=")[1]
    assert httpx.post(f"{base}/api/session", json={"code": code}).status_code == 200


# -- the pure parts: codes, sessions, the request check ------------------------------------
def test_a_login_code_works_once_and_only_within_60_s():
    codes = LoginCodes()
    code = codes.issue(now=1000.0)
    assert codes.redeem(code, now=1000.0 + LOGIN_CODE_TTL_S - 0.1)
    assert not codes.redeem(code, now=1001.0)  # used
    late = codes.issue(now=2000.0)
    assert not codes.redeem(late, now=2000.0 + LOGIN_CODE_TTL_S)  # a minute old
    assert not codes.redeem(late, now=2001.0)  # and gone
    assert not codes.redeem("made-up", now=2001.0)
    backwards = codes.issue(now=3000.0)
    assert not codes.redeem(backwards, now=2999.0)  # the clock went back: no code lives on
    many = [codes.issue(now=4000.0) for _ in range(LOGIN_CODES_KEPT + 1)]
    assert not codes.redeem(many[0], now=4000.0) and codes.redeem(many[-1], now=4000.0)


def test_a_session_is_the_tokens_and_ends():
    session = new_session("the-token", now=1000.0)
    assert session_valid("the-token", session, now=1000.0 + SESSION_TTL_S - 1)
    assert not session_valid("the-token", session, now=1000.0 + SESSION_TTL_S)
    assert not session_valid("another-token", session, now=1000.0)  # a new token: signed out
    assert not session_valid("the-token", session, now=1000.0 - 3600)  # issued "in the future"
    issued, _, mac = session.rpartition(".")
    prefix, at, nonce = issued.split(".")
    assert not session_valid("the-token", f"{prefix}.{int(at) - 1}.{nonce}.{mac}", now=1000.0)
    for junk in ("", "the-token", "pws1.x.y.z", "pws1..." + mac, session + "."):
        assert not session_valid("the-token", junk, now=1000.0)


def test_only_the_daemons_own_origin_and_same_origin_fetches_pass():
    port = 50123  # nothing listens: the origin rules are pure
    origins = own_origins(port)
    passes = [{}, {"origin": f"http://127.0.0.1:{port}"}, {"origin": f"http://localhost:{port}"},
              {"sec-fetch-site": "same-origin"}, {"sec-fetch-site": "none"}]  # fmt: skip
    for headers in passes:
        assert foreign_site(headers, origins) is None, headers
    refused = [{"origin": "null"}, {"origin": f"http://127.0.0.1:{port + 1}"},
               {"origin": f"http://127.0.0.1:{port}.evil.example"}, {"origin": ""},
               {"origin": f"http://127.0.0.1:{port}", "sec-fetch-site": "same-site"},
               {"sec-fetch-site": "cross-site"}]  # fmt: skip
    for headers in refused:
        assert foreign_site(headers, origins), headers


def test_the_gate_lets_the_page_html_and_health_through_and_nothing_else_without_a_header():
    gate = Gate("the-token", own_origins(8765), lambda: 1000.0)
    session = new_session("the-token", 1000.0)
    foreign = {"origin": "http://127.0.0.1:9999"}
    assert gate.refusal("GET", "/", foreign) is None  # a link from anywhere opens the page
    assert gate.refusal("POST", "/", foreign)[0] == 403
    assert gate.refusal("GET", "/health", {}) is None
    assert gate.refusal("GET", "/health", foreign)[0] == 403
    assert gate.refusal("GET", "/api/status", {"authorization": "Bearer the-token"}) is None
    assert gate.refusal("GET", "/api/status", {"authorization": f"bearer {session}"}) is None
    assert gate.refusal("GET", "/api/status", {"cookie": "pipewarden_token=the-token"})[0] == 401
    assert gate.refusal("GET", "/no/such/route", {})[0] == 401  # new routes are closed too
    assert gate.refusal("POST", "/api/login-codes", {"authorization": f"Bearer {session}"})[0] == (
        401
    )


# -- 6: every input checked, 400 with the reason ------------------------------------------
BAD_INPUT = [
    ("GET", "/api/runs?limit=abc", None, "'limit' must be a whole number, not 'abc'"),
    ("GET", "/api/runs?limit=1e3", None, "'limit' must be a whole number, not '1e3'"),
    ("GET", "/api/runs?limit=1&limit=2", None, "'limit' is given 2 times; give it once"),
    ("GET", "/api/runs?status=broken", None,
     "'status' must be one of running, ok, failed, timed_out, interrupted, ignored, deferred,"
     " skipped, not 'broken'"),
    ("GET", "/api/runs?limt=5", None,
     "unknown parameter 'limt': it takes limit, stage, status, pipeline"),
    ("GET", "/api/status?verbose=yes", None, "'verbose' must be 1 or 0, not 'yes'"),
    ("GET", "/api/halts?all=1", None, "unknown parameter 'all': it takes no parameters"),
    ("GET", "/api/events?since=5", None, "unknown parameter 'since': it takes latest_runs"),
    ("GET", "/api/events?latest_runs=all", None, "'latest_runs' must be a whole number, not 'all'"),
    ("POST", "/api/enqueue", {"pipeline": "outreach", "items": [{"data": {}}]},
     "'items[0].key' is missing"),
    ("POST", "/api/enqueue", {"pipeline": "outreach", "items": "abc"},
     "'items' must be a list, not text"),
    ("POST", "/api/enqueue", {"pipeline": "outreach", "items": [], "priority": 1},
     "unknown field 'priority': it takes pipeline, items, force"),
    ("POST", "/api/retry", {}, "'label' is missing"),
    ("POST", "/api/retry", {"label": "Rate limited", "since_s": "1h"},
     "'since_s' must be a number, not text"),
    ("POST", "/api/retry", {"label": "Rate limited", "since_s": 0},
     "'since_s' must be above 0, not 0"),
    ("POST", "/api/retry", {"label": "Rate limited", "since": 3600},
     "unknown field 'since': it takes label, pipeline, stage, since_s, dry_run, force, before,"
     " limit"),
    ("POST", "/api/retry", {"label": "Rate limited", "limit": 0},
     "'limit' must be above 0, not 0"),
    ("POST", "/api/pause", {"scope": "channel", "target": 5},
     "'target' must be text, not a whole number"),
    ("POST", "/api/pause", {"scope": "everything", "target": "sms"},
     "'scope' must be one of channel, stage, pipeline, not 'everything'"),
    ("POST", "/api/pause", {"target": "sms"}, "'scope' is missing"),
    ("POST", "/api/pause", {"scope": "channel", "target": "sms\nHALT channel form"},
     "'target' holds a control character ('sms\\nHALT channel form'): write one line of"
     " printable text"),
    ("POST", "/api/pause", {"scope": "channel", "target": "x" * 1025},
     "'target' is 1,025 bytes long; at most 1,024 bytes"),
    ("POST", "/api/pause", b'{"scope": "channel", "target": "\\ud800"}',
     "'target' is not valid UTF-8 text (a lone surrogate)"),
    ("POST", "/api/resume", {"scope": "channel", "target": ["sms"]},
     "'target' must be text, not a list"),
    ("POST", "/api/halts/clear", {"target": 5}, "'target' must be text, not a whole number"),
    ("POST", "/api/halts/clear", {}, "'target' is missing"),
    ("POST", "/api/halts/clear", b"target=form", "the request body must be a JSON object"),
    ("POST", "/api/session", {}, "'code' is missing"),
    ("POST", "/api/session", {"code": ["a"]}, "'code' must be text, not a list"),
]  # fmt: skip


def test_every_bad_input_is_a_400_with_the_reason(project: Project):
    base, auth = start(project)
    for method, path, sent, reason in BAD_INPUT:
        body = {"content": sent} if isinstance(sent, bytes) else {"json": sent}
        answer = httpx.request(
            method, base + path, headers=auth, **(body if sent is not None else {})
        )
        assert (answer.status_code, answer.json()) == (400, {"error": reason}), (path, sent)
    assert active_holds(project) == []  # before: a pause on 5
    assert project.item("outreach", "abc") is None


def test_a_body_over_the_limit_is_refused_before_it_is_read(project: Project):
    _, auth = start(project)
    with socket.create_connection(("127.0.0.1", project.api_port), timeout=10) as client:
        client.sendall(
            f"POST /api/enqueue HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: {auth['Authorization']}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {API_BODY_MAX + 1}\r\n\r\n{{".encode()
        )
        with client.makefile("rb") as reader:  # the daemon answers, then hangs up
            answer = reader.read().decode()
    head, _, body = answer.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 413 ")
    assert json.loads(body) == {
        "error": "the request body is over 64 MiB (67,108,865 bytes or more): send it in parts"
    }


def test_the_runs_limit_is_clamped_to_1_to_1000(project: Project):
    base, auth = start(project)
    store = project.store()  # at a stage the config does not have: the daemon leaves it be
    store.enqueue("outreach", "gone", [("k", {})], 1.0)
    with store.transaction():
        store.db.connection().executemany(
            "INSERT INTO runs (id, pipeline, stage, item_id, item_key, attempt, status,"
            " started_at, finished_at) SELECT ?, 'outreach', 'gone', id, key, 1, 'ok', ?, ?"
            " FROM items WHERE key = 'k'",
            [(f"run{n:05}", float(n), n + 0.5) for n in range(1005)],
        )
    store.close()

    def listed(query: str) -> int:
        answer = httpx.get(f"{base}/api/runs{query}", headers=auth)
        assert answer.status_code == 200, answer.text
        return len(answer.json())

    assert listed("?limit=-1") == 1  # before: every run
    assert listed("?limit=0") == 1
    assert listed("?limit=99999999999999999999") == 1000
    assert listed("?limit=5000") == 1000
    assert listed("") == 50
    assert listed("?limit=7&status=ok&pipeline=outreach") == 7
    assert json.loads(httpx.get(f"{base}/api/runs?limit=1", headers=auth).text)[0]["id"] == (
        "run01004"
    )
