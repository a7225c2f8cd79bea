"""The daemon's dead man's switch: when the daemon ends, however it ends, its workers end.

    python -m pipewarden._sentinel INSTANCE

Started by the daemon with a pipe on stdin that only the daemon holds, on which the
daemon writes "+PGID" as a worker starts and "-PGID" when it is gone. The pipe's end
comes when the daemon is gone, kill -9 included: then the process groups of the workers
still running (their leader still carrying the daemon's mark) get SIGKILL at once, and
every process carrying PIPEWARDEN_DAEMON=INSTANCE, or in a session such a process
leads, right after: a dead daemon's workers stop within milliseconds, not at its next
start. After a clean stop it finds nothing left and exits.
"""

from __future__ import annotations

import signal
import sys
import time

from pipewarden.containment import MARK_DAEMON, find_marked
from pipewarden.processes import environ, signal_group, signal_pids

ROUNDS = 50  # kill, then look again: a process may fork while it is being killed
PAUSE_S = 0.02


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m pipewarden._sentinel INSTANCE", file=sys.stderr)
        return 2
    instance = argv[1]
    groups: set[int] = set()
    for line in sys.stdin.buffer:  # ends when the daemon closes the pipe, or is gone
        (groups.add if line[:1] == b"+" else groups.discard)(int(line[1:]))
    for pgid in groups:  # the mark: a pid reused since is never hit
        if environ(pgid).get(MARK_DAEMON) == instance:
            signal_group(pgid, signal.SIGKILL)
    for _ in range(ROUNDS):
        doomed = find_marked(MARK_DAEMON, instance)
        if not doomed:
            break
        signal_pids(doomed, signal.SIGKILL)
        time.sleep(PAUSE_S)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
