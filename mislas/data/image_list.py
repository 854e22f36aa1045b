"""ImageNet-LT, Places-LT and iNaturalist 2018 from their split lists.

A split list has one image a line, ``relative/path/to/img.jpg <integer label>``; the image is
``data_root / relative/path``. Reading a list never opens an image, so a list can be
described (counts, splits) on a machine that has only the text files.

Splits:
- ImageNet-LT, Places-LT: train / val / test are the three official lists.
- iNaturalist 2018: its official val list (3 images a class) is the *test* split, as in the
  paper. The selection val split is held out from the train list with the seed: ``val_per_class``
  (default 1) images from each class that keeps at least 3 training images after the hold-out
  (with the default: each class with >= 4 train images), so no class loses its last images
  and the report set is never used for selection.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mislas.data.lt import fingerprint, holdout_balanced, sha256_hex
from mislas.data.types import DatasetSpec, FileListSplit, LoadOptions, LTData
from mislas.errors import UsageError

EXPECTED_LINE = "`relative/path <integer label>`"
INAT_KEEP_AT_LEAST = 3
"""Images a class of iNat keeps in train after the val hold-out."""


def _is_int(text: str) -> bool:
    """ASCII decimal integer, maybe negative (``int()`` would also take ``1_0``, ``+1``, non-ASCII digits)."""
    digits = text[1:] if text[:1] == "-" else text
    return digits.isascii() and digits.isdigit()


def _line_number(lines: list[str], entry: int) -> int:
    """1-based line of the ``entry``-th non-blank line (only used to build an error message)."""
    seen = -1
    for i, line in enumerate(lines):
        if line.strip():
            seen += 1
            if seen == entry:
                return i + 1
    raise IndexError(entry)


def read_image_list(path: Path, num_classes: int) -> tuple[tuple[str, ...], np.ndarray, str]:
    """Paths, int64 labels and the sha256 of the file's bytes; blank lines are skipped.

    One ``rsplit`` a line (the label is the last whitespace-separated field, so paths may hold
    spaces) and one vectorised range check keep iNat's 437k lines well under a second.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"list file {path} does not exist") from None
    except OSError as exc:
        raise UsageError(f"list file {path} cannot be read ({type(exc).__name__}: {exc})") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(f"list file {path} is not UTF-8 text ({exc})") from exc
    lines = text.splitlines()
    paths: list[str] = []
    label_text: list[str] = []
    for lineno, line in enumerate(lines, 1):
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or not _is_int(parts[1]):
            if not parts:
                continue  # blank line
            raise UsageError(f"{path}:{lineno}: malformed line {line.strip()!r}; expected {EXPECTED_LINE}")
        paths.append(parts[0].strip())
        label_text.append(parts[1])
    labels = np.array(label_text, dtype=np.int64) if label_text else np.empty(0, dtype=np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        first = int(bad[0])
        raise UsageError(
            f"{path}:{_line_number(lines, first)}: label {int(labels[first])} is out of range; "
            f"allowed 0..{num_classes - 1}"
        )
    return tuple(paths), labels, sha256_hex(raw)


def resolve_list(data_root: Path, override: str | None, default: str) -> Path:
    """A list file: the override (absolute, or relative to the data root) or the default name."""
    name = Path(override) if override else Path(default)
    return name if name.is_absolute() else data_root / name


def _split(root: Path, paths: tuple[str, ...], labels: np.ndarray, list_file: Path) -> FileListSplit:
    return FileListSplit(root=root, paths=paths, labels=torch.from_numpy(labels.astype(np.int64)), list_file=list_file)


def _check_options(spec: DatasetSpec, data_root: Path | None, opts: LoadOptions) -> Path:
    """Refuse the options an image-list data set does not take; return its data root."""
    for arg in ("imb_factor", "n_max"):
        if getattr(opts, arg) is not None:
            raise UsageError(
                f"{arg} applies only to the CIFAR/Fashion-MNIST LT profiles; {spec.name}'s imbalance is its train list"
            )
    if opts.test_per_class is not None:
        raise UsageError(f"test_per_class applies only to the CIFAR/Fashion-MNIST LT profiles; {spec.name} is "
                         f"evaluated on its whole test list")
    if opts.download:
        raise UsageError(f"{spec.name} cannot be downloaded; pass --data-root to a folder holding {spec.train_list}")
    if spec.val_list is not None and opts.val_per_class is not None:
        raise UsageError(
            f"val_per_class applies only to data sets whose val split is held out; "
            f"{spec.name} has the val list {spec.val_list}"
        )
    if spec.val_list is None and opts.val_list is not None:
        raise UsageError(f"{spec.name} has no val list (its val split is held out from the train list); drop val_list")
    if data_root is None:
        raise UsageError(f"{spec.name} needs a data root: pass --data-root to the folder holding {spec.train_list}")
    root = Path(data_root)
    if not root.is_dir():
        raise UsageError(f"data root {root} does not exist or is not a folder")
    return root


def _train_and_val(spec: DatasetSpec, root: Path, opts: LoadOptions, train_file: Path, train_paths: tuple[str, ...],
                   train_labels: np.ndarray) -> tuple[FileListSplit, FileListSplit, dict[str, object]]:
    """The train and val splits, and what defines val: its own list, or held out of the train list."""
    k = spec.num_classes
    if spec.val_list is not None:
        val_file = resolve_list(root, opts.val_list, spec.val_list)
        val_paths, val_labels, val_hash = read_image_list(val_file, k)
        return (_split(root, train_paths, train_labels, train_file), _split(root, val_paths, val_labels, val_file),
                {"val_list_sha256": val_hash})
    per_class = spec.default_val_per_class if opts.val_per_class is None else opts.val_per_class
    assert per_class is not None
    everything = np.arange(train_labels.size)
    val_idx = holdout_balanced(train_labels, everything, k, per_class, opts.seed, keep_at_least=INAT_KEEP_AT_LEAST)
    keep = np.ones(train_labels.size, dtype=bool)
    keep[val_idx] = False
    train_idx = np.flatnonzero(keep)
    val = _split(root, tuple(train_paths[i] for i in val_idx), train_labels[val_idx], train_file)
    train = _split(root, tuple(train_paths[i] for i in train_idx), train_labels[train_idx], train_file)
    return train, val, {"held_out_per_class": int(per_class), "seed": int(opts.seed)}


def load_image_list_lt(spec: DatasetSpec, data_root: Path | None, opts: LoadOptions) -> LTData:
    """Read the split lists of an image-list data set (no image is opened)."""
    root = _check_options(spec, data_root, opts)
    assert spec.train_list is not None and spec.test_list is not None
    train_file = resolve_list(root, opts.train_list, spec.train_list)
    test_file = resolve_list(root, opts.test_list, spec.test_list)
    train_paths, train_labels, train_hash = read_image_list(train_file, spec.num_classes)
    test_paths, test_labels, test_hash = read_image_list(test_file, spec.num_classes)
    train, val, val_def = _train_and_val(spec, root, opts, train_file, train_paths, train_labels)
    k = spec.num_classes
    counts = np.bincount(train.labels.numpy(), minlength=k)
    fp = fingerprint({"name": spec.name, "class_counts": counts.tolist(), "train_list_sha256": train_hash,
                      "test_list_sha256": test_hash, **val_def})
    return LTData(
        name=spec.name,
        num_classes=k,
        train=train,
        val=val,
        test=_split(root, test_paths, test_labels, test_file),
        class_counts=tuple(int(c) for c in counts),
        image_size=spec.image_size,
        in_channels=spec.in_channels,
        mean=spec.mean,
        std=spec.std,
        fingerprint=fp,
    )
