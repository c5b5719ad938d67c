"""Crash-safe file writing: every artefact is written under a temporary name and renamed when complete."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from transferdet.errors import ConfigError, DataError

# errors of writing that are the machine's state, not a bug: one clear line instead of a traceback
WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# temporary files and folders are created private (0600 / 0700); what is renamed into place gets the modes a
# plain open() / mkdir() would give under the user's umask, so a shared model is readable as the user intends
UMASK = _umask()
FILE_MODE, FOLDER_MODE = 0o666 & ~UMASK, 0o777 & ~UMASK


def resolved(path: str | Path, key: str) -> Path:
    """``path`` made absolute with its symbolic links resolved; a link loop is a ConfigError naming ``key``."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as err:  # Python 3.11 raises RuntimeError for a symlink loop
        raise ConfigError(key, str(path), f"a path without a symbolic-link loop ({err})") from None


def check_replaceable(folder: Path, key: str, ours: Callable[[Path], bool], what: str) -> None:
    """A folder that a writer replaces as a whole must be absent, empty, or one this toolkit wrote (``ours``):
    a user's folder named by mistake is refused, never deleted."""
    if not folder.exists():
        return
    if folder.is_dir() and (not any(folder.iterdir()) or ours(folder)):
        return
    kind = "folder" if folder.is_dir() else "file"
    raise ConfigError(
        key,
        str(folder),
        f"a folder that does not exist, is empty, or holds {what} (it is replaced "
        f"as a whole; this {kind} holds something else and is left untouched)",
    )


def make_folder(folder: Path) -> None:
    """``mkdir -p`` whose failure (a file in the way, no permission) is one clear error naming the folder."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        where = f" ({err.filename} is in the way)" if isinstance(err, (FileExistsError, NotADirectoryError)) else ""
        raise DataError(folder, f"cannot create this folder: {err.strerror}{where}") from None


def write_failure(path: Path, err: OSError) -> DataError:
    """A failed write (disk full, file too large, read-only, no permission) as one clear DataError."""
    why = {
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "no permission to write there",
        errno.EPERM: "no permission to write there",
    }.get(err.errno, "is the disk full, or a file size limit set?")
    return DataError(path, f"cannot be written: {err.strerror} ({why}); nothing was left under this name")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    make_folder(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, FILE_MODE)
        os.close(fd)
    except OSError as err:  # a read-only file system, no permission, no space
        raise write_failure(path, err) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # a writer may have replaced the file (its mode with it)
            os.chmod(tmp_path, FILE_MODE)
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
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.chmod(tmp, FOLDER_MODE)
    except OSError as err:
        raise write_failure(path, err) from None
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
