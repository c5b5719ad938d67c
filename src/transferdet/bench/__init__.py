"""Micro-benchmarks of library stages (``python -m transferdet.bench.<name>``); the model/runtime benchmark
is the ``benchmark`` task. Each prints a table and writes JSON; none is a test."""
