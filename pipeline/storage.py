"""Durable writes: flush before announcing, prove a directory takes a write, and say a full or read-only disk in one
line (`WriteError`) with the path and the space needed. Standard library only, so the CLIs can check their outputs
before they import torch."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


class WriteError(OSError):
    """A run, merge or eval output could not be written (full disk, read-only directory); the message is one line."""

    def __str__(self) -> str:
        return str(self.strerror)


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


FULL_OR_READ_ONLY = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


def write_failed(path: Path, exc: BaseException, needed: int | None = None) -> WriteError | None:
    """The one-line error for a failed write into `path` when the disk is full or read-only (what the system said,
    the free space, the space needed); None when the failure is something else (a bug, a bad file). torch.save and
    safetensors do not raise OSError on a full disk, so their failures are judged by the directory itself."""
    where = path
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    full = isinstance(exc, OSError) and exc.errno in FULL_OR_READ_ONLY
    full = full or (needed is not None and free < needed) or not _takes_a_write(where)
    if not full:
        return None
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0][:200]
    need = f", about {_size(needed)} needed" if needed else ""
    return WriteError(errno.ENOSPC, f"{path}: cannot write ({reason}); {_size(free)} free there{need}")


def _takes_a_write(directory: Path) -> bool:
    probe = directory / f".write-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError:
        return False
    return True


def check_space(directory: Path, needed: int) -> None:
    """Make `directory` and prove it takes a write and has `needed` bytes free; WriteError (one line) otherwise."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(exc.errno, f"{directory}: cannot create it ({exc.strerror}); write elsewhere") from exc
    if not _takes_a_write(directory):
        raise WriteError(errno.EROFS, f"{directory}: does not take a write (read-only?); write elsewhere")
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise WriteError(
            errno.ENOSPC,
            f"{directory}: {_size(free)} free, about {_size(needed)} needed; free some space or write elsewhere",
        )


def fsync_tree(root: Path) -> None:
    """Flush every file under `root` (or `root` itself), then the directories bottom-up, so that a marker or rename
    that announces them is never on disk before they are."""
    if not root.is_dir():
        fsync_path(root)
        return
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            fsync_path(Path(dirpath) / name)
        fsync_path(Path(dirpath))


def fsync_path(path: Path) -> None:
    """Flush one file, or one directory's entries (a rename into it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
