"""`pipewarden templates FILE|-`: the template miner over a file of error texts, one per line,
with no daemon and no store, so anyone can check the grouping on their own logs.

Imports stay cheap: the miner is imported when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipewarden.errors import UsageError

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
