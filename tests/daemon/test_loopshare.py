"""The API keeps to its share of a busy loop: busy pollers wait their turn, the work runs on."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
from conftest import Project, wait_until
from pipewarden.loopshare import BURST_S, LoopBudget, LoopShare
from prometheus_client.parser import text_string_to_metric_families

REQUEST_CPU_S = 0.003  # what each request of the app below costs the loop (counted, not spent)
REQUESTS = 20


class CountedApp:
    """An ASGI app whose every answer costs REQUEST_CPU_S on a CPU clock the test keeps."""

    def __init__(self) -> None:
        self.cpu = 0.0

    async def __call__(self, scope: dict, receive: object, send) -> None:
        self.cpu += REQUEST_CPU_S
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def _serve(busy: bool, share: float) -> tuple[float, int]:
    app = CountedApp()
    budget = LoopBudget(busy=lambda: busy, share=share)
    middleware = LoopShare(app, budget, cpu=lambda: app.cpu)

    async def nothing(message: dict) -> None:
        pass

    began = time.monotonic()
    for _ in range(REQUESTS):
        await middleware({"type": "http", "method": "GET", "path": "/api/status"}, None, nothing)
    return time.monotonic() - began, budget.waited


def test_requests_wait_for_their_share_of_a_busy_loop_and_never_of_an_idle_one():
    share = 0.5
    elapsed, waited = asyncio.run(_serve(busy=True, share=share))
    # All but the burst's worth must be paid for at `share` of the time passing.
    assert elapsed >= (REQUESTS * REQUEST_CPU_S - BURST_S) / share * 0.9, elapsed
    assert waited >= REQUESTS - 10

    elapsed, waited = asyncio.run(_serve(busy=False, share=share))
    assert waited == 0 and elapsed < 0.5


def test_concurrent_reads_of_a_spent_budget_are_let_in_one_at_a_time():
    """Twenty pollers asking at once must be answered in turn, not all let in together while
    the first runs and then all held together (a p99 twice the p50)."""

    async def serve() -> int:
        cpu, inside, most = [0.0], [0], [0]

        async def yielding_app(scope: dict, receive: object, send) -> None:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
            cpu[0] += REQUEST_CPU_S
            await asyncio.sleep(0)  # uvicorn's send lets the loop turn before the answer ends
            inside[0] -= 1

        budget = LoopBudget(busy=lambda: True, share=0.5, expected=REQUEST_CPU_S)
        budget.charge(BURST_S)  # spent: every read must wait its turn
        middleware = LoopShare(yielding_app, budget, cpu=lambda: cpu[0])

        async def nothing(message: dict) -> None:
            pass

        scope = {"type": "http", "method": "GET", "path": "/api/status"}
        await asyncio.gather(*(middleware(scope, None, nothing) for _ in range(REQUESTS)))
        return most[0]

    assert asyncio.run(serve()) == 1


def test_an_action_never_waits_behind_the_reads():
    async def serve() -> tuple[float, int]:
        app = CountedApp()
        budget = LoopBudget(busy=lambda: True, share=0.01)
        middleware = LoopShare(app, budget, cpu=lambda: app.cpu)

        async def nothing(message: dict) -> None:
            pass

        for _ in range(10):  # the budget is spent: 30 ms at 1 %, 2 s to earn again
            budget.charge(REQUEST_CPU_S)
        began = time.monotonic()
        await middleware({"type": "http", "method": "POST", "path": "/api/pause"}, None, nothing)
        return time.monotonic() - began, budget.waited

    elapsed, waited = asyncio.run(serve())
    assert waited == 0 and elapsed < 0.5


def test_a_request_awaiting_a_read_is_not_charged_for_what_the_loop_did_meanwhile():
    async def serve() -> int:
        cpu = [0.0]

        async def reading_app(scope: dict, receive: object, send) -> None:
            await asyncio.sleep(0.02)  # the read, in the reads thread: the loop does other work
            cpu[0] += REQUEST_CPU_S
            await send({"type": "http.response.start", "status": 200, "headers": []})

        async def other_work() -> None:
            while True:
                cpu[0] += 0.1  # an attempt's bookkeeping on the same loop thread
                await asyncio.sleep(0.001)

        async def nothing(message: dict) -> None:
            pass

        budget = LoopBudget(busy=lambda: True, share=0.5)
        middleware = LoopShare(reading_app, budget, cpu=lambda: cpu[0])
        meanwhile = asyncio.ensure_future(other_work())
        for _ in range(3):
            await middleware(
                {"type": "http", "method": "GET", "path": "/api/status"}, None, nothing
            )
        meanwhile.cancel()
        return budget.waited

    assert asyncio.run(serve()) == 0


WORKER = """
import time

def work(data):
    time.sleep(data.get("sleep", 0))
"""


def test_busy_pollers_wait_while_attempts_run_and_are_all_answered(project: Project):
    project.write("worker.py", WORKER)
    project.configure("sites:\n  stages:\n    - {name: work, python: 'worker:work'}\n")
    project.start_daemon()
    port = project.api_port
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: _up(base), "the API")
    token = (project.state_dir / "api.token").read_text().strip()
    auth = {"Authorization": f"Bearer {token}"}
    project.cli("enqueue", "sites", "slow", "--data", json.dumps({"sleep": 60}))
    wait_until(lambda: _in_flight(base, auth) == 1, "the attempt under way")

    answers = asyncio.run(_poll_until_waited(port, token, base, auth))

    assert answers and set(answers) == {200}
    assert _gauge(base, auth, "pipewarden_attempts_in_flight") == 1


async def _poll_until_waited(port: int, token: str, base: str, auth: dict) -> list[int]:
    """Ten busy pollers on kept-alive connections until the daemon says some waited."""
    answers: list[int] = []
    stop = asyncio.Event()

    async def poller() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = (
            f"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n"
        ).encode()
        try:
            while not stop.is_set():
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                answers.append(int(head.split(b" ", 2)[1]))
        finally:
            writer.close()

    pollers = [asyncio.ensure_future(poller()) for _ in range(10)]
    deadline = time.monotonic() + 20
    with httpx.Client(headers=auth, timeout=10) as client:
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            if _gauge(base, auth, "pipewarden_api_waits", client) > 0:
                break
        else:
            raise AssertionError(f"no request waited after {len(answers)} answers")
    stop.set()
    await asyncio.gather(*pollers)
    return answers


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _in_flight(base: str, auth: dict) -> float:
    return _gauge(base, auth, "pipewarden_attempts_in_flight")


def _gauge(base: str, auth: dict, name: str, client: httpx.Client | None = None) -> float:
    text = (client or httpx).get(f"{base}/metrics", headers=auth).text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    return families[name].samples[0].value
