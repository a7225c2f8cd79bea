"""Rule packs: shipped rule files for the errors of the field, named in the config.

A pack is `rules/packs/NAME.yaml` in the checkout, installed as package data of
`pipewarden.shipped_rules`. The config names it among its rule files as `pack:NAME`
(`rules: [rules/*.yaml, pack:http, pack:net]`); it is then read from the installed
package, so upgrading pipewarden upgrades the pack. rules/README.md is the policy
every pack follows; a pack file's first line reads `# pack:NAME — what it covers`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

PREFIX = "pack:"
# The order to name them in, most specific first: a pack for one service or tool claims
# its own messages before the generic http, net and os packs see them (first match wins).
ORDER = ("browser", "smtp", "email", "sms", "llm", "android", "database", "media", "http",
         "net", "os")  # fmt: skip


def shipped_rules_dir() -> Path:
    """rules/ of the checkout, installed as the data package pipewarden.shipped_rules."""
    spec = importlib.util.find_spec("pipewarden.shipped_rules")
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else Path(__file__).resolve().parent.parent / "rules"


def packs_dir() -> Path:
    return shipped_rules_dir() / "packs"


def pack_names() -> list[str]:
    """The shipped packs, in ORDER (any pack it does not name comes last)."""
    names = {path.stem for path in packs_dir().glob("*.yaml")}
    return [n for n in ORDER if n in names] + sorted(names - set(ORDER))


def pack_path(name: str) -> Path | None:
    """The file of pack `name`, or None when no such pack is shipped."""
    path = packs_dir() / f"{name}.yaml"
    return path if name in pack_names() else None


def shown_name(path: Path) -> str | None:
    """`pack:NAME` for a shipped pack's file (how rule ids name it), else None."""
    in_packs = path.parent.resolve() == packs_dir().resolve() and path.suffix == ".yaml"
    return f"{PREFIX}{path.stem}" if in_packs else None


@dataclass(frozen=True)
class PackInfo:
    name: str
    summary: str  # from the file's first line, "# pack:NAME — what it covers"
    rules: int
    halts: int


def describe(name: str) -> PackInfo:
    """A pack's one-line summary and its rule and halt counts (it is loaded, so checked)."""
    from pipewarden.rules import load_rules

    path = packs_dir() / f"{name}.yaml"
    ruleset = load_rules([path])
    first = path.read_text(encoding="utf-8").partition("\n")[0]  # "# pack:NAME — summary"
    summary = first.partition(" — ")[2].strip()
    return PackInfo(name, summary, len(ruleset.rules), len(ruleset.halts))
