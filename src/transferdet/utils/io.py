"""Crash-safe file writing: every artefact is written under a temporary name and renamed when complete."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transferdet.errors import DataError

# errors of writing that are the machine's state, not a bug: one clear line instead of a traceback
WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}


def make_folder(folder: Path) -> None:
    """``mkdir -p`` whose failure (a file in the way, no permission) is one clear error naming the folder."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        where = f" ({err.filename} is in the way)" if isinstance(err, (FileExistsError, NotADirectoryError)) else ""
        raise DataError(folder, f"cannot create this folder: {err.strerror}{where}") from None


def write_failure(path: Path, err: OSError) -> DataError:
    """A failed write (disk full, file too large, read-only) as one clear DataError."""
    return DataError(
        path,
        f"cannot be written: {err.strerror} (is the disk full, or a file size limit set?); "
        "nothing was left under this name",
    )


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    make_folder(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as err:
        if err.errno in WRITE_ERRNOS:
            raise write_failure(path, err) from None
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a text file complete or not at all."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as stable JSON (sorted keys, fixed indentation) so equal data gives equal bytes."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces ``path`` as a whole.

    A reader never sees a half-written directory: either the old one or the complete new one.
    """
    path = Path(path)
    make_folder(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        try:
            yield tmp
        except OSError as err:
            if err.errno in WRITE_ERRNOS:
                raise write_failure(path, err) from None
            raise
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "previous")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, in hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
