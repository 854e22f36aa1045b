"""Where a study keeps its files: a local or NFS folder, or an object-store URI (s3://, gs://).

pyarrow's filesystem layer does the remote part (it ships with S3 and GCS clients); this
module adds only what a study needs on top: atomic writes, a path vocabulary and the study's
driver lock. A write is atomic on both kinds: locally a temporary file in the same folder
renamed over the target (``os.replace``), on an object store a single PUT, which readers see
whole or not at all.

It imports pyarrow, the standard library and the torch-free :mod:`mislas.atomic` (the project's
one atomic writer: temporary file, fsync, rename), never torch or Ray, so the report
(``python -m study.report``) opens the same locations as ``python -m study.run`` and still
imports no training code (``tests/study/reporting/test_outputs.py`` checks the rule).

``mock://`` URIs (pyarrow's in-memory file system, for tests) share one file system per
process, as ``s3://`` URIs share one bucket: two ``Store`` objects on the same mock URI see
the same files.
"""

from __future__ import annotations

import json
import os
import posixpath
import secrets
import socket
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from mislas.atomic import write_atomic as _write_atomic


class StorageError(ValueError):
    """A storage location that cannot be used (one line; the command-line edges exit 2 with it)."""


class LockHeld(StorageError):
    """The study's driver lock is held by a live driver (or one this host cannot check)."""


def is_uri(location: str) -> bool:
    """Whether ``location`` is a URI (a ``file://`` one counts as a local path)."""
    return "://" in location and not location.startswith("file://")


# --- atomic local writes ------------------------------------------------------------------

def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a local ``path`` atomically (:func:`mislas.atomic.write_atomic`)."""
    _write_atomic(path, data)


def write_problem(folder: str | os.PathLike[str]) -> str | None:
    """Say why nothing can be written in the local ``folder``, or None.

    Why nothing can be written in the local ``folder`` or below it, or None. Checked by
    writing (and removing) a probe file in the deepest folder that exists: its mode alone does
    not say (root writes where the mode forbids; a read-only mount refuses root too).
    """
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    if not path.is_dir():
        return f"{path} is a file, not a folder"
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=path)
    except OSError as exc:
        return f"cannot write in {path} ({exc.strerror or type(exc).__name__})"
    os.close(fd)
    os.unlink(probe)
    return None


def stamp() -> str:
    """A UTC time stamp for the names of files set aside (``.damaged-<stamp>``, ``.stale-<stamp>``)."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")


_MOCK_FS: dict[str, pafs.FileSystem] = {}  # one in-memory file system per process for mock:// URIs


def _filesystem(loc: str) -> tuple[pafs.FileSystem, str]:
    fs, root = pafs.FileSystem.from_uri(loc)
    if loc.startswith("mock:"):
        fs = _MOCK_FS.setdefault("mock", fs)
    return fs, root


class Store:
    """A root folder on some filesystem; all paths are relative to it, '/'-separated."""

    def __init__(self, location: str | os.PathLike[str]) -> None:
        loc = str(location)
        if loc.startswith("file://"):
            loc = loc[len("file://"):]
        self.location = loc
        if is_uri(loc):
            try:
                self.fs, self.root = _filesystem(loc)
            except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for bad URIs
                raise StorageError(f"cannot open {loc!r} ({type(exc).__name__}: {exc})") from None
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
        """Return the local path of ``parts``; ValueError on a store that is not local."""
        if not self.local:
            raise ValueError(f"{self.location} is not a local folder")
        return Path(self.path(*parts))

    def child(self, *parts: str) -> Store:
        """The folder ``parts`` below, on the same file system object (no new client)."""
        child = object.__new__(Store)
        child.location, child.local, child.fs = self.uri(*parts), self.local, self.fs
        child.root = self.path(*parts)
        return child

    # -- queries --------------------------------------------------------------------------
    def exists(self, *parts: str) -> bool:
        """Whether ``parts`` exists on the store."""
        return bool(self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound)

    def listdir(self, *parts: str) -> list[str]:
        """Return the sorted names in folder ``parts`` (none when it is not a folder)."""
        info = self.fs.get_file_info(self.path(*parts))
        if info.type != pafs.FileType.Directory:
            return []
        sel = pafs.FileSelector(self.path(*parts), allow_not_found=True)
        return sorted(posixpath.basename(i.path) for i in self.fs.get_file_info(sel))

    def walk_files(self, *parts: str) -> list[pafs.FileInfo]:
        """Every file below ``parts`` (one recursive listing: one request, or a few pages, on S3)."""
        sel = pafs.FileSelector(self.path(*parts), allow_not_found=True, recursive=True)
        return [i for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.File]

    def relative(self, path: str) -> str:
        """A path on :attr:`fs` relative to this store's root."""
        return posixpath.relpath(path, self.root)

    def mtime(self, *parts: str) -> datetime | None:
        """When the file was last written (None if absent or unknown)."""
        info = self.fs.get_file_info(self.path(*parts))
        return info.mtime if info.type == pafs.FileType.File else None

    def read_bytes(self, *parts: str) -> bytes:
        """Return the bytes of file ``parts``."""
        with self.fs.open_input_stream(self.path(*parts)) as fh:
            data: bytes = fh.read()
        return data

    # -- writes ---------------------------------------------------------------------------
    def makedirs(self, *parts: str) -> None:
        """Create folder ``parts`` and its parents."""
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

    def delete(self, *parts: str) -> None:
        """Remove a file (nothing if it is absent)."""
        try:
            self.fs.delete_file(self.path(*parts))
        except FileNotFoundError:
            pass

    def set_aside(self, suffix: str, *parts: str) -> str:
        """Rename a file to ``<name><suffix>`` beside it; return its new location.

        Rename a file to ``<name><suffix>`` beside it (a copy and a delete on an object
        store); returns the new location as a user would type it.
        """
        new = [*parts[:-1], parts[-1] + suffix]
        if self.local:
            os.replace(self.path(*parts), self.path(*new))
        else:
            self.write_bytes(self.read_bytes(*parts), *new)
            self.delete(*parts)
        return self.uri(*new)

    def upload(self, local: Path, *parts: str) -> None:
        """Copy the local file ``local`` to ``parts``, atomically."""
        self.write_bytes(Path(local).read_bytes(), *parts)

    def download(self, local: Path, *parts: str) -> None:
        """Copy file ``parts`` to the local path ``local``, atomically."""
        data = self.read_bytes(*parts)
        write_atomic(local, data)


# --- one driver per study -----------------------------------------------------------------

def _process_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()[19]


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    if started is not None:
        now = _process_start(pid)
        return now is None or now == started  # a different start time: the pid was reused
    return True


class StudyLock:
    """One driver per study: ``<study>/driver.lock`` holds ``{host, pid, started_at, ...}``.

    On a local or NFS folder the file is created with ``O_CREAT | O_EXCL``, which succeeds in
    one process only (NFSv3+ implements exclusive create on the server). A lock left by a
    driver that died on this host (its pid is gone, or now belongs to a process started
    later) is stale and is taken over: under a second exclusive file (``driver.lock.takeover``,
    so two new drivers cannot both take it) the stale lock is replaced by this driver's.
    A lock from another host cannot be checked from here: it is refused, naming the host,
    pid and file to delete if that driver is gone.

    On an object store (s3://, gs://) there is no exclusive create through pyarrow: the check
    and the write are two requests, so two drivers started within the same second may both
    get the lock. It still refuses any driver started while another is running.

    Released (deleted, if it is still this driver's) by :meth:`release` or on leaving the
    ``with`` block, exceptions and KeyboardInterrupt included. A SIGKILLed driver leaves it
    behind; the next driver on the same host takes it over.
    """

    FILE = "driver.lock"

    def __init__(self, store: Store, *, takeover_wait_s: float = 5.0) -> None:
        self.store = store
        self.takeover_wait_s = takeover_wait_s
        self.token = secrets.token_hex(8)
        self.held = False
        self.took_over: dict[str, Any] | None = None  # the stale lock this driver replaced

    def _record(self) -> bytes:
        pid = os.getpid()
        return json.dumps({"host": socket.gethostname(), "pid": pid, "pid_started": _process_start(pid),
                           "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           "token": self.token}).encode()

    def _read(self, *parts: str) -> dict[str, Any] | None:
        try:
            loaded = json.loads(self.store.read_bytes(*parts) or b"null")
        except (OSError, ValueError):
            return None
        return loaded if isinstance(loaded, dict) else None

    def _stale(self, holder: dict[str, Any] | None) -> bool:
        if holder is None or holder.get("host") != socket.gethostname():
            return False
        try:
            pid = int(holder["pid"])
        except (KeyError, TypeError, ValueError):
            return False
        return not _alive(pid, holder.get("pid_started"))

    def _refuse(self, holder: dict[str, Any] | None) -> LockHeld:
        where = self.store.uri(self.FILE)
        if holder is None:
            return LockHeld(f"study {self.store.uri()} is locked by another driver ({where} is being written or "
                            f"unreadable; if no driver runs, delete it)")
        return LockHeld(f"study {self.store.uri()} is being run by the driver pid {holder.get('pid')} on host "
                        f"{holder.get('host')} (since {holder.get('started_at')}); one driver per study: wait for "
                        f"it, or if it is gone delete {where}")

    def _create_local(self, name: str, data: bytes) -> bool:
        """Create ``name`` exclusively; False if it exists."""
        try:
            fd = os.open(self.store.path(name), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def acquire(self) -> StudyLock:
        """Take the lock; :class:`LockHeld` if a live driver holds it."""
        self.store.makedirs()
        mine = self._record()
        if not self.store.local:
            holder = self._read(self.FILE) if self.store.exists(self.FILE) else None
            if self.store.exists(self.FILE) and not self._stale(holder):
                raise self._refuse(holder)
            self.took_over = holder
            self.store.write_bytes(mine, self.FILE)
            self.held = True
            return self
        deadline = time.monotonic() + self.takeover_wait_s
        while True:
            if self._create_local(self.FILE, mine):
                self.held = True
                return self
            holder = self._read(self.FILE)
            if not self._stale(holder):
                raise self._refuse(holder)
            if self._take_over(holder, mine):
                self.took_over, self.held = holder, True
                return self
            if time.monotonic() > deadline:  # another driver is taking it over right now
                raise self._refuse(self._read(self.FILE))
            time.sleep(0.1)

    def _take_over(self, holder: dict[str, Any] | None, mine: bytes) -> bool:
        guard = f"{self.FILE}.takeover"
        if not self._create_local(guard, mine):
            # a takeover in progress, or one whose driver died in its few milliseconds
            info = self.store.fs.get_file_info(self.store.path(guard))
            if info.mtime is not None and time.time() - info.mtime.timestamp() > 60:
                self.store.delete(guard)
            return False
        try:
            if self._read(self.FILE) != holder:  # it changed meanwhile: evaluate it again
                return False
            write_atomic(self.store.path(self.FILE), mine)
            return True
        finally:
            self.store.delete(guard)

    def release(self) -> None:
        """Delete the lock if it is still this driver's."""
        if not self.held:
            return
        self.held = False
        holder = self._read(self.FILE)
        if holder is not None and holder.get("token") == self.token:
            self.store.delete(self.FILE)

    def describe_takeover(self) -> str | None:
        """One line about the stale lock this driver took over (None if there was none)."""
        t = self.took_over
        if t is None:
            return None
        return (f"took over the lock {self.store.uri(self.FILE)} of driver pid {t.get('pid')} on host "
                f"{t.get('host')} (started {t.get('started_at')}), which is no longer running")

    def __enter__(self) -> StudyLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
