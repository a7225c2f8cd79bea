"""An approved rule written into a rules file as a person would have written it.

ruamel.yaml's round-trip mode keeps every comment, blank line, key order and quoting of
the file; the new rule is appended to its `rules:` list in the style of the entries
there. The result is checked as the daemon would load it and must keep every line of the
old file, in order; only then it replaces the file, through a temporary file in the same
folder and a rename, so a reader (the daemon's hot reload) sees the old file or the new
one, never half of one.
"""

from __future__ import annotations

import difflib
import io
import os
import tempfile
from pathlib import Path

from pipewarden.errors import UsageError


def add_rule(path: Path, rule: dict[str, str]) -> list[str]:
    """Append `rule` to the rules file at `path`; returns the lines added."""
    new, added = with_rule(path, rule)
    replace(path, new)
    return added


def with_rule(path: Path, rule: dict[str, str]) -> tuple[str, list[str]]:
    """The rules file at `path` with `rule` appended, checked as the daemon would load it
    (nothing written yet), and the lines added."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap, CommentedSeq
    from ruamel.yaml.scalarstring import SingleQuotedScalarString

    try:
        old = path.read_text(encoding="utf-8") if path.exists() else ""
    except OSError as exc:
        raise UsageError(f"{path}: cannot read it: {exc.strerror}") from None
    yaml = YAML()  # round-trip
    yaml.preserve_quotes = True
    yaml.width = 4096  # never fold a long pattern
    yaml.indent(mapping=2, sequence=4, offset=2)
    document = yaml.load(old) if old.strip() else CommentedMap()
    if document is None:
        document = CommentedMap()
    if not isinstance(document, CommentedMap):
        raise UsageError(f"{path}: not a rules file (its top level is not a mapping)")
    rules = document.get("rules")
    if rules is None:
        rules = document["rules"] = CommentedSeq()
    if not isinstance(rules, CommentedSeq):
        raise UsageError(f"{path}: its `rules:` is not a list")
    entry = CommentedMap(rule)
    entry["match"] = SingleQuotedScalarString(rule["match"])  # a regex reads best quoted
    if rules and all(getattr(r, "fa", None) is not None and r.fa.flow_style() for r in rules):
        entry.fa.set_flow_style()  # the file writes one rule per line: so does this one
    rules.append(entry)
    buffer = io.StringIO()
    yaml.dump(document, buffer)
    new = buffer.getvalue()
    added = _only_added(old, new, path)
    _check_loads(path, new)
    return new, added


def _only_added(old: str, new: str, path: Path) -> list[str]:
    before, after = old.splitlines(), new.splitlines()
    added: list[str] = []
    for op, i1, _, j1, j2 in difflib.SequenceMatcher(
        a=before, b=after, autojunk=False
    ).get_opcodes():
        if op == "insert":
            added += after[j1:j2]
        elif op != "equal":
            raise UsageError(
                f"{path}:{i1 + 1}: writing the rule would change this file's existing lines —"
                " add the rule by hand (`pipewarden proposals show` prints it)"
            )
    return added


def _check_loads(path: Path, text: str) -> None:
    from pipewarden.rules import load_rules

    with tempfile.TemporaryDirectory() as folder:
        trial = Path(folder) / path.name
        trial.write_text(text, encoding="utf-8")
        load_rules([trial])  # a ConfigError names the line: nothing is written


def replace(path: Path, text: str) -> None:
    """`text` in place of the file, through a temporary file and a rename."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        if path.exists():
            os.chmod(temporary, path.stat().st_mode & 0o7777)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
