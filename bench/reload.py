"""Time from saving a rule file to the daemon classifying with the new rules.

    python bench/reload.py [--saves 10]

Starts the real daemon on a scratch project, then saves a changed rule file again and
again, each time timing until the daemon has swapped the new rules in (the version
it records changes to the new file's). Reports the median and the slowest.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipewarden.rules import load_rules
from pipewarden.store import Store
from ports import free_port


def recorded_version(store_dir: Path) -> str | None:
    store = Store(store_dir)
    try:
        meta = store.get_meta("reload")
    finally:
        store.close()
    return meta and meta["version"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        rules = root / "rules.yaml"
        rules.write_text("rules: []\n")
        (root / "config.yaml").write_text(
            f"rules: [rules.yaml]\napi: {{port: {free_port()}}}\n"
            "pipelines:\n  p:\n    stages:\n      - {name: s, command: [x]}\n"
        )
        daemon = subprocess.Popen(
            [sys.executable, "-m", "pipewarden", "run", "--config", "config.yaml"],
            cwd=root, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while recorded_version(root / ".pipewarden") is None:
                if time.monotonic() > deadline:
                    raise SystemExit("the daemon did not start")
                time.sleep(0.01)
            time.sleep(0.5)  # let the file watcher settle before the first save
            delays = []
            for n in range(args.saves):
                text = f"rules:\n  - {{match: 'error {n}', group: terminal, label: E{n}}}\n"
                saved = time.monotonic()
                rules.write_text(text)
                expected = load_rules([rules.resolve()], root).version
                while recorded_version(root / ".pipewarden") != expected:
                    if time.monotonic() - saved > 10:
                        raise SystemExit(f"save {n} was not picked up within 10s")
                    time.sleep(0.002)
                delays.append(time.monotonic() - saved)
                time.sleep(0.2)
        finally:
            daemon.terminate()
            daemon.wait(10)
    print(
        f"save -> new rules in force: median {statistics.median(delays) * 1000:.0f} ms,"
        f" slowest {max(delays) * 1000:.0f} ms ({args.saves} saves)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
