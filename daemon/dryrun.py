"""What a bulk action would touch, for its `--dry-run`: the first SAMPLE items and a count,
read without changing anything. Functions of a Store (not Store methods), so they stay
out of the store's own module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipewarden.inputs import shown

if TYPE_CHECKING:
    from pipewarden.store import Store

SAMPLE = 20  # items listed by a dry run; the rest are counted
KEYS_PER_QUERY = 500  # keys looked up at once (SQLite's variable limit is far above)


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


def _label_filter(
    label: str, pipeline: str | None, stage: str | None, since: float | None
) -> tuple[str, list[Any]]:
    where = "last_label = ? AND state IN ('failed', 'retrying')"
    params: list[Any] = [label]
    for column, value in (("pipeline", pipeline), ("stage", stage)):
        if value is not None:
            where += f" AND {column} = ?"
            params.append(value)
    if since is not None:
        where += " AND updated_at >= ?"
        params.append(since)
    return where, params


def retry_preview(
    store: Store, label: str, pipeline: str | None, stage: str | None, since: float | None
) -> Preview:
    """The items `retry --label` would requeue (as Store.requeue_by_label picks them)."""
    where, params = _label_filter(label, pipeline, stage, since)
    conn = store.db.connection()
    total = conn.execute(f"SELECT COUNT(*) FROM items WHERE {where}", params).fetchone()[0]
    rows = conn.execute(
        f"SELECT pipeline, stage, key, state FROM items WHERE {where} ORDER BY id LIMIT ?",
        (*params, SAMPLE),
    ).fetchall()
    return Preview(total, [f"{p}/{shown(k)} ({state} at {s})" for p, s, k, state in rows])


def prune_preview(store: Store, older_than: float) -> Preview:
    """The runs `prune` would delete (as Store.prune_batch picks them)."""
    where = (
        "started_at < ? AND finished_at IS NOT NULL AND finished_at < ? AND status != 'running'"
        " AND EXISTS (SELECT 1 FROM runs AS newer WHERE newer.item_id = runs.item_id"
        " AND newer.started_at > runs.started_at AND newer.replay_of IS NULL)"
    )
    conn = store.db.connection()
    params = (older_than, older_than)
    total = conn.execute(f"SELECT COUNT(*) FROM runs WHERE {where}", params).fetchone()[0]
    rows = conn.execute(
        f"SELECT id, pipeline, stage, item_key, status FROM runs WHERE {where}"
        " ORDER BY started_at LIMIT ?",
        (*params, SAMPLE),
    ).fetchall()
    return Preview(total, [f"run {i[:8]} {p}/{s} {shown(k)} {st}" for i, p, s, k, st in rows])


def enqueue_preview(store: Store | None, pipeline: str, keys: Sequence[str]) -> dict[str, Preview]:
    """Of `keys`, which are new to the pipeline and which it knows (with their state)."""
    known: dict[str, str] = {}
    if store is not None:
        conn = store.db.connection()
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), KEYS_PER_QUERY):
            chunk = unique[start : start + KEYS_PER_QUERY]
            known |= dict(conn.execute(
                f"SELECT key, state FROM items WHERE pipeline = ? AND key IN"
                f" ({', '.join('?' * len(chunk))})", (pipeline, *chunk),
            ).fetchall())  # fmt: skip
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
