"""Where a study keeps its files: a local or NFS folder, or an object-store URI (s3://, gs://).

pyarrow's filesystem layer does the remote part (it ships with S3 and GCS clients); this
module adds only what a study needs on top: atomic writes and a path vocabulary. A write is
atomic on both kinds: locally a temporary file in the same folder renamed over the target
(``os.replace``), on an object store a single PUT, which readers see whole or not at all.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

import pyarrow.fs as pafs

from mislas.atomic import write_atomic
from mislas.errors import UsageError


def is_uri(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


class Store:
    """A root folder on some filesystem; all paths are relative to it, '/'-separated."""

    def __init__(self, location: str | os.PathLike[str]) -> None:
        loc = str(location)
        if loc.startswith("file://"):
            loc = loc[len("file://"):]
        self.location = loc
        if is_uri(loc):
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(loc)
            except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for bad URIs
                raise UsageError(f"--storage: cannot open {loc!r} ({type(exc).__name__}: {exc})") from None
            self.local = isinstance(self.fs, pafs.LocalFileSystem)
        else:
            self.fs = pafs.LocalFileSystem()
            self.root = str(Path(loc).expanduser().resolve())
            self.location = self.root
            self.local = True

    def __repr__(self) -> str:
        return f"Store({self.location!r})"

    def uri(self, *parts: str) -> str:
        """The location of ``parts`` as a user would type it (path or URI)."""
        if not parts:
            return self.location
        return posixpath.join(self.location, *parts) if not self.local else os.path.join(self.location, *parts)

    def path(self, *parts: str) -> str:
        """The location of ``parts`` on :attr:`fs`."""
        return posixpath.join(self.root, *parts) if parts else self.root

    def local_path(self, *parts: str) -> Path:
        if not self.local:
            raise ValueError(f"{self.location} is not a local folder")
        return Path(self.path(*parts))

    def child(self, *parts: str) -> Store:
        return Store(self.uri(*parts))

    # -- queries --------------------------------------------------------------------------
    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def listdir(self, *parts: str) -> list[str]:
        info = self.fs.get_file_info(self.path(*parts))
        if info.type != pafs.FileType.Directory:
            return []
        sel = pafs.FileSelector(self.path(*parts), allow_not_found=True)
        return sorted(posixpath.basename(i.path) for i in self.fs.get_file_info(sel))

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open_input_stream(self.path(*parts)) as fh:
            return fh.read()

    # -- writes ---------------------------------------------------------------------------
    def makedirs(self, *parts: str) -> None:
        self.fs.create_dir(self.path(*parts), recursive=True)

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Write atomically: readers see the old file or the new one, never a part."""
        target = self.path(*parts)
        parent = posixpath.dirname(target)
        if self.local:
            write_atomic(target, data)
        else:
            self.fs.create_dir(parent, recursive=True)
            with self.fs.open_output_stream(target) as fh:  # one PUT on close
                fh.write(data)

    def upload(self, local: Path, *parts: str) -> None:
        self.write_bytes(Path(local).read_bytes(), *parts)

    def download(self, local: Path, *parts: str) -> None:
        data = self.read_bytes(*parts)
        write_atomic(local, data)
