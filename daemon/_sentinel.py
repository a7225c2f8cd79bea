"""The daemon's dead man's switch: when the daemon ends, however it ends, its workers end.

    python -m pipewarden._sentinel INSTANCE BOARD_FD

Started by the daemon with a pipe on stdin that only the daemon holds, and the board on
which the daemon keeps its workers' process groups (`groupboard.py`). The pipe's end
comes when the daemon is gone, kill -9 included: then the process groups on the board
(their leader still carrying the daemon's mark) get SIGKILL at once, and
every process carrying PIPEWARDEN_DAEMON=INSTANCE, or in a session such a process
leads, right after: a dead daemon's workers stop within milliseconds, not at its next
start. After a clean stop it finds nothing left and exits.
"""

from __future__ import annotations

import signal
import sys
import time

from pipewarden.containment import MARK_DAEMON, find_marked
from pipewarden.groupboard import read_board
from pipewarden.processes import environ, signal_group, signal_pids

ROUNDS = 50  # kill, then look again: a process may fork while it is being killed
PAUSE_S = 0.02


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m pipewarden._sentinel INSTANCE BOARD_FD", file=sys.stderr)
        return 2
    instance, board = argv[1], int(argv[2])
    while sys.stdin.buffer.read(4096):  # ends when the daemon closes the pipe, or is gone
        pass
    for pgid in read_board(board):  # the mark: a pid reused since is never hit
        if environ(pgid).get(MARK_DAEMON) == instance:
            signal_group(pgid, signal.SIGKILL)
    found_none = 0
    for _ in range(ROUNDS):
        doomed = find_marked(MARK_DAEMON, instance)
        signal_pids(doomed, signal.SIGKILL)
        found_none = 0 if doomed else found_none + 1
        if found_none == 2:  # twice: a process in the middle of an execve reads unmarked once
            break
        time.sleep(PAUSE_S)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
