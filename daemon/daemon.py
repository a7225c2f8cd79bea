"""The daemon's life: lock the state dir, recover from an unclean stop, run, drain.

Signal handlers only set flags or wake the loop; the loop acts and says why.
SIGTERM / SIGINT: stop claiming, let in-flight runs finish within the drain grace,
interrupt and requeue the rest, exit 0. SIGUSR1: something was enqueued, look now.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
from pathlib import Path

from pipewarden.classifier import Classifier
from pipewarden.clock import Clock
from pipewarden.config import Config
from pipewarden.lock import DaemonLock
from pipewarden.rules import RuleSet
from pipewarden.scheduler import Scheduler
from pipewarden.store import Store

log = logging.getLogger("pipewarden.daemon")

RECOVERED_REASON = "daemon stopped while running"


def detect_code_ref(directory: Path) -> str | None:
    """The code version runs are recorded against: $PIPEWARDEN_CODE_REF or the git commit."""
    if ref := os.environ.get("PIPEWARDEN_CODE_REF"):
        return ref
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=directory, capture_output=True, text=True, timeout=2, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


class Daemon:
    def __init__(self, config: Config, rules: RuleSet, clock: Clock | None = None):
        self.config = config
        self.rules = rules
        self.clock = clock or Clock()
        self._stop = asyncio.Event()
        self._stop_reason = ""
        self._scheduler: Scheduler | None = None

    def request_stop(self, reason: str) -> None:
        if not self._stop.is_set():
            log.info("%s: stopping — no new claims, draining running attempts", reason)
            self._stop_reason = reason
        self._stop.set()
        if self._scheduler is not None:
            self._scheduler.wake()

    async def run(self, until_idle: bool = False) -> int:
        lock = DaemonLock(self.config.state_dir)
        self.config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock.acquire()
        store = Store(self.config.state_dir)
        try:
            self._recover(store)
            scheduler = Scheduler(
                self.config,
                store,
                Classifier(self.rules),
                self.clock,
                detect_code_ref(self.config.path.parent),
            )
            self._scheduler = scheduler
            self._install_signal_handlers(scheduler)
            log.info(
                "pipewarden running: %d pipeline(s), %d rule(s), store %s",
                len(self.config.pipelines), len(self.rules.rules), store.path,
            )  # fmt: skip
            for warning in self.rules.warnings:
                log.warning("rules: %s", warning)
            await scheduler.run(self._stop, until_idle=until_idle)
            reason = (
                f"daemon stopping ({self._stop_reason or 'done'}): interrupted after drain grace"
            )
            await scheduler.drain(self.config.drain_grace_s, reason)
            log.info("stopped cleanly")
            return 0
        finally:
            self._remove_signal_handlers()
            store.close()
            lock.release()

    def _recover(self, store: Store) -> None:
        hold = {
            (p.name, s.name)
            for p in self.config.pipelines.values()
            for s in p.stages
            if s.on_interrupt == "hold"
        }
        for run in store.recover_interrupted(self.clock.now(), hold, RECOVERED_REASON):
            log.warning(
                "recovered run %s (%s/%s %s) left running by a stopped daemon: %s",
                run.run_id[:8], run.pipeline, run.stage, run.item_key,
                "held for a person (on_interrupt: hold)" if run.held else "requeued",
            )  # fmt: skip

    def _install_signal_handlers(self, scheduler: Scheduler) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop, signal.Signals(signum).name)
        loop.add_signal_handler(signal.SIGUSR1, scheduler.wake)

    def _remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            loop.remove_signal_handler(signum)
