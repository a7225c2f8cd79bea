"""The exceptions pipewarden raises on purpose.

PipewardenError
├── ConfigError        a config or rules file is wrong; carries file, line, column
├── StoreError         the state store cannot be opened or is from a newer version
└── UsageError         a command's arguments are wrong (the CLI exits 2)
"""

from __future__ import annotations

from pathlib import Path


class PipewardenError(Exception):
    """Root of every error pipewarden raises on purpose; its text is meant for a person."""


class ConfigError(PipewardenError):
    def __init__(self, path: str | Path, line: int, column: int, problem: str, fix: str = ""):
        self.path = str(path)
        self.line = line
        self.column = column
        self.problem = problem
        self.fix = fix
        where = f"{self.path}:{line}:{column}" if line else self.path
        super().__init__(f"{where}: {problem}" + (f" — {fix}" if fix else ""))


class StoreError(PipewardenError):
    pass


class UsageError(PipewardenError):
    pass
