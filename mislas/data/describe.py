"""``describe``: what a data set holds (counts, class splits, missing images) as plain JSON data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mislas.data.registry import load_dataset
from mislas.data.types import FileListSplit, LTData
from mislas.splits import class_splits

MAX_MISSING_LISTED = 100
"""``missing_files`` lists at most this many paths; ``missing_count`` counts them all."""


def missing_files(data: LTData) -> list[str]:
    """Image paths named by the list splits that do not exist (array splits have none)."""
    missing: list[str] = []
    for split in (data.train, data.val, data.test):
        if isinstance(split, FileListSplit):
            root = str(split.root)
            missing.extend(p for p in (os.path.join(root, rel) for rel in split.paths) if not os.path.isfile(p))
    return list(dict.fromkeys(missing))  # iNat's train and val come from one list: no duplicates


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
    train_list: str | None = None,
    val_list: str | None = None,
    test_list: str | None = None,
) -> dict[str, Any]:
    """Load (lists only, no image opened) and summarise; ``check_files`` also stats each image.

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
        missing = missing_files(data)
        out["missing_count"] = len(missing)
        out["missing_files"] = missing[:MAX_MISSING_LISTED]
    return out
