"""``python -m transferdet`` is the same as the ``transferdet`` command."""

from transferdet.cli import main

main()
