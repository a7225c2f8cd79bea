"""The daemon's place in a fleet sharing one PostgreSQL store: its lease and its wake-ups.

Each daemon runs as host:pid (every run it starts names it) and heartbeats every few
seconds; any daemon finds the ones silent past the lease (`lease:`, 30 s by default) and
recovers their runs, killing first what they left running on this host. A daemon that
finds itself declared dead stops: its runs are already someone else's to redo. On SQLite
(one daemon per store) only the name is kept: runs name it, nothing else changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from pipewarden import faults
from pipewarden.processes import Identity, proc_stat

log = logging.getLogger("pipewarden.daemon")

LEASE_S = 30.0
HEARTBEAT_MAX_S = 5.0  # a dead daemon is found within its lease and this


def join(store: Any, lease_s: float, global_caps: dict[str, int]) -> None:
    """Name the daemon in the store (and, shared, take its place in the fleet, whose
    global_concurrency the store's claims enforce)."""
    host, pid = socket.gethostname(), os.getpid()
    if store.kind == "sqlite":
        store.daemon = f"{host}:{pid}"
        return
    store.global_caps = dict(global_caps)
    store.join_fleet(host, pid, time.time(), lease_s)


async def keep(
    store: Any, lease_s: float, hold_stages: set[tuple[str, str]],
    stop: Callable[[str], None],
) -> None:  # fmt: skip
    """Heartbeat, and recover the fleet's dead daemons' runs, until cancelled."""
    every = min(lease_s / 3, HEARTBEAT_MAX_S)
    while True:
        await asyncio.sleep(every)
        alive = faults.unless_waiting(store, store.heartbeat)
        if alive is False:
            log.error("this daemon (%s) was found dead by the fleet: its runs were"
                      " recovered elsewhere; stopping", store.daemon)  # fmt: skip
            stop("lease lost")
            return
        _kill_groups([Identity(*row) for row in store.running_processes()])
        recovered = faults.unless_waiting(
            store, lambda: store.recover_dead(time.time(), hold_stages, "")
        )
        for run in recovered or ():
            log.warning(
                "recovered run %s (%s/%s %s) of a daemon that stopped heartbeating: %s",
                run.run_id[:8], run.pipeline, run.stage, run.item_key,
                "held for a person (on_interrupt: hold)" if run.held else "requeued",
            )  # fmt: skip


def _kill_groups(leftovers: list[Identity]) -> None:
    """SIGKILL the process groups a dead daemon's runs recorded on this host, each only if
    its leader is still the same process (same start time). Not containment's sweep by
    state dir: that would take this daemon's own workers too."""
    for identity in leftovers:
        stat = proc_stat(identity.pid)
        if stat is not None and stat.start == identity.start:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(identity.pgid, signal.SIGKILL)


def leave(store: Any) -> None:
    if store.kind != "sqlite":
        faults.unless_waiting(store, store.leave_fleet)
