"""Atomic file writes: readers see the old file or the new one, never a part.

The project's one atomic file writer; imports nothing heavy (no torch), so the study's
storage and results code can use it without loading PyTorch.

A write goes to a temporary file in the target's folder, is flushed and fsynced, and is then
renamed over the target: readers see the old file or the new one, never a part, and a crash
mid-write leaves the previous file intact. The file gets the mode a plain ``open`` would
give under the process's umask (``mkstemp`` alone would make it 0600, unreadable to
teammates on a shared NFS folder).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike[str], data: bytes | Callable[[BinaryIO], object]) -> None:
    """Write ``data`` (bytes, or a callable that writes to the open binary file) to ``path`` atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if isinstance(data, bytes):
                fh.write(data)
            else:
                data(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """:func:`write_atomic` for UTF-8 text."""
    write_atomic(path, text.encode("utf-8"))
