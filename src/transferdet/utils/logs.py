"""What a run prints and what it only logs: the terminal shows transferdet's own lines (progress, tables,
results) and other libraries' errors; everything, Lightning's notices and Python warnings included, goes to
the run directory's ``<task>.log``."""

from __future__ import annotations

import logging


class ConsoleFilter(logging.Filter):
    """Passes transferdet's records, and other loggers' errors (``conf/hydra/default.yaml`` uses it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("transferdet") or record.levelno >= logging.ERROR


def capture_warnings() -> None:
    """Python warnings (deprecations, Lightning's hints) become log records: into the log file, off the terminal."""
    logging.captureWarnings(True)


def duration(seconds: float) -> str:
    """Seconds as ``1h02m05s`` / ``1m05s`` / ``42s``."""
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"
