"""Issue 15's commands. `pipewarden templates FILE|-`: the template miner over a file of
error texts, one per line, with no daemon and no store, so anyone can check the grouping on
their own logs. `pipewarden proposals [list|show|approve|reject]`: the rules proposed for the
frequent templates of unmatched failures, and a person's decision on each; approve writes
the rule into a rules file of the config (the daemon's hot reload picks it up).

Imports stay cheap: the miner and the store are imported when a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pipewarden.cli.shared import AS_JSON, COMMON, load_config, open_store, who
from pipewarden.errors import UsageError

if TYPE_CHECKING:
    from pipewarden.proposals import Proposal

EXAMPLES = 3  # distinct example texts shown under each template


def register(commands: argparse._SubParsersAction) -> None:
    help = "group error texts (one per line) into templates, as the daemon would"
    sub = commands.add_parser("templates", help=help, description=help)
    sub.add_argument("file", metavar="FILE", help="a file of error texts, or - for standard input")
    sub.add_argument(
        "--json", action="store_true",
        help='one object per non-empty input line, in order: {"line": N, "template_id": ..., '
        '"template": ...}',
    )  # fmt: skip
    sub.set_defaults(handler=_cmd_templates)
    _register_proposals(commands)


def _register_proposals(commands: argparse._SubParsersAction) -> None:
    help = "rules proposed for frequent unmatched failures: list, show, approve, reject"
    proposals = commands.add_parser(
        "proposals", help=help, description=help, parents=[COMMON, AS_JSON]
    )
    proposals.add_argument("--state", choices=("pending", "approved", "rejected", "superseded"),
                           help="only proposals in this state (default: all)")  # fmt: skip
    proposals.set_defaults(handler=_cmd_proposals_list)
    actions = proposals.add_subparsers(title="commands", metavar="COMMAND")
    listing = actions.add_parser(
        "list", help="every proposal, newest last", parents=[COMMON, AS_JSON]
    )
    listing.add_argument("--state", choices=("pending", "approved", "rejected", "superseded"))
    listing.set_defaults(handler=_cmd_proposals_list)
    show = actions.add_parser(
        "show", help="one proposal: regex, examples, counts", parents=[COMMON, AS_JSON]
    )
    show.add_argument("id", type=int)
    show.set_defaults(handler=_cmd_proposals_show)
    approve = actions.add_parser(
        "approve", help="write the proposed rule into a rules file", parents=[COMMON, AS_JSON]
    )
    approve.add_argument("id", type=int)
    approve.add_argument("--label", help="the rule's label (default: the one proposed)")
    approve.add_argument(
        "--group",
        choices=("retriable", "terminal", "ignore", "defer"),
        help="default: the one proposed",
    )
    approve.add_argument("--category", help="default: the one proposed")
    approve.add_argument("--match", help="the regex, edited (default: the one proposed)")
    approve.add_argument(
        "--file", help="the rules file to add it to, one the config reads, relative to the"
        " config's folder (default: the config's last rules file in its own folder)",
    )  # fmt: skip
    approve.set_defaults(handler=_cmd_proposals_approve)
    reject = actions.add_parser(
        "reject", help="no rule for this template", parents=[COMMON, AS_JSON]
    )
    reject.add_argument("id", type=int)
    reject.set_defaults(handler=_cmd_proposals_reject)


def _cmd_templates(args: argparse.Namespace) -> int:
    from pipewarden.templates import Miner

    lines = _read_lines(args.file)
    miner = Miner()
    placed = [(n, miner.add(text)) for n, text in enumerate(lines, 1) if text.strip()]
    if args.json:
        for n, cluster in placed:
            final = cluster.current()
            row = {"line": n, "template_id": final.id, "template": final.template}
            print(json.dumps(row, ensure_ascii=False))
        return 0
    examples: dict[int, list[str]] = {}
    for n, cluster in placed:
        shown = examples.setdefault(cluster.current().id, [])
        text = lines[n - 1].strip()
        if len(shown) < EXAMPLES and text not in shown:
            shown.append(text)
    live = sorted(miner.live(), key=lambda c: (-c.count, c.id))
    for cluster in live:
        print(f"{cluster.count:>7}  #{cluster.id}  {cluster.template}")
        for text in examples.get(cluster.id, []):
            print(f"{'':>9}e.g. {text}")
    print(f"{len(placed)} texts, {len(live)} templates")
    return 0


def _read_lines(where: str) -> list[str]:
    """The lines of a file, or of standard input for '-'; bytes that are not UTF-8 are
    replaced, as a log may hold anything."""
    try:
        raw = sys.stdin.buffer.read() if where == "-" else Path(where).read_bytes()
    except OSError as exc:
        raise UsageError(f"templates {where}: cannot read it: {exc.strerror}") from None
    return raw.decode("utf-8", errors="replace").splitlines()


# -- proposals -------------------------------------------------------------------------
def _cmd_proposals_list(args: argparse.Namespace) -> int:
    import time

    from pipewarden import proposals

    store = open_store(load_config(args))
    try:
        proposals.refresh(store, time.time())
        found = proposals.listed(store, args.state)
        if args.json:
            print(json.dumps([p.as_dict() for p in found], indent=2))
            return 0
        for p in found:
            total = proposals.counts(store, p.template_id, time.time())["all"]
            print(f"#{p.id:<4} {p.state:<10} {total:>6}  {p.label} ({p.group}, {p.category})")
            print(f"{'':>6}{p.template}")
        if not found:
            print("no proposals: a template needs 5 unmatched failures in 7 days")
    finally:
        store.close()
    return 0


def _cmd_proposals_show(args: argparse.Namespace) -> int:
    import time

    from pipewarden import proposals

    store = open_store(load_config(args))
    try:
        proposal = proposals.get(store, args.id)
        counted = proposals.counts(store, proposal.template_id, time.time())
    finally:
        store.close()
    if args.json:
        print(json.dumps(proposal.as_dict() | {"counts": counted}, indent=2))
        return 0
    _print_proposal(proposal, counted)
    return 0


def _print_proposal(p: Proposal, counted: dict) -> None:
    decided = f" by {p.decided_by}" if p.decided_by else ""
    print(f"proposal  #{p.id} ({p.state}{decided})")
    print(f"template  {p.template}")
    print(f"match     {p.pattern}")
    print(f"label     {p.label}\ngroup     {p.group}\ncategory  {p.category}")
    stages = ", ".join(f"{stage} {n}" for stage, n in counted["per_stage"].items())
    print(f"counts    {counted['all']} in all, {counted['last_24h']} in the last 24 h ({stages})")
    for text in p.examples:
        print(f"e.g.      {text}")


def _cmd_proposals_approve(args: argparse.Namespace) -> int:
    import time

    from pipewarden import proposals

    config = load_config(args)
    store = open_store(config)
    try:
        edits = {"label": args.label, "group": args.group, "category": args.category,
                 "pattern": args.match}  # fmt: skip
        target, added, tried = proposals.approve(
            store, config, args.id, who(), time.time(), args.file, **edits
        )
    finally:
        store.close()
    print("\n".join(tried.lines("in the last 7 days, with the rule")))
    print(f"{target}: added")
    print("\n".join(added))
    return 0


def _cmd_proposals_reject(args: argparse.Namespace) -> int:
    import time

    from pipewarden import proposals

    store = open_store(load_config(args))
    try:
        proposals.decide(store, args.id, "rejected", who(), time.time())
    finally:
        store.close()
    print(f"proposal #{args.id} rejected")
    return 0
