"""Progress of long work (a bulk enqueue or retry, prune, backup, export) as a bar on a
terminal's stderr.

tqdm is imported only when stderr is a terminal: a pipe, a log or cron gets nothing, and
commands that show no bar never pay for the import.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any


class Progress:
    """`with Progress(total, "enqueue", "item") as bar: bar.advance(n)`"""

    def __init__(self, total: int | None, what: str, unit: str, shown: bool = True):
        self._bar: Any = None
        if shown and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=what, unit=unit, unit_scale=True, file=sys.stderr,
                             leave=False, dynamic_ncols=True)  # fmt: skip

    def advance(self, done: int) -> None:
        if self._bar is not None:
            self._bar.update(done)

    def reach(self, done: int, total: int) -> None:
        """`done` of `total` in all (work whose size is known only once it has begun)."""
        if self._bar is not None:
            if self._bar.total != total:
                self._bar.total = total
                self._bar.refresh()  # the size, as soon as it is known
            self._bar.update(done - self._bar.n)

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.close()
