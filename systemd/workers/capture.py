#!/usr/bin/env python3
"""A command worker: headless Chromium, with its own sandbox, captures the item's `url`.

It writes CAPTURE_DIR/KEY.png and answers with its path and size. Chromium runs in the
worker's process group, so pipewarden's watchdog kills a hung browser with the worker.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

PNG = b"\x89PNG\r\n\x1a\n"
CHROMIUM_S = 60  # one page; a browser that takes longer is killed and the attempt fails


def capture(url: str, target: Path) -> str:
    """Run Chromium on `url`; '' when `target` holds a PNG, else why not."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        argv = [
            "chromium",
            "--headless",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--window-size=1280,800",
            f"--screenshot={target}",
            url,
        ]  # never --no-sandbox: Chromium refuses to start when it cannot sandbox itself
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=CHROMIUM_S)
        except subprocess.TimeoutExpired:
            return f"chromium did not finish {url} within {CHROMIUM_S}s"
    if done.returncode == 0 and target.is_file() and target.read_bytes()[:8] == PNG:
        return ""
    lines = [line for line in done.stderr.splitlines() if "dbus" not in line and line.strip()]
    return lines[-1] if lines else f"chromium exited {done.returncode} without a screenshot"


def main() -> int:
    item = json.loads(sys.stdin.readline())
    url = item["data"].get("url")
    if not url:
        print('the item has no "url" in its data', file=sys.stderr)
        return 1
    folder = Path(os.environ.get("CAPTURE_DIR", "captures"))
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (re.sub(r"[^A-Za-z0-9._-]", "_", item["item"])[:100] + ".png")
    print(f"capturing {url}")  # plain output is kept on the run
    problem = capture(url, target)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    answer = {"screenshot": str(target), "bytes": target.stat().st_size}
    print(json.dumps({"ok": True, "data": answer}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
