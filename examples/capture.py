#!/usr/bin/env python3
"""A command worker for the demo `capture` stage: one process per item.

It reads the item as one JSON line on stdin and behaves as its data says, so the
demo shows every way an attempt can end. It reports through its exit code and
stderr, as any script in any language could.
"""

import json
import os
import subprocess
import sys
import time

item = json.loads(sys.stdin.readline())
attempt = int(os.environ["PIPEWARDEN_ATTEMPT"])
behaviour = item["data"].get("behaviour", "ok")
print(f"capturing {item['data']['url']} (attempt {attempt})")  # plain output is kept on the run

if behaviour == "rate_limit_once" and attempt == 1:
    sys.exit("Request failed with status code 429 (Too Many Requests)")
if behaviour == "eacces":
    sys.exit("EACCES: permission denied, open '/run/media/store/shots/capture.png'")
if behaviour == "crash":
    sys.exit(3)  # no output at all: pipewarden still records "exit code 3, no output"
if behaviour == "hang" and attempt == 1:
    # A hung browser that started a child of its own: the watchdog kills both.
    subprocess.Popen(["sleep", "600"])
    time.sleep(600)

time.sleep(0.2)
print(json.dumps({"ok": True, "data": {"screenshot": f"shots/{item['item']}.png"}}))
