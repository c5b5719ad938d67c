"""Imported last by the warm CLI's forkserver (``tests/warm_cli.py``): the import path the preloads left.

Some packages add a folder of their own to ``sys.path`` when imported (ONNX Runtime's ``transformers`` tools,
which its quantizer imports). multiprocessing sets each forked run's ``sys.path`` back to pytest's, while the
modules stay imported: each run adds back what the preloads added, as a process that imported them has it.
"""

import sys

PATH = list(sys.path)
