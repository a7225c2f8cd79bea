"""What watching costs: pool throughput unwatched, watched lightly, and watched hard.

    nice .venv/bin/python bench/watching.py [--items 10000] [--reps 3] [--ways 0,1,2]
                                            [--baseline DIR]

The real daemon, one no-op Python stage in pool mode at concurrency 2, 10,000 items
(paused while the watchers connect, then resumed through the API), three ways, reps
interleaved:
  - unwatched;
  - three pages and two pollers: each page reads the event stream (the latest 40 runs'
    events a batch, as the page's script asks) and, while events come,
    asks for `/api/status?verbose=1` and the failed runs every half second, as the page's
    script does; each poller asks for `/api/status` once a second;
  - 100 event-stream clients and 20 busy pollers (each asks for `/api/status` again as
    soon as it has the answer): the p50 and p99 of the answers asked and given while the
    work ran are printed too (not those of the idle daemon before and after).
The rate and the CPU per item (the daemon's and its workers') count from the first item
done to the last, as in compare.py. The watchers are asyncio clients in this process
(raw HTTP/1.1 with keep-alive), so what they cost themselves is small, but they share
the machine's two cores with the daemon as a person's browser would. `--baseline DIR`
runs each way with another version of the package too (as in compare.py), interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from compare import POLL_S, WORKER, counter, tree_cpu
from ports import free_port

WAYS = ["unwatched", "3 pages + 2 pollers/s", "100 streams + 20 busy pollers"]
CONTENT_LENGTH = re.compile(rb"content-length: *(\d+)", re.IGNORECASE)
RUN_LIMIT_S = 300.0
PAGE_REFRESH_S = 0.5  # the page's script: a status refresh at most this often while events come


@dataclass
class Watched:
    rate: float
    cpu_us: float
    latencies: list[float] = field(default_factory=list)  # of the busy pollers' answers
    errors: int = 0
    measuring: bool = False  # between the first item done and the last: answers counted


class Http:
    """One keep-alive HTTP/1.1 connection to the daemon's API."""

    def __init__(self, port: int, token: str):
        self.port, self.token = port, token
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    def _request(self, method: str, path: str, body: bytes = b"") -> bytes:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {self.token}\r\nContent-Length: {len(body)}\r\n"
        )
        if body:
            head += "Content-Type: application/json\r\n"
        return (head + "\r\n").encode() + body

    async def call(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        assert self.reader and self.writer
        self.writer.write(self._request(method, path, body))
        head = await self.reader.readuntil(b"\r\n\r\n")
        found = CONTENT_LENGTH.search(head)
        answer = await self.reader.readexactly(int(found.group(1)) if found else 0)
        return int(head.split(b" ", 2)[1]), answer

    async def stream(self, path: str, on_data: asyncio.Event | None = None) -> None:
        """Read an event stream until cancelled, setting `on_data` as data comes."""
        assert self.reader and self.writer
        self.writer.write(self._request("GET", path))
        while await self.reader.read(65536):
            if on_data is not None:
                on_data.set()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def page(port: int, token: str, result: Watched) -> None:
    events, asks = Http(port, token), Http(port, token)
    await events.open()
    await asks.open()
    arrived = asyncio.Event()
    reading = asyncio.ensure_future(events.stream("/api/events?latest_runs=40", arrived))
    try:
        while True:
            await arrived.wait()
            await asyncio.sleep(PAGE_REFRESH_S)
            arrived.clear()
            for path in ("/api/status?verbose=1", "/api/runs?status=failed&limit=15"):
                status, _ = await asks.call("GET", path)
                result.errors += status != 200
    finally:
        reading.cancel()
        events.close()
        asks.close()


async def poller(port: int, token: str, result: Watched, every_s: float) -> None:
    """Asks for the status every `every_s` (0: as soon as the last answer is in)."""
    http = Http(port, token)
    await http.open()
    try:
        while True:
            asked = time.monotonic()
            counts = result.measuring
            status, _ = await http.call("GET", "/api/status")
            result.errors += status != 200
            if every_s == 0 and counts and result.measuring:  # asked and answered as work ran
                result.latencies.append(time.monotonic() - asked)
            await asyncio.sleep(max(0.0, every_s - (time.monotonic() - asked)))
    finally:
        http.close()


async def stream_client(port: int, token: str) -> None:
    http = Http(port, token)
    await http.open()
    try:
        await http.stream("/api/events")
    finally:
        http.close()


def watchers(how: str, port: int, token: str, result: Watched) -> list:
    if how == "3 pages + 2 pollers/s":
        return [page(port, token, result) for _ in range(3)] + [
            poller(port, token, result, 1.0) for _ in range(2)
        ]
    if how == "100 streams + 20 busy pollers":
        return [stream_client(port, token) for _ in range(100)] + [
            poller(port, token, result, 0.0) for _ in range(20)
        ]
    return []


async def one_run(items: int, how: str, baseline: str | None) -> Watched:
    env = {**os.environ, "PYTHONPATH": baseline} if baseline else None
    with tempfile.TemporaryDirectory(prefix="pw-watching-") as folder:
        root = Path(folder)
        port = _project(root, items, env)
        cli = [sys.executable, "-m", "pipewarden"]
        daemon = subprocess.Popen([*cli, "run", "--config", "config.yaml"], cwd=root, env=env,
                                  stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            token = await _api_up(root, port, daemon)
            result = Watched(0.0, 0.0)
            tasks = [asyncio.ensure_future(w) for w in watchers(how, port, token, result)]
            await asyncio.sleep(0.5)  # every watcher connected
            control = Http(port, token)
            await control.open()
            resume = json.dumps({"scope": "pipeline", "target": "bench"}).encode()
            await control.call("POST", "/api/resume", resume)
            control.close()
            done = counter(root / ".pipewarden" / "pipewarden.db",
                           "SELECT COUNT(*) FROM items WHERE state = 'done'")  # fmt: skip
            result.rate, result.cpu_us = await _measure(daemon, done, items, result)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            daemon.terminate()
            daemon.wait(30)
        return result


def _project(root: Path, items: int, env: dict[str, str] | None) -> int:
    """The bench project, its items enqueued behind a pause; returns its API port."""
    port = free_port()
    (root / "bench_worker.py").write_text(WORKER)
    (root / "rules.yaml").write_text("rules: []\n")
    (root / "config.yaml").write_text(
        f"rules: [rules.yaml]\napi: {{port: {port}}}\npipelines:\n  bench:\n    stages:\n"
        '      - {name: noop, python: "bench_worker:noop", mode: pool, concurrency: 2}\n'
    )
    lines = (json.dumps({"key": f"item-{n}", "data": {"n": n}}) for n in range(items))
    (root / "items.jsonl").write_text("\n".join(lines) + "\n")
    cli = [sys.executable, "-m", "pipewarden"]
    for args in (["pause", "--pipeline", "bench"], ["enqueue", "bench", "--file", "items.jsonl"]):
        subprocess.run([*cli, *args, "--config", "config.yaml"], cwd=root, env=env, check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
    return port


async def _api_up(root: Path, port: int, daemon: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise SystemExit("FAILED: the daemon exited at start")
        token_file = root / ".pipewarden" / "api.token"
        try:
            if token_file.exists():
                http = Http(port, token_file.read_text().strip())
                await http.open()
                http.close()
                return http.token
        except OSError:
            pass
        await asyncio.sleep(0.05)
    raise SystemExit("FAILED: the API did not come up")


async def _measure(
    daemon: subprocess.Popen[bytes], done, items: int, result: Watched
) -> tuple[float, float]:
    """Rate and CPU per item from the first item done to the last (or to RUN_LIMIT_S: a
    daemon that slow is measured on what it did, and said so)."""
    start = None
    deadline = time.monotonic() + RUN_LIMIT_S
    while True:
        count = await asyncio.to_thread(done)
        now = time.monotonic()
        if start is None and count > 0:
            start = (now, count, tree_cpu(daemon.pid))
            result.measuring = True
        if start is not None and (count >= items or now > deadline):
            if count < items:
                print(f"  (only {count:,} of {items:,} done within {RUN_LIMIT_S:g} s)")
            result.measuring = False
            measured = count - start[1]
            cpu = tree_cpu(daemon.pid) - start[2]
            return measured / (now - start[0]), cpu / max(measured, 1) * 1e6
        if now > deadline + RUN_LIMIT_S:
            raise SystemExit("FAILED: no item done")
        await asyncio.sleep(POLL_S)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--ways", default="0,1,2", help="which of the three, e.g. 0,2")
    parser.add_argument("--baseline", help="a folder holding another version's pipewarden")
    args = parser.parse_args()
    ways = [WAYS[int(n)] for n in args.ways.split(",")]
    if args.baseline:
        ways += [f"baseline: {way}" for way in ways]
    results: dict[str, list[Watched]] = {way: [] for way in ways}
    load = os.getloadavg()[0]
    for rep in range(args.reps):
        for way in ways[rep % len(ways) :] + ways[: rep % len(ways)]:
            how, baseline = way.removeprefix("baseline: "), way.startswith("baseline: ")
            result = asyncio.run(one_run(args.items, how, args.baseline if baseline else None))
            results[way].append(result)
            print(f"  rep {rep + 1}: {way}: {_line(result)}", flush=True)
    print(f"\nload average (1 min) {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end;"
          f" medians of {args.reps} interleaved reps\n")  # fmt: skip
    for way in ways:
        first = "baseline: " + ways[0] if way.startswith("baseline: ") else ways[0]
        base = statistics.median(r.rate for r in results[first])
        rate = statistics.median(r.rate for r in results[way])
        cpu = statistics.median(r.cpu_us for r in results[way])
        latencies = [latency for r in results[way] for latency in r.latencies]
        errors = sum(r.errors for r in results[way])
        extra = ""
        if latencies:
            extra = (f"; /api/status p50 {_percentile(latencies, 0.5) * 1000:.0f} ms,"
                     f" p99 {_percentile(latencies, 0.99) * 1000:.0f} ms"
                     f" over {len(latencies):,} answers")  # fmt: skip
        print(f"{way:41} {rate:7,.0f} items/s ({rate / base:.2f}x {first}),"
              f" {cpu:5.0f} µs CPU/item, {errors} errors{extra}")  # fmt: skip
    return 0


def _line(r: Watched) -> str:
    tail = f", p99 {_percentile(r.latencies, 0.99) * 1000:.0f} ms" if r.latencies else ""
    return f"{r.rate:7,.0f} items/s, {r.cpu_us:5.0f} µs CPU/item, {r.errors} errors{tail}"


if __name__ == "__main__":
    sys.exit(main())
