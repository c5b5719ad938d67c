"""Errors a user can cause and fix. The CLI prints them as one line, without a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class TransferdetError(Exception):
    """Base class of every error that is the user's to fix (bad data, bad config, bad files)."""


class ConfigError(TransferdetError):
    """A config value is out of range or inconsistent with another key."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"config key '{key}' has value {value!r}; allowed: {allowed}")


class DataError(TransferdetError):
    """A dataset file is malformed; the message names the file (and line, where there is one)."""

    def __init__(self, path: str | Path, message: str, line: int | None = None) -> None:
        self.path, self.line = str(path), line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
