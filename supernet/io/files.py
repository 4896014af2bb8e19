"""Atomic file writes: a reader sees the old file or the complete new one, never a torn one.

Every result, checkpoint and plot the project writes goes through :func:`atomic_write`: the bytes
go to a temporary file beside the target, are flushed to disk, and the file is renamed over the
target (``os.replace`` is atomic on POSIX and Windows within one file system).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import torch

__all__ = ["atomic_save", "atomic_write", "atomic_write_text", "new_file_mode", "previous_path"]


def new_file_mode() -> int:
    """The mode ``open()`` would give a new file under the current umask (mkstemp's is owner-only)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def previous_path(path: str | Path) -> Path:
    """Where ``keep_previous`` keeps the file a write replaced (``checkpoint.pt`` -> ``checkpoint.prev.pt``)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any], *, keep_previous: bool = False) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, and rename it over ``path``.

    With ``keep_previous`` the file it replaces is first renamed to :func:`previous_path`, so one
    good copy survives even if the newest is later damaged. On any error the temporary file is
    removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(handle, new_file_mode())
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        if keep_previous and path.exists():
            os.replace(path, previous_path(path))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def atomic_save(payload: Any, path: str | Path, *, keep_previous: bool = False) -> None:
    """``torch.save(payload)`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda file: torch.save(payload, file), keep_previous=keep_previous)
