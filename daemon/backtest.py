"""Rules replayed over the stored failures before anyone trusts them (the fail2ban-regex
habit, on history): what would change, as "1,234 runs from Unknown → Browser crashed
(retriable)". The same replay re-buckets history (`pipewarden reclassify`).

Each distinct failure text (per pipeline, stage and exception type) is classified once,
as the daemon would classify it now; stores repeat texts, so a million failures are a few
thousand classifications. A run's exception is replayed as the type it recorded: an
exception rule naming a base class of the worker's own exception (which the daemon saw in
the reported chain) matches the run only where the type is one of Python's builtins.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipewarden.errors import UsageError

if TYPE_CHECKING:
    from pipewarden.config import Config
    from pipewarden.rules import RuleSet
    from pipewarden.store import Storage
    from pipewarden.store.records import Relabel


@dataclass(frozen=True)
class Move:
    """Runs that would leave one label for another."""

    runs: int
    from_label: str
    from_group: str
    to_label: str
    to_group: str

    def line(self) -> str:
        return f"{self.runs:,} runs from {self.from_label} → {self.to_label} ({self.to_group})"


@dataclass(frozen=True)
class Replay:
    failures: int  # stored failures replayed
    texts: int  # distinct texts among them, each classified once
    relabels: list[Relabel]  # the texts whose classification would change
    moves: list[Move]  # the same, summed by (from, to), largest first

    @property
    def changed(self) -> int:
        return sum(move.runs for move in self.moves)

    def lines(self, since_text: str) -> list[str]:
        head = f"{self.failures:,} stored failures {since_text} ({self.texts:,} distinct texts)"
        if not self.moves:
            return [head, "no run would change its label"]
        return [f"{head}; {self.changed:,} would change:", *(m.line() for m in self.moves)]

    def as_dict(self) -> dict:
        return {"failures": self.failures, "texts": self.texts, "changed": self.changed,
                "moves": [m.__dict__ for m in self.moves]}  # fmt: skip


def replay(store: Storage, ruleset: RuleSet, since: float | None) -> Replay:
    from pipewarden.classifier import Classifier
    from pipewarden.store.records import Relabel

    classifier = Classifier(ruleset)
    texts = store.failure_texts(since)
    relabels: list[Relabel] = []
    moved: Counter[tuple[str, str, str, str]] = Counter()
    for text in texts:
        found = classifier.classify(
            text.error, pipeline=text.pipeline, stage=text.stage,
            exception_types=(text.error_type,) if text.error_type else (),
        )  # fmt: skip
        if (found.group.value, found.label) == (text.group, text.label):
            continue
        relabels.append(Relabel(text, found.group.value, found.label, found.category,
                                found.type, found.rule_id))  # fmt: skip
        moved[(text.label, text.group, found.label, found.group.value)] += text.runs
    moves = [Move(n, *key) for key, n in moved.most_common()]
    return Replay(sum(t.runs for t in texts), len(texts), relabels, moves)


def replay_edited(
    store: Storage, config: Config, edited: dict[Path, str], since: float | None
) -> Replay:
    """`replay` of the config's rules with some of its files' text edited (not yet saved)."""
    import tempfile

    from pipewarden.rules import load_rules

    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for n, path in enumerate(config.rule_paths):
            if path in edited:
                (Path(folder) / str(n)).mkdir()
                trial = Path(folder) / str(n) / path.name
                trial.write_text(edited[path], encoding="utf-8")
                path = trial
            paths.append(path)
        return replay(store, load_rules(paths, config.path.parent), since)


def rules_with(config_paths: tuple[Path, ...], edited: list[Path]) -> list[Path]:
    """The config's rule files with each edited FILE in the place of the one of the same
    name (`/tmp/sites.yaml` for `rules/sites.yaml`); one named like none of them is read
    after them."""
    by_name: dict[str, Path] = {}
    for path in edited:
        if not path.is_file():
            raise UsageError(f"{path}: no such rules file")
        if path.name in by_name:
            raise UsageError(f"{path}: two files named {path.name} given — give one")
        by_name[path.name] = path.resolve()
    chosen = [by_name.pop(path.name, path) for path in config_paths]
    return chosen + list(by_name.values())
