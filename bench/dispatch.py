"""Dispatch latency on SQLite: one item enqueued through the API to its worker's start.

    nice .venv/bin/python bench/dispatch.py [--samples 200] [--mode pool|process]

An idle daemon (the embedded SQLite store, one stage, concurrency 1) is sent one item at a
time with `POST /api/enqueue` (its token, one kept connection, as the CLI does); the
worker stamps the time it starts the item, so what is measured is the API's answer, the
commit of the new item, the wake-up and claim, the run row's commit and the hand-over to
the worker. In pool mode the worker is warm (an item before the samples starts it); in
process mode each sample includes a spawn. Prints p50, p90, p99 and the largest, in ms, to
the worker's start and to the API's answer.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ports import free_port

POOL_WORKER = "import time\n\ndef stamp(data):\n    return {'started': time.time()}\n"
# Process mode: the item's line read, the time printed as the worker's reply.
PROCESS_WORKER = (
    "import json, sys, time\n"
    "sys.stdin.readline()\n"
    "print(json.dumps({'ok': True, 'data': {'started': time.time()}}), flush=True)\n"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--mode", choices=("pool", "process"), default="pool")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pw-dispatch-") as folder:
        started, answered = measure(Path(folder), args.samples, args.mode)
    print(f"{args.mode} mode, {len(started)} samples, load average {os.getloadavg()[0]:.1f}:")
    for what, found in (("enqueue -> worker start", started), ("enqueue -> API answer", answered)):
        cut = statistics.quantiles(found, n=100, method="inclusive")
        print(
            f"  {what}: p50 {cut[49]:.2f} ms, p90 {cut[89]:.2f} ms, p99 {cut[98]:.2f} ms,"
            f" largest {max(found):.2f} ms"
        )
    return 0


def measure(root: Path, samples: int, mode: str) -> tuple[list[float], list[float]]:
    """ms from each POST to its worker's start, and to the API's answer."""
    from pipewarden.store import Store

    port = free_port()
    if mode == "pool":
        (root / "bench_worker.py").write_text(POOL_WORKER)
        worker = 'python: "bench_worker:stamp"'
    else:
        (root / "bench_worker.py").write_text(PROCESS_WORKER)
        worker = f"command: [{json.dumps(sys.executable)}, bench_worker.py]"
    (root / "rules.yaml").write_text("rules: []\n")
    (root / "config.yaml").write_text(
        f"rules: [rules.yaml]\napi: {{port: {port}}}\n"
        "pipelines:\n  bench:\n    stages:\n"
        f"      - {{name: stamp, {worker}, mode: {mode}, concurrency: 1}}\n"
    )
    daemon = subprocess.Popen(
        [sys.executable, "-m", "pipewarden", "run", "--config", "config.yaml"],
        cwd=root, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    store = None
    try:
        token_file = root / ".pipewarden" / "api.token"
        _wait(lambda: token_file.exists() and token_file.read_text().strip(), "the API token")
        _wait(lambda: _answers(port), "the API")
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {
            "Authorization": f"Bearer {token_file.read_text().strip()}",
            "Content-Type": "application/json",
        }
        store = Store(root / ".pipewarden")
        found = []
        answered: list[float] = []
        for n in range(-1, samples):  # the first one starts a pool worker: not counted
            key = f"k{n}"
            body = json.dumps({"pipeline": "bench", "items": [{"key": key}]}).encode()
            sent = time.time()
            connection.request("POST", "/api/enqueue", body, headers)
            answer = connection.getresponse()
            answer.read()
            answered.append((time.time() - sent) * 1000)
            if answer.status != 200:
                raise SystemExit(f"FAILED: the API answered {answer.status}")
            item = _wait(lambda key=key: _done(store, key), f"item {key}")
            if n >= 0:
                found.append((json.loads(item.data)["started"] - sent) * 1000)
            time.sleep(0.02)  # idle again: the next one wakes a sleeping loop
        return found, answered
    finally:
        if store is not None:
            store.close()
        daemon.terminate()
        daemon.wait(30)


def _answers(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/health")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def _done(store, key: str):
    item = store.item("bench", key)
    return item if item is not None and item.state == "done" else None


def _wait(predicate, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise SystemExit(f"FAILED: waiting for {what}")
        time.sleep(0.001)
    return value


if __name__ == "__main__":
    sys.exit(main())
