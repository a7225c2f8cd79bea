"""How the benches that time a command start it: as a person's shell does, on an installed
pipewarden, whose modules' bytecode is compiled once and cached.

Some sandboxes and CI set PYTHONDONTWRITEBYTECODE, and then every start compiles every
module from source again (30-50 ms of `pipewarden enqueue` here), which no installed copy
does: pip compiles a package's bytecode as it installs it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def shell_env() -> dict[str, str]:
    """This process's environment, with Python's bytecode cache on."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def warm(command: list[str], cwd: Path | None = None) -> None:
    """Run `command` once untimed, so that the bytecode it needs is cached."""
    subprocess.run(command, cwd=cwd, env=shell_env(), check=True, capture_output=True)
