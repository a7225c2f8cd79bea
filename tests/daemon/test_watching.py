"""Watching costs almost nothing: status readers share one snapshot per interval, event
stream clients get batches (several frames in one write, a run's progress at its latest)."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time

import httpx
from conftest import Project, wait_until
from pipewarden.events import (
    BATCH_S,
    HAND_OUT_PER_TURN,
    WRITES_PER_S,
    Event,
    EventBus,
    coalesced,
)
from pipewarden.reads import FRESH_S
from prometheus_client.parser import text_string_to_metric_families

WORKER = """
import time

def work(data, ctx):
    steps = data.get("steps", 100)
    for step in range(1, steps + 1):
        ctx.progress(step / steps, f"step {step}")
        time.sleep(0.002)
    time.sleep(data.get("sleep", 0))
    return {"done": True}
"""
READERS = 30
READS_EACH = 10


def start(project: Project) -> tuple[str, dict[str, str]]:
    project.write("worker.py", WORKER)
    project.configure("sites:\n  stages:\n    - {name: work, python: 'worker:work'}\n")
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


def snapshots_computed(base: str, auth: dict[str, str]) -> float:
    text = httpx.get(f"{base}/metrics", headers=auth).text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    return families["pipewarden_status_snapshots"].samples[0].value


def test_many_status_readers_share_one_snapshot_per_interval(project: Project):
    base, auth = start(project)
    before = snapshots_computed(base, auth)
    answers: list[int] = []
    began = time.monotonic()

    def read() -> None:
        with httpx.Client(headers=auth, timeout=10) as client:
            for _ in range(READS_EACH):
                answers.append(client.get(f"{base}/api/status").status_code)

    readers = [threading.Thread(target=read) for _ in range(READERS)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(30)
    elapsed = time.monotonic() - began

    computed = snapshots_computed(base, auth) - before
    assert answers == [200] * READERS * READS_EACH
    assert 1 <= computed <= elapsed / FRESH_S + 1, (computed, len(answers))


def test_a_change_through_the_api_shows_in_the_very_next_status(project: Project):
    base, auth = start(project)
    assert httpx.get(f"{base}/api/status", headers=auth).json()["holds"] == []
    httpx.post(f"{base}/api/pause", headers=auth, json={"scope": "pipeline", "target": "sites"})
    (hold,) = httpx.get(f"{base}/api/status", headers=auth).json()["holds"]  # no stale answer
    assert (hold["kind"], hold["target"]) == ("pause", "sites")


def test_an_event_stream_gets_a_runs_progress_coalesced_to_its_latest(project: Project):
    base, auth = start(project)
    listening = Listener(base, auth, finished=1)
    project.cli("enqueue", "sites", "one", "--data", json.dumps({"sleep": 0.3}))
    events = listening.events()

    kinds = [kind for kind, _ in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    progress = [data for kind, data in events if kind == "run_progress"]
    assert 1 <= len(progress) < 30, kinds  # 100 reports, coalesced to a few batches' latest
    assert (progress[-1]["progress"], progress[-1]["message"]) == (1.0, "step 100")


def test_an_event_stream_gets_many_runs_events_in_few_writes(project: Project):
    base, auth = start(project)
    listening = Listener(base, auth, finished=20)
    items = "\n".join(json.dumps({"key": f"k{n}", "data": {"steps": 1}}) for n in range(20))
    project.write("items.jsonl", items + "\n")
    project.cli("enqueue", "sites", "--file", "items.jsonl")
    events = listening.events()

    finished = [data for kind, data in events if kind == "run_finished"]
    assert len(finished) == 20
    # None lost: a run's start is a frame of its own, or (ended within its batch) told
    # by its finish, which then stands for its start and its progress too.
    started = {data["run_id"] for kind, data in events if kind == "run_started"}
    for run in finished:
        assert run["run_id"] in started or "started_at" in run, run
    assert len(events) <= 60
    span = listening.times[-1] - listening.times[1]  # from the first event's write to the last
    assert len(listening.writes) - 1 <= span / BATCH_S + 2  # a write per batch, not per event
    assert any(write.count(b"\n\nid: ") >= 2 for write in listening.writes)


class Listener:
    """An event stream client in a thread, keeping each write as it came (one HTTP chunk)."""

    def __init__(
        self,
        base: str,
        auth: dict[str, str],
        finished: int = 0,
        path: str = "/api/events",
        until: bytes | None = None,
    ):
        """Listens until `finished` runs ended, or until a write holds `until`."""
        self.writes: list[bytes] = []
        self.times: list[float] = []  # when each write came
        self._connected = threading.Event()
        self._thread = threading.Thread(
            target=self._listen, args=(f"{base}{path}", auth, finished, until)
        )
        self._thread.start()
        assert self._connected.wait(10)

    def _listen(self, url: str, auth: dict[str, str], finished: int, until: bytes | None) -> None:
        with httpx.stream("GET", url, headers=auth, timeout=30) as stream:
            for chunk in stream.iter_raw():
                self._connected.set()
                self.writes.append(chunk)
                self.times.append(time.monotonic())
                seen = b"".join(self.writes)  # a frame may come split over two reads
                if until in seen if until else seen.count(b"event: run_finished") >= finished:
                    return

    def events(self) -> list[tuple[str, dict]]:
        self._thread.join(30)
        return _frames(b"".join(self.writes))


def _frames(written: bytes) -> list[tuple[str, dict]]:
    frames = written.decode().split("\n\n")
    return [_parsed(frame) for frame in frames if frame and not frame.startswith(":")]


def _parsed(frame: str) -> tuple[str, dict]:
    fields = dict(line.split(": ", 1) for line in frame.splitlines())
    return fields["event"], json.loads(fields["data"])


def test_answers_on_a_kept_alive_connection_do_not_wait_for_the_clients_ack(project: Project):
    """A page, the tray and a poller keep their connection open. Without TCP_NODELAY on the
    daemon's side, each answer's body (written after its head) waited for the client's
    delayed ACK: 40 ms or more for every request after the first on a connection."""
    base, auth = start(project)
    with httpx.Client(base_url=base, headers=auth) as client:
        client.get("/health")  # the connection is open and past its first exchange
        took = []
        for _ in range(9):
            asked = time.monotonic()
            assert client.get("/api/status").status_code == 200
            took.append(time.monotonic() - asked)
    assert sorted(took)[4] < 0.030, f"median answer {sorted(took)[4] * 1000:.0f} ms"


def test_a_run_that_ends_within_a_batch_is_sent_as_its_finish_carrying_its_start():
    """A quick stage's runs start and end within one batch: their starts were half of the
    bytes every client was sent. Progress of a run still under way is kept at its latest."""
    events = [
        Event(1, "run_started", {"run_id": "a", "key": "k1", "started_at": 5.0, "channel": "web"}),
        Event(2, "run_progress", {"run_id": "a", "progress": 0.5}),
        Event(3, "run_started", {"run_id": "b", "key": "k2", "started_at": 6.0}),
        Event(4, "halt", {"target": "web"}),
        Event(5, "run_finished", {"run_id": "a", "key": "k1", "status": "ok"}),
        Event(6, "run_progress", {"run_id": "b", "progress": 0.1}),
        Event(7, "run_progress", {"run_id": "b", "progress": 0.2}),
    ]
    assert coalesced(events) == [
        Event(3, "run_started", {"run_id": "b", "key": "k2", "started_at": 6.0}),
        Event(4, "halt", {"target": "web"}),
        Event(
            5,
            "run_finished",
            {"run_id": "a", "key": "k1", "started_at": 5.0, "channel": "web", "status": "ok"},
        ),
        Event(7, "run_progress", {"run_id": "b", "progress": 0.2}),
    ]


def test_a_subscriber_of_the_latest_runs_gets_only_those_and_every_other_event():
    """The page shows the latest 40 runs: a busy daemon's batch holds hundreds, and encoding
    them all for it was most of what an open page cost the work. `runs tail -f` still gets
    every run, from the same batch's events."""

    async def one_batch() -> tuple[bytes, bytes]:
        bus = EventBus()
        every, latest = bus.subscribe(), bus.subscribe(latest_runs=3)
        bus.publish("run_started", run_id="long", started_at=1.0)
        for n in range(10):
            bus.publish("run_started", run_id=f"r{n}", started_at=2.0 + n)
            if n == 5:
                bus.publish("halt", target="sms")
            bus.publish("run_finished", run_id=f"r{n}", status="ok")
        bus.publish("run_progress", run_id="long", progress=0.5)
        bus._flush.cancel()
        bus._send()
        never = asyncio.get_running_loop().create_future()
        return await every.next(never, 0.01), await latest.next(never, 0.01)

    every, latest = (_frames(batch) for batch in asyncio.run(one_batch()))
    assert [data.get("run_id") for _, data in every] == [
        "long", "r0", "r1", "r2", "r3", "r4", None, "r5", "r6", "r7", "r8", "r9", "long",
    ]  # fmt: skip
    # The three latest runs: one of them still under way, started before the others.
    assert [(kind, data.get("run_id") or data["target"]) for kind, data in latest] == [
        ("run_started", "long"), ("halt", "sms"), ("run_finished", "r8"),
        ("run_finished", "r9"), ("run_progress", "long"),
    ]  # fmt: skip
    assert latest[2][1] == {"run_id": "r8", "started_at": 10.0, "status": "ok"}


def test_the_page_asks_the_stream_for_the_runs_it_shows(project: Project):
    base, auth = start(project)
    refused = httpx.get(f"{base}/api/events?latest_runs=many", headers=auth)
    assert refused.status_code == 400 and "latest_runs" in refused.json()["error"]
    last = b'"key":"k59"'
    latest = Listener(base, auth, path="/api/events?latest_runs=2", until=last)
    every = Listener(base, auth, until=last)
    items = "\n".join(json.dumps({"key": f"k{n}", "data": {"steps": 0}}) for n in range(60))
    project.write("items.jsonl", items + "\n")
    project.cli("enqueue", "sites", "--file", "items.jsonl")

    finished = [data["key"] for kind, data in every.events() if kind == "run_finished"]
    assert finished == [f"k{n}" for n in range(60)]
    for write in latest.writes:  # a batch: the latest two runs' events at most
        runs = {data["run_id"] for _, data in _frames(write) if "run_id" in data}
        assert len(runs) <= 2, write
    shown = [data["key"] for kind, data in latest.events() if kind == "run_finished"]
    assert shown[-1] == "k59" and len(shown) < 60


def test_with_many_clients_batches_come_less_often_so_their_writes_stay_bounded():
    """Each client's write of a batch costs the loop the same whatever is in it: 100 clients
    get a batch every 0.2 s, not every 0.1 s, and still get every event."""

    async def publish_for(clients: int, seconds: float) -> tuple[int, list[int]]:
        bus = EventBus()
        subscriptions = [bus.subscribe() for _ in range(clients)]
        loop = asyncio.get_running_loop()
        ends = loop.time() + seconds
        published = 0
        while loop.time() < ends:
            published += 1
            bus.publish("run_finished", run_id=str(published))
            await asyncio.sleep(0.002)
        await asyncio.sleep(bus.batch_interval() + 0.05)  # the last batch goes out
        never = loop.create_future()
        got = [(await s.next(never, 0.01)).count(b"event: run_finished") for s in subscriptions]
        return bus.batches, [published - n for n in got]

    one_batches, one_missed = asyncio.run(publish_for(1, 1.0))
    many_batches, many_missed = asyncio.run(publish_for(100, 1.0))
    assert one_missed == [0] and set(many_missed) == {0}
    assert 1.0 / BATCH_S - 2 <= one_batches <= 1.0 / BATCH_S + 2
    assert many_batches <= 1.0 / (100 / WRITES_PER_S) + 2 < 1.0 / BATCH_S - 2


def test_a_batch_for_many_clients_is_handed_out_a_few_per_turn_of_the_loop_in_order():
    """A hundred clients woken at once wrote a hundred copies in one turn of the loop, and
    every API answer waited behind them: a few per turn, each client still getting every
    batch in order."""

    async def hand_out() -> tuple[list[int], list[bytes]]:
        bus = EventBus()
        subscriptions = [bus.subscribe() for _ in range(100)]
        handed = [0]  # batches the subscriptions hold, turn by turn
        bus.publish("halt", target="first")
        while handed[-1] < 2 * len(subscriptions):
            await asyncio.sleep(0)
            handed.append(sum(len(s._batches) for s in subscriptions))
            if len(handed) == 3:  # the next batch made while this one is handed out
                bus.publish("halt", target="second")
                bus._send()  # what its timer would do, had the loop been slower
        never = asyncio.get_running_loop().create_future()
        return handed, [await s.next(never, 0.01) for s in subscriptions]

    handed, got = asyncio.run(hand_out())
    assert max(b - a for a, b in itertools.pairwise(handed)) <= HAND_OUT_PER_TURN, handed
    assert all(g.index(b"first") < g.index(b"second") for g in got)


def test_a_field_with_no_value_is_left_out_of_the_frame_and_read_as_none():
    """Every client is sent every byte: a finish's empty label, group and error went as
    nulls, a third of the frame. `runs tail -f` reads the frame without them."""
    from pipewarden.runfeed import run_of_event

    data = {"run_id": "r1", "pipeline": "p", "stage": "s", "key": "k", "attempt": 1,
            "status": "ok", "item_state": "done", "label": None, "group": None,
            "error": None, "duration_s": 0.002}  # fmt: skip
    frame = Event(7, "run_finished", data).frame()
    assert "null" not in frame
    sent = json.loads(frame.split("data: ", 1)[1])
    assert sent == {k: v for k, v in data.items() if v is not None}
    run = run_of_event(sent)
    assert (run.id, run.status, run.label, run.error) == ("r1", "ok", None, None)
