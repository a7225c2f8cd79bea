"""One place for time: wall time for records, monotonic time for durations and timeouts."""

from __future__ import annotations

import time


class Clock:
    def now(self) -> float:
        """UNIX seconds, for what is stored and shown."""
        return time.time()

    def monotonic(self) -> float:
        """Seconds that never jump, for durations."""
        return time.monotonic()
