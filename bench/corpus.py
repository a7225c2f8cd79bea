"""How much of the corpus of real error texts (tests/corpus/) the rule packs label.

    python bench/corpus.py

Per pack: the share of its corpus file's messages that get a label (not Unknown), and
the share that get the expected group, with that pack alone and with every pack in
scope (in packs.ORDER, as `pipewarden init` names them); then the same for the whole
corpus, and for the shipped demo rules alone (what a new user had before the packs).
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipewarden import packs
from pipewarden.classifier import Classifier
from pipewarden.rules import load_rules
from pipewarden.types import Group
from ruamel.yaml import YAML

REPO = Path(__file__).resolve().parent.parent


def corpus() -> dict[str, list[tuple[str, str]]]:
    """pack -> [(message, expected group)]"""
    found: dict[str, list[tuple[str, str]]] = {}
    for path in sorted((REPO / "tests" / "corpus").glob("*.yaml")):
        for kind in YAML(typ="safe").load(path.read_text(encoding="utf-8")):
            found.setdefault(path.stem, []).extend((m, kind["group"]) for m in kind["messages"])
    return found


def shares(classifier: Classifier, cases: list[tuple[str, str]]) -> tuple[float, float]:
    results = [(classifier.classify(m), group) for m, group in cases]
    labelled = sum(r.group is not Group.UNKNOWN for r, _ in results)
    right = sum(r.group.value == group for r, group in results)
    return 100 * labelled / len(cases), 100 * right / len(cases)


def main() -> int:
    cases = corpus()
    pack_file = {name: packs.packs_dir() / f"{name}.yaml" for name in packs.pack_names()}
    every = Classifier(load_rules(list(pack_file.values())))
    print("| pack | messages | labelled, alone | right group, alone | labelled, every pack"
          " | right group, every pack |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name in packs.pack_names():
        alone = shares(Classifier(load_rules([pack_file[name]])), cases[name])
        together = shares(every, cases[name])
        print(f"| {name} | {len(cases[name])} | {alone[0]:.0f} % | {alone[1]:.0f} % | "
              f"{together[0]:.0f} % | {together[1]:.0f} % |")  # fmt: skip
    everything = [case for name in packs.pack_names() for case in cases[name]]
    labelled, right = shares(every, everything)
    print(f"| **all** | {len(everything)} | | | **{labelled:.0f} %** | **{right:.0f} %** |")
    shipped = Classifier(load_rules(sorted((REPO / "rules").glob("*.yaml"))))
    labelled, right = shares(shipped, everything)
    print(f"| shipped demo rules only | {len(everything)} | | | {labelled:.0f} % | {right:.0f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
