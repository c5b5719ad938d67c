"""Imported first by the warm CLI's forkserver (``tests/warm_cli.py``), never by pytest's own processes.

A real run imports a task's libraries inside the Hydra job, whose logging is configured by then: Lightning (like
others) adds a terminal handler of its own only when the root logger has none. The forkserver imports them with
this placeholder on the root logger; each run removes it before the CLI configures logging itself.
"""

import logging

PLACEHOLDER = logging.NullHandler()
logging.getLogger().addHandler(PLACEHOLDER)
