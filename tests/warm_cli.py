"""``transferdet ARGS`` in a process forked from a warm one (multiprocessing's forkserver) that imported the
CLI, every task and their libraries once: the code path of ``python -m transferdet ARGS`` (sys.argv, exit
status, stdout, stderr, files, exit handlers), without the 5 to 10 s of imports each fresh interpreter pays.

The suite's CLI runs go through it (``run_cli`` and ``start_cli`` in ``tests/conftest.py``); a run that depends on
how the process starts (Ctrl-C, a file-size limit, DDP re-launching the command, import-time output, unseeded
state) runs a fresh interpreter instead (``run_cli(..., fresh=True)``).
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import sys
import tempfile
import traceback
from pathlib import Path

from transferdet import cli

# what a run imports, every task and command of the CLI's tables: the forkserver imports it once, each run's
# process is a fork of it
PRELOAD = [
    "tests.warm_preload",  # first: what the imports below see of logging
    "tests.warm_cli",
    "transferdet.cli",
    *(entry.target.split(":")[0] for entry in (*cli.TASKS.values(), *cli.COMMANDS.values())),
    "tests.warm_done",  # last: the import path the preloads left
]

_CONTEXT: list = []


def _context():
    if not _CONTEXT:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        _CONTEXT.append(ctx)
    return _CONTEXT[0]


def _exit_status(err: SystemExit) -> int:
    """The status the interpreter gives ``sys.exit(code)``: None 0, an int itself, anything else printed, 1."""
    if err.code is None:
        return 0
    if isinstance(err.code, int):
        return err.code
    print(err.code, file=sys.stderr)
    return 1


def _run(args: list[str], cwd: str, env: dict[str, str], out: str, err: str) -> None:
    """In the forked process: become ``python -m transferdet ARGS`` in ``cwd`` with ``env``, output to files."""
    from tests.warm_done import PATH
    from tests.warm_preload import PLACEHOLDER

    logging.getLogger().removeHandler(PLACEHOLDER)
    sys.path.extend(p for p in PATH if p not in sys.path)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fds, path in (((1, 2), out),) if out == err else (((1,), out), ((2,), err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for fd in fds:
            os.dup2(target, fd)
        os.close(target)
    if env.get("PYTHONUNBUFFERED"):  # as python -u: each write reaches the file at once
        for stream in (sys.stdout, sys.stderr):
            stream.reconfigure(line_buffering=True, write_through=True)
    sys.argv = [str(Path(cli.__file__).with_name("__main__.py")), *args]
    try:
        cli.main()
        status = 0
    except SystemExit as exit_:
        status = _exit_status(exit_)
    except BaseException:  # what the interpreter does with an uncaught exception
        traceback.print_exc()
        status = 1
    atexit._run_exitfuncs()  # logging.shutdown and the rest, as at the interpreter's exit
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def start_warm(args: list[str], cwd: Path, env: dict[str, str], out: Path, err: Path | None = None):
    """Start ``transferdet ARGS`` in a fork of the warm process, stdout to ``out`` and stderr to ``err`` (default
    ``out`` too); the multiprocessing Process, to wait for (``join``) or kill."""
    for path in (out, err or out):  # there from the start, as with Popen(stdout=open(...))
        Path(path).touch()
    proc = _context().Process(target=_run, args=(list(args), str(cwd), dict(env), str(out), str(err or out)))
    proc.start()
    return proc


def run_warm(args: list[str], cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``transferdet ARGS`` run in a fork of the warm process."""
    with tempfile.TemporaryDirectory(prefix="warm-cli-") as tmp:
        out, err = Path(tmp, "stdout"), Path(tmp, "stderr")
        proc = start_warm(args, cwd, env, out, err)
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            proc.join()
            raise TimeoutError(f"transferdet {' '.join(args)} ran past {timeout} s")
        return proc.exitcode, _text(out), _text(err)


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""
