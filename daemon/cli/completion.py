"""Shell completion: `pipewarden completion bash|zsh` prints the script (shtab writes it from
the parser itself, so a new command or option is completed with no change here); the names a
person types — pipelines, stages, channels, labels, halted targets — are asked of the hidden
`pipewarden _complete KIND`, which reads them from the config and the store as they are now."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from pipewarden.cli.shared import COMMON, EXIT_OK, add_command, load_config, open_store

if TYPE_CHECKING:
    from pipewarden.config import Config
    from pipewarden.store import Storage

SHELLS = ("bash", "zsh")
KINDS = ("pipelines", "stages", "stage-names", "channels", "labels", "halts")

# Which names an argument takes, by its dest; `--stage` is pipeline/stage where a hold is
# placed on it, the stage's own name where runs and items are filtered by it.
_BY_DEST = {"pipeline": "pipelines", "channel": "channels", "label": "labels", "target": "halts"}
_QUALIFIED_STAGE = {"pause", "resume"}

# The shell side: each kind a function that runs `pipewarden _complete KIND` (with the
# --config already typed on the line) and offers its lines. Names may hold spaces (labels).
_BASH = """
_pipewarden_names() {  # $1: the kind, $2: the word typed so far
  local i config=()
  for ((i = 1; i < ${#COMP_WORDS[@]} - 1; i++)); do
    [[ ${COMP_WORDS[i]} == --config ]] && config=(--config "${COMP_WORDS[i+1]}")
  done
  local name
  while IFS= read -r name; do
    [[ $name == "$2"* ]] && printf '%q\\n' "$name"
  done < <(PW_COMMAND _complete "$1" "${config[@]}" 2>/dev/null)
}
"""
_ZSH = """
_pipewarden_names() {  # $1: the kind
  local -a names config
  local i=${words[(I)--config]}
  (( i > 0 && i < $#words )) && config=(--config "${words[i+1]}")
  names=(${(f)"$(PW_COMMAND _complete $1 $config 2>/dev/null)"})
  compadd -a names
}
"""


def register(commands: argparse._SubParsersAction) -> None:
    completion = add_command(
        commands, "completion", _cmd_completion,
        "print the shell completion script (e.g. pipewarden completion bash > "
        "~/.local/share/bash-completion/completions/pipewarden)",
    )  # fmt: skip
    completion.add_argument("shell", choices=SHELLS)
    # No help: kept out of `--help` and out of the completion of command names.
    names = commands.add_parser("_complete", parents=[COMMON])
    names.add_argument("kind", choices=KINDS)
    names.set_defaults(handler=_cmd_complete)


def _cmd_completion(args: argparse.Namespace) -> int:
    import shtab
    from pipewarden.cli import build_parser
    from pipewarden.cli.setup import this_pipewarden

    parser = build_parser()
    _attach_completers(parser, ())
    preamble = {"bash": _BASH, "zsh": _ZSH}[args.shell]
    preamble += "".join(_shell_function(args.shell, kind) for kind in KINDS)
    script = shtab.complete(parser, args.shell, preamble=preamble.replace(
        "PW_COMMAND", this_pipewarden()))  # fmt: skip
    print(script)
    return EXIT_OK


def _function_name(kind: str) -> str:
    return f"_pipewarden_{kind.replace('-', '_')}"


def _shell_function(shell: str, kind: str) -> str:
    word = ' "$1"' if shell == "bash" else ""
    return f"{_function_name(kind)}() {{ _pipewarden_names {kind}{word}; }}\n"


def _attach_completers(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
    """Give every argument that takes a known name its completer, command by command."""
    import shtab

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                _attach_completers(sub, (*path, name))
        elif action.dest == "config":
            action.complete = shtab.FILE  # type: ignore[attr-defined]
        elif kind := _kind_of(action.dest, path):
            function = _function_name(kind)
            action.complete = {"bash": function, "zsh": function}  # type: ignore[attr-defined]


def _kind_of(dest: str, path: tuple[str, ...]) -> str | None:
    if dest == "stage":
        return "stages" if path and path[0] in _QUALIFIED_STAGE else "stage-names"
    if dest == "target" and path != ("halts", "clear"):
        return None
    return _BY_DEST.get(dest)


def _cmd_complete(args: argparse.Namespace) -> int:
    """The names of one kind, a line each; nothing (and exit 0) where there is no config."""
    try:
        config = load_config(args)
    except Exception:  # a shell completing must never see an error: it offers nothing
        return EXIT_OK
    try:
        store = open_store(config, must_exist=True, read_only=True)
    except Exception:  # no store to read (another daemon on the port, a damaged file, ...):
        store = None  # the config's names are still offered
    try:
        names = known_names(config, store, args.kind)
    finally:
        if store is not None:
            store.close()
    if names:
        print("\n".join(names))
    return EXIT_OK


def known_names(config: Config, store: Storage | None, kind: str) -> list[str]:
    from pipewarden.known import known_channels, known_labels

    stages = [(p.name, s.name) for p in config.pipelines.values() for s in p.stages]
    if kind == "pipelines":
        return sorted(config.pipelines)
    if kind == "stages":
        return [f"{pipeline}/{stage}" for pipeline, stage in stages]
    if kind == "stage-names":
        return sorted({stage for _, stage in stages})
    if kind == "channels":
        return known_channels(config, store)
    if kind == "labels":
        return known_labels(store)
    holds = store.active_holds() if store is not None else []
    return sorted({hold.target for hold in holds if hold.kind == "halt"})
