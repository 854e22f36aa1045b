"""``describe``: what a data set holds (counts, class splits, bad images) as plain JSON data.

With ``check_files`` every image the list splits name is opened and decoded by the loader
training uses (torchvision's ``default_loader``: PIL, converted to RGB), on a thread pool,
so a data set that would crash a training run mid-epoch is caught before it starts.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from PIL import UnidentifiedImageError
from torchvision.datasets.folder import default_loader

from mislas.data.registry import load_dataset
from mislas.data.types import FileListSplit, LTData
from mislas.splits import class_splits

MAX_MISSING_LISTED = 100
"""``missing_files`` and ``undecodable_files`` list at most this many images each; the
``*_count`` fields count them all."""

PROGRESS_EVERY_S = 10.0
"""``python -m mislas describe --check-files`` prints a progress line on stderr this often."""

_CHUNK = 256  # images per pool task (bounds the futures held for a 438k-image list)


def listed_images(data: LTData) -> list[str]:
    """Paths (``root/rel``) of every image the list splits name, train, val, test order, each once.

    iNat's train and val come from one list, and a test list may repeat val; array splits
    have no files.
    """
    paths: list[str] = []
    for split in (data.train, data.val, data.test):
        if isinstance(split, FileListSplit):
            root = str(split.root)
            paths.extend(os.path.join(root, rel) for rel in split.paths)
    return list(dict.fromkeys(paths))


def _reason(exc: Exception, path: str) -> str:
    """A short, path-free reason why ``path`` does not decode."""
    if isinstance(exc, UnidentifiedImageError):
        return "cannot identify image file"  # PIL's message ends with the file object's repr
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror  # e.g. "Permission denied"
    text = " ".join(str(exc).replace(repr(path), "").replace(path, "").split()).strip(" :")
    return (text or type(exc).__name__)[:200]


_MISSING = ""  # a `_check_one` result: the path is not a file


def _check_one(path: str) -> str | None:
    """``None`` if ``path`` decodes, ``_MISSING`` if it is not a file, else the reason."""
    if not os.path.isfile(path):  # stat first: also keeps a FIFO from blocking the open
        return _MISSING
    try:
        default_loader(path)  # open + convert("RGB"), which loads (decodes) every pixel
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return _MISSING  # removed since the stat
    except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError, struct.error, ...
        return _reason(exc, path)
    return None


@dataclass
class FileCheck:
    """What :func:`check_images` found, in list order."""

    checked: int
    missing: list[str] = field(default_factory=list)
    undecodable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    @property
    def bad(self) -> int:
        """How many listed images are missing or do not decode."""
        return len(self.missing) + len(self.undecodable)


def check_images(
    paths: Sequence[str],
    *,
    workers: int | None = None,
    progress_every_s: float | None = None,
    stream: TextIO | None = None,
) -> FileCheck:
    """Decode every path with training's loader on ``workers`` threads (default: the CPU count).

    PIL releases the GIL while it decodes, so threads scale. With ``progress_every_s`` a
    line ``[describe] checked i/n images (p%), k bad so far`` goes to ``stream`` (stderr)
    at most that often, so a run shorter than the interval prints nothing.
    """
    n = len(paths)
    workers = max(1, workers if workers is not None else os.cpu_count() or 1)
    out = stream if stream is not None else sys.stderr
    chunk = max(1, min(_CHUNK, n // (workers * 4)))
    starts = range(0, n, chunk)
    results: dict[int, list[str | None]] = {}
    done = bad = 0
    last = time.monotonic()

    def run(start: int) -> list[str | None]:
        return [_check_one(p) for p in paths[start : start + chunk]]

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="describe")
    try:
        futures = {pool.submit(run, start): start for start in starts}
        for future in as_completed(futures):
            got = future.result()
            results[futures[future]] = got
            done += len(got)
            bad += sum(r is not None for r in got)
            now = time.monotonic()
            if progress_every_s is not None and now - last >= progress_every_s and done < n:
                print(f"[describe] checked {done:,}/{n:,} images ({100 * done // n}%), {bad:,} bad so far",
                      file=out, flush=True)  # fmt: skip
                last = now
    finally:  # Ctrl-C: drop the queued chunks, wait only for the running ones
        pool.shutdown(wait=True, cancel_futures=True)
    check = FileCheck(checked=n)
    for start in starts:
        for path, result in zip(paths[start : start + chunk], results[start], strict=True):
            if result == _MISSING:
                check.missing.append(path)
            elif result is not None:
                check.undecodable.append((path, result))
    return check


def failure_line(out: dict[str, Any]) -> str | None:
    """Say what a file check found wrong, in one line.

    One line naming the first missing / undecodable images of a ``check_files`` result
    and how many; ``None`` when every listed image decodes (or nothing was checked).
    """
    missing, undecodable = out.get("missing_count", 0), out.get("undecodable_count", 0)
    if not missing and not undecodable:
        return None
    of = f"of {out['checked_images']:,} listed images"
    parts = []
    if missing:
        verb = "is" if missing == 1 else "are"
        parts.append(f"{missing:,} {of} {verb} missing (first: {out['missing_files'][0]})")
    if undecodable:
        first = out["undecodable_files"][0]
        subject = f"{undecodable:,} {of}" if not missing else f"{undecodable:,}"
        verb = "does" if undecodable == 1 else "do"
        parts.append(f"{subject} {verb} not decode (first: {first['path']}: {first['reason']})")
    line = " and ".join(parts)
    return line.replace("\r", " ").replace("\n", " ")  # one line, even for a path holding a newline


def summarize(data: LTData) -> dict[str, Any]:
    """Counts of an already loaded data set."""
    counts = list(data.class_counts)
    nonzero = [c for c in counts if c > 0]
    groups = class_splits(counts)
    return {
        "dataset": data.name,
        "num_classes": data.num_classes,
        "train_images": len(data.train),
        "val_images": len(data.val),
        "test_images": len(data.test),
        "class_counts": counts,
        "splits": {name: int(idx.size) for name, idx in groups.items()},
        "imbalance_ratio": max(nonzero) / min(nonzero) if nonzero else None,
        "classes_without_train_images": len(counts) - len(nonzero),
        "fingerprint": data.fingerprint,
    }


def describe(
    name: str,
    data_root: str | Path | None = None,
    *,
    imb_factor: float | None = None,
    n_max: int | None = None,
    check_files: bool = False,
    workers: int | None = None,
    progress_every_s: float | None = None,
    train_list: str | None = None,
    val_list: str | None = None,
    test_list: str | None = None,
) -> dict[str, Any]:
    """Load (lists only, no image opened) and summarise.

    ``check_files`` also opens and decodes every distinct listed image (:func:`check_images`,
    ``workers`` threads, progress on stderr every ``progress_every_s``) and adds
    ``checked_images``, ``missing_count`` / ``missing_files`` (paths) and ``undecodable_count``
    / ``undecodable_files`` (``{"path", "reason"}``), each list capped at
    :data:`MAX_MISSING_LISTED`; :func:`failure_line` turns them into one line. Array data
    sets have no files: all counts are 0.

    ``imbalance_ratio`` is max / min over classes that have training images (``None`` if
    none do); ``classes_without_train_images`` counts the others.
    """
    data = load_dataset(
        name,
        data_root,
        imb_factor=imb_factor,
        n_max=n_max,
        train_list=train_list,
        val_list=val_list,
        test_list=test_list,
    )
    out = summarize(data)
    if check_files:
        check = check_images(listed_images(data), workers=workers, progress_every_s=progress_every_s)
        out["checked_images"] = check.checked
        out["missing_count"] = len(check.missing)
        out["missing_files"] = check.missing[:MAX_MISSING_LISTED]
        out["undecodable_count"] = len(check.undecodable)
        out["undecodable_files"] = [{"path": p, "reason": r} for p, r in check.undecodable[:MAX_MISSING_LISTED]]
    return out
