"""The templates mined from failures no rule matched, their member runs, and the rules
proposed for them (template_feed.py writes the templates, proposals.py the proposals).

The same SQL on both backends (PostgreSQL runs it through its translated connection),
but for a new row's id, which PostgreSQL gives back with RETURNING (postgres/proposals.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipewarden.store.sqlite.base import Connected

PROPOSAL_COLUMNS = (
    "id, template_id, template, state, pattern, label, group_name, category, examples,"
    " created_at, decided_at, decided_by, rules_file"
)


class Proposals(Connected):
    # -- templates ---------------------------------------------------------------------------
    def templates(self) -> list[tuple[int, str, int]]:
        """(id, template, count) of every stored template, oldest first."""
        return self._conn.execute(
            "SELECT id, template, count FROM templates ORDER BY id"
        ).fetchall()

    def merge_template(self, into: int, gone: int) -> None:
        """The members of template `gone` (which the miner merged) now belong to `into`."""
        self._conn.execute(
            "UPDATE template_runs SET template_id = ? WHERE template_id = ?", (into, gone)
        )
        self._conn.execute("DELETE FROM templates WHERE id = ?", (gone,))

    def add_template(self, template: str, count: int, seen: float) -> int:
        """A new template; its id."""
        cursor = self._conn.execute(
            "INSERT INTO templates (template, count, first_seen, last_seen) VALUES (?, ?, ?, ?)",
            (template, count, seen, seen),
        )
        return cursor.lastrowid or 0

    def update_template(self, template_id: int, template: str, count: int, seen: float) -> None:
        self._conn.execute(
            "UPDATE templates SET template = ?, count = ?,"
            " last_seen = CASE WHEN last_seen > ? THEN last_seen ELSE ? END WHERE id = ?",
            (template, count, seen, seen, template_id),
        )

    def add_template_runs(self, members: Sequence[tuple[str, int, str, str, float]]) -> None:
        """(run id, template id, pipeline, stage, seen at) of runs a template now holds."""
        self._conn.executemany(
            "INSERT INTO template_runs (run_id, template_id, pipeline, stage, seen_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET"
            " template_id = excluded.template_id, pipeline = excluded.pipeline,"
            " stage = excluded.stage, seen_at = excluded.seen_at",
            members,
        )

    def frequent_templates(self, since: float, min_count: int) -> list[tuple[int, str]]:
        """(id, template) of templates with at least `min_count` members seen since `since`
        (counting stops there)."""
        return self._conn.execute(
            "SELECT t.id, t.template FROM templates t WHERE (SELECT count(*) FROM (SELECT 1"
            " FROM template_runs m WHERE m.template_id = t.id AND m.seen_at >= ? LIMIT ?)"
            " AS members) >= ?",
            (since, min_count, min_count),
        ).fetchall()

    def latest_templates(self, limit: int) -> list[int]:
        """The ids of the `limit` templates seen most recently."""
        rows = self._conn.execute(
            "SELECT id FROM templates ORDER BY last_seen DESC LIMIT ?", (limit,)
        ).fetchall()
        return [template_id for (template_id,) in rows]

    def template_errors(self, template_id: int, limit: int) -> list[str | None]:
        """The errors of the template's latest `limit` member runs still stored, newest first."""
        rows = self._conn.execute(
            "SELECT r.error FROM template_runs m JOIN runs r ON r.id = m.run_id"
            " WHERE m.template_id = ? ORDER BY m.seen_at DESC LIMIT ?",
            (template_id, limit),
        ).fetchall()
        return [error for (error,) in rows]

    def template_counts(self, template_id: int, since: float) -> tuple[int, int, dict[str, int]]:
        """The template's members in all, those seen since `since`, and per pipeline/stage."""
        total, recent = self._conn.execute(
            "SELECT count(*), coalesce(sum(CASE WHEN seen_at >= ? THEN 1 ELSE 0 END), 0)"
            " FROM template_runs WHERE template_id = ?",
            (since, template_id),
        ).fetchone()
        stages = self._conn.execute(
            "SELECT pipeline || '/' || stage, count(*) FROM template_runs WHERE template_id = ?"
            " GROUP BY pipeline, stage ORDER BY count(*) DESC",
            (template_id,),
        ).fetchall()
        return int(total), int(recent), dict(stages)

    # -- proposals ---------------------------------------------------------------------------
    def current_proposal(self, template_id: int) -> tuple[int, str, str] | None:
        """(id, template, state) of the template's latest proposal not superseded."""
        return self._conn.execute(
            "SELECT id, template, state FROM proposals WHERE template_id = ? AND state !="
            " 'superseded' ORDER BY id DESC LIMIT 1",
            (template_id,),
        ).fetchone()

    def add_proposal(self, fields: dict[str, Any]) -> None:
        """A new proposal: `fields` are its columns (names from code, never from input)."""
        names = sorted(fields)
        self._conn.execute(
            f"INSERT INTO proposals ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
            [fields[name] for name in names],
        )

    def update_proposal(self, proposal_id: int, fields: dict[str, Any]) -> None:
        """Set the proposal's columns `fields` (names from code, never from input)."""
        assignments = ", ".join(f"{name} = ?" for name in fields)
        self._conn.execute(
            f"UPDATE proposals SET {assignments} WHERE id = ?", (*fields.values(), proposal_id)
        )

    def proposals(self, state: str | None = None) -> list[tuple]:
        """PROPOSAL_COLUMNS of every proposal (in `state`), oldest first."""
        where, args = ("WHERE state = ?", (state,)) if state else ("", ())
        return self._conn.execute(
            f"SELECT {PROPOSAL_COLUMNS} FROM proposals {where} ORDER BY id", args
        ).fetchall()

    def proposal(self, proposal_id: int) -> tuple | None:
        """PROPOSAL_COLUMNS of one proposal, or None."""
        return self._conn.execute(
            f"SELECT {PROPOSAL_COLUMNS} FROM proposals WHERE id = ?", (proposal_id,)
        ).fetchone()
