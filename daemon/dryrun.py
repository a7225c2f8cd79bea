"""What a bulk action would touch, for its `--dry-run`: the first SAMPLE items and a count,
read without changing anything: the store's lookups (store/sqlite/lookups.py), shaped as
a person reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipewarden.inputs import shown

if TYPE_CHECKING:
    from pipewarden.store import Store

SAMPLE = 20  # items listed by a dry run; the rest are counted


@dataclass(frozen=True)
class Preview:
    total: int
    sample: list[str]  # the first SAMPLE, as a person reads them

    def lines(self, head: str) -> list[str]:
        """`head` (which says how many), then the sample, a line each, and how many more."""
        lines = [head + (":" if self.sample else "")]
        lines += [f"  {name}" for name in self.sample]
        if self.total > len(self.sample):
            lines.append(f"  ... and {self.total - len(self.sample):,} more")
        return lines

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "sample": self.sample}


def retry_preview(
    store: Store, label: str, pipeline: str | None, stage: str | None, since: float | None
) -> Preview:
    """The items `retry --label` would requeue (as Store.requeue_by_label picks them)."""
    total, rows = store.labelled_failures(label, pipeline, stage, since, SAMPLE)
    return Preview(total, [f"{p}/{shown(k)} ({state} at {s})" for p, s, k, state in rows])


def prune_preview(store: Store, older_than: float) -> Preview:
    """The runs `prune` would delete (as Store.prune_batch picks them)."""
    total, rows = store.prunable_runs(older_than, SAMPLE)
    return Preview(total, [f"run {i[:8]} {p}/{s} {shown(k)} {st}" for i, p, s, k, st in rows])


def enqueue_preview(store: Store | None, pipeline: str, keys: Sequence[str]) -> dict[str, Preview]:
    """Of `keys`, which are new to the pipeline and which it knows (with their state)."""
    known = {} if store is None else store.known_keys(pipeline, keys)
    new = [key for key in dict.fromkeys(keys) if key not in known]
    return {
        "new": Preview(len(new), [shown(key) for key in new[:SAMPLE]]),
        "known": Preview(
            len(known), [f"{shown(k)} ({state})" for k, state in list(known.items())[:SAMPLE]]
        ),
    }


def listed(names: Sequence[str]) -> Preview:
    """A list already in hand (held items, halts), sampled the same way."""
    return Preview(len(names), [shown(name) for name in names[:SAMPLE]])
