"""A content-addressed store of finished Stage-1 models, shared by trials and by studies.

The key is a hash of what determines the Stage-1 weights: the data (its fingerprint: data
set, β, n_max, data seed, split lists), the whole Stage-1 recipe (arch, epochs, schedule,
mixup on/off and α, ...), the training seed, the batch pipeline and the mislas version. Layout under ``<storage>/stage1/<key>/``:

* ``stage1.pt``     the checkpoint (mislas.checkpoint format; checked again when loaded)
* ``metrics.json``  the Stage-1 model's own val/test summary
* ``key.json``      the inputs of the key, readable
* ``trainings.jsonl`` one line per time this entry was trained (host, pid, wall time)
* ``done.json``     written last: the entry is complete; holds the sha256 and size of ``stage1.pt``

Nothing damaged is trusted: an entry is reused only if its ``stage1.pt`` matches the sha256
in ``done.json`` (checked once per process and file; a truncated or altered file fails). An
entry that fails is named in one line, its ``stage1.pt`` and ``done.json`` are set aside
(renamed ``.damaged-<stamp>``) and it is trained again. Entries written before the sha256
was recorded are reused unchecked (their checkpoint is still checked when loaded).

* ``stage1.partial.pt`` while it trains: the last finished epoch (an object store gets a copy
  after each epoch), from which an interrupted training resumes

Who trains: the study's Stage-1 phase (:mod:`study.stage1_phase`) before any trial starts;
trials then only read entries. Concurrency: on a local or NFS folder the entry's ``.lock``
(``filelock``) serialises the trainers, so a second trainer of the same key waits for the
first and then reuses its entry. Training happens in the entry's folder, so a retry resumes
an interrupted Stage 1 from ``stage1.partial.pt``. On an object store (s3://, gs://), which has no locks, the
lock is node-local and the artifact is uploaded when done: trials on one node wait for each
other; two nodes starting the same entry at the same moment may both train it (the second
upload is the same content and harmless). Put the storage on NFS to rule that out.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock

from mislas.config import RunConfig
from study.storage import Store, stamp

CHECKPOINT = "stage1.pt"
PARTIAL = "stage1.partial.pt"  # an interrupted training's last epoch (mislas.stage1.fit_stage1)
DONE = "done.json"
HISTORY = "trainings.jsonl"
TrainFn = Callable[[Path], Mapping[str, Any]]
_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, checked in this process


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_problem(folder: Path) -> str | None:
    """Say why a cached Stage-1 checkpoint does not match its record, or None.

    Why ``folder/stage1.pt`` does not match ``folder/done.json`` (None: it does, or done.json
    predates the sha256).
    """
    try:
        done = json.loads((folder / DONE).read_text())
    except (OSError, ValueError) as exc:
        return f"{DONE} does not read back ({type(exc).__name__})"
    want = done.get("sha256") if isinstance(done, dict) else None
    if want is None:
        return None
    path = folder / CHECKPOINT
    try:
        st = path.stat()
    except OSError:
        return f"{CHECKPOINT} is missing"
    if done.get("size") is not None and st.st_size != done["size"]:
        return f"{CHECKPOINT} has {st.st_size} bytes, {DONE} recorded {done['size']}"
    key = (str(path), st.st_size, st.st_mtime_ns)
    got = _VERIFIED.get(key) or file_sha256(path)
    if got != want:
        return f"{CHECKPOINT} does not match the sha256 in {DONE}"
    _VERIFIED[key] = got
    return None


def stage1_key(data_fingerprint: str, cfg: RunConfig, workers: int = 1) -> tuple[str, dict[str, Any]]:
    """The cache key (24 hex digits) and the inputs it hashes.

    ``workers``: data-parallel processes that train it; a run over N > 1 of them (per-rank BN
    statistics and mixup draws) gives other weights than one process, so N is part of the key
    (left out for 1, so single-process keys stay what they were).

    ``stage1.pretrained`` is a file location, not a recipe choice, so it is left out (the
    checkpoint's own compatibility check ignores it as well). The batch pipeline
    (``data.loader``: device-resident fast path or DataLoader draws augmentations differently)
    and the mislas version are in: they change the weights a recipe produces.
    """
    import mislas

    stage1 = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg.stage1).items() if k != "pretrained"}
    inputs = {
        "dataset": cfg.data.dataset,
        "imb_factor": cfg.data.imb_factor,
        "data_fingerprint": data_fingerprint,
        "stage1": stage1,
        "seed": cfg.seed,
        "mixup": cfg.stage1.mixup,
        "loader": getattr(cfg.data, "loader", None),
        "mislas_version": mislas.__version__,
    }
    if workers != 1:
        inputs["workers"] = workers
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:24]
    return f"{cfg.data.dataset}-{'mixup' if cfg.stage1.mixup else 'plain'}-s{cfg.seed}-{digest}", inputs


@dataclass(frozen=True)
class Stage1Entry:
    """A finished Stage-1 cache entry: its key, the local checkpoint and what it recorded."""
    key: str
    checkpoint: Path  # a local file
    metrics: dict[str, Any]
    trained: bool  # this call trained it
    wait_s: float  # time spent waiting for another trainer's lock
    train_s: float  # time this call spent training (0 when reused)
    workers: int | None = 1  # data-parallel processes that trained it (None: not known, e.g. a given file)


class Stage1Cache:
    """``get_or_train`` returns a finished Stage 1, training it at most once per key."""

    def __init__(self, location: str | os.PathLike[str] | Store, local_dir: str | os.PathLike[str] | None = None,
                 *, lock_timeout: float = -1) -> None:
        self.store = location if isinstance(location, Store) else Store(location)
        base = Path(local_dir) if local_dir else Path(tempfile.gettempdir()) / "mislas-study-stage1"
        self.local_dir = base
        self.lock_timeout = lock_timeout

    def entry_dir(self, key: str) -> Path:
        """Where the entry's files are on this machine (the store itself if it is local)."""
        return self.store.local_path(key) if self.store.local else self.local_dir / key

    def is_done(self, key: str) -> bool:
        """Whether the entry ``key`` has finished (its done.json exists)."""
        return self.store.exists(key, DONE)

    def is_reusable(self, key: str) -> bool:
        """Whether the entry ``key`` can be used as it is.

        Done, and (on a local or NFS store) its checkpoint matches the recorded sha256; an
        object store's copy is checked when a node fetches it.
        """
        if not self.is_done(key):
            return False
        return not self.store.local or checkpoint_problem(self.store.local_path(key)) is None

    def trainings(self, key: str) -> list[dict[str, Any]]:
        """The recorded trainings of an entry (one per actual Stage-1 training)."""
        if not self.store.exists(key, HISTORY):
            return []
        return [json.loads(line) for line in self.store.read_bytes(key, HISTORY).decode().splitlines() if line]

    def get_or_train(self, key: str, inputs: Mapping[str, Any], train: TrainFn, *, workers: int = 1) -> Stage1Entry:
        """Return the entry for ``key``, training it first if it is missing.

        The entry for ``key``; ``train(folder)`` must write ``folder/stage1.pt`` and return metrics
        (``workers``: how many data-parallel processes it trains with, recorded).
        """
        local = self.entry_dir(key)
        local.mkdir(parents=True, exist_ok=True)
        if self.store.local and (local / DONE).exists() and checkpoint_problem(local) is None:  # fast path, no lock
            return self._entry(key, local, trained=False, wait_s=0.0, train_s=0.0)
        t0 = time.perf_counter()
        with FileLock(str(local / ".lock"), timeout=self.lock_timeout):
            wait_s = time.perf_counter() - t0
            if (local / DONE).exists():
                if (problem := checkpoint_problem(local)) is None:
                    return self._entry(key, local, trained=False, wait_s=wait_s, train_s=0.0)
                # on an object store only this node's copy is set aside: the stored one may be whole
                self._set_aside(key, local, problem, stored=self.store.local)
            if not self.store.local and self.is_done(key):
                for name in (CHECKPOINT, "metrics.json", DONE):
                    self.store.download(local / name, key, name)
                if (problem := checkpoint_problem(local)) is None:
                    return self._entry(key, local, trained=False, wait_s=wait_s, train_s=0.0)
                self._set_aside(key, local, problem, stored=True)
            started = datetime.now(timezone.utc).isoformat()
            t1 = time.perf_counter()
            metrics = dict(train(local))
            train_s = time.perf_counter() - t1
            if not (local / CHECKPOINT).exists():
                raise RuntimeError(f"Stage-1 training for {key} did not write {local / CHECKPOINT}")
            record = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": started, "wall_s": train_s,
                      "workers": workers}
            self._publish(key, local, inputs, metrics, record)
            return self._entry(key, local, trained=True, wait_s=wait_s, train_s=train_s)

    def pull_partial(self, key: str, local: Path) -> None:
        """An object store's copy of an interrupted training's ``stage1.partial.pt``, if this node lacks one."""
        if not self.store.local and not (local / PARTIAL).exists() and self.store.exists(key, PARTIAL):
            self.store.download(local / PARTIAL, key, PARTIAL)

    def push_partial(self, key: str, local: Path) -> None:
        """Upload this epoch's partial Stage-1 checkpoint to an object store.

        Upload this epoch's ``stage1.partial.pt`` to an object store, so that a Stage 1 killed
        with its node resumes on another one (a local or NFS store already holds the file).
        """
        if not self.store.local and (local / PARTIAL).exists():
            self.store.upload(local / PARTIAL, key, PARTIAL)

    def _set_aside(self, key: str, local: Path, problem: str, *, stored: bool) -> None:
        """Set a finished entry that does not read back aside.

        A finished entry that does not read back: rename its checkpoint and done.json (this
        node's copy; with ``stored``, the store's too) so that it is fetched or trained again;
        one line says so.
        """
        suffix = f".damaged-{stamp()}"
        for name in (CHECKPOINT, DONE):
            if (local / name).exists():
                os.replace(local / name, local / f"{name}{suffix}")
        if stored and not self.store.local:
            for name in (CHECKPOINT, DONE):
                if self.store.exists(key, name):
                    self.store.set_aside(suffix, key, name)
        where = self.store.uri(key) if stored else str(local)
        then = "training it again" if stored else "fetching it again"
        print(f"[study] Stage-1 cache entry {where}: {problem} (truncated or damaged); set aside as "
              f"{CHECKPOINT}{suffix}, {then}", file=sys.stderr, flush=True)

    def _publish(self, key: str, local: Path, inputs: Mapping[str, Any], metrics: Mapping[str, Any],
                 record: Mapping[str, Any]) -> None:
        history = b""
        if self.store.exists(key, HISTORY):
            history = self.store.read_bytes(key, HISTORY)
        history += (json.dumps(record) + "\n").encode()
        if not self.store.local:
            self.store.upload(local / CHECKPOINT, key, CHECKPOINT)
        self.store.write_bytes(json.dumps(dict(metrics), indent=2).encode(), key, "metrics.json")
        self.store.write_bytes(json.dumps(dict(inputs), indent=2, sort_keys=True).encode(), key, "key.json")
        self.store.write_bytes(history, key, HISTORY)
        checkpoint = local / CHECKPOINT
        done = json.dumps({"key": key, **dict(record), "finished_at": datetime.now(timezone.utc).isoformat(),
                           "sha256": file_sha256(checkpoint), "size": checkpoint.stat().st_size}).encode()
        self.store.write_bytes(done, key, DONE)
        if not self.store.local:
            (local / "metrics.json").write_text(json.dumps(dict(metrics)))
            (local / DONE).write_bytes(done)

    @staticmethod
    def _entry(key: str, local: Path, *, trained: bool, wait_s: float, train_s: float) -> Stage1Entry:
        metrics = json.loads((local / "metrics.json").read_text()) if (local / "metrics.json").exists() else {}
        try:
            done = json.loads((local / DONE).read_text())
        except (OSError, ValueError):
            done = {}
        workers = done.get("workers", 1) if isinstance(done, dict) else 1  # entries before it was recorded: 1
        return Stage1Entry(key, local / CHECKPOINT, metrics, trained, wait_s, train_s, workers)
