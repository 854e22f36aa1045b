"""CIFAR-10-LT and CIFAR-100-LT from the standard CIFAR python pickles.

The pickles are read here rather than through ``torchvision.datasets.CIFAR10`` because that
class insists on the official MD5 of every file (it refuses a copy that is re-pickled or
generated for tests) and gives no control over which folder is accepted. torchvision is
still what downloads them, and only when ``download=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mislas.data.lt import build_array_lt
from mislas.data.types import DatasetSpec, LoadOptions, LTData
from mislas.errors import UsageError
from mislas.safe_load import load_cifar_pickle

DEFAULT_ROOT = Path("data")
"""Where CIFAR is looked for (and downloaded to) when no data root is given."""


@dataclass(frozen=True)
class CifarLayout:
    """File names and label key of one CIFAR variant, as the official archives lay them out."""

    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes


CIFAR10 = CifarLayout(
    folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",),
    label_key=b"labels",
)
CIFAR100 = CifarLayout(
    folder="cifar-100-python", train_files=("train",), test_files=("test",), label_key=b"fine_labels"
)


def find_cifar_dir(root: Path, layout: CifarLayout) -> Path | None:
    """The folder holding the pickles: ``root/<folder>`` or ``root`` itself."""
    for cand in (root / layout.folder, root):
        if all((cand / f).is_file() for f in layout.train_files + layout.test_files):
            return cand
    return None


def read_cifar_pickle(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 32, 32, 3] (rows are 1024 R, 1024 G, 1024 B bytes) and int64 labels.

    Read by :func:`mislas.safe_load.load_cifar_pickle`, which unpickles only the names a CIFAR
    batch holds (NumPy arrays of numbers, lists, bytes): a pickle naming anything else is
    refused, so a planted file cannot run code.
    """
    entry = load_cifar_pickle(path)
    if not isinstance(entry, dict):
        raise UsageError(f"{path}: a CIFAR pickle must hold a dict, got {type(entry).__name__}")
    data = entry.get(b"data", entry.get("data"))
    labels = entry.get(label_key, entry.get(label_key.decode()))
    if data is None or labels is None:
        raise UsageError(
            f"{path}: a CIFAR pickle must have keys b'data' and {label_key!r}, got {sorted(map(str, entry))}"
        )
    data = np.asarray(data, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise UsageError(
            f"{path}: data must be [N, 3072] with N labels, got data {data.shape} and {labels.shape[0]} labels"
        )
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def read_cifar(files: list[Path], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate several pickles (CIFAR-10's five training batches)."""
    parts = [read_cifar_pickle(f, label_key) for f in files]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _download(spec: DatasetSpec, root: Path) -> None:
    """Let torchvision fetch and unpack the official archive into ``root`` (network needed)."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if spec.num_classes == 10 else datasets.CIFAR100
    for train in (True, False):
        cls(root=str(root), train=train, download=True)


def load_cifar_lt(spec: DatasetSpec, data_root: Path | None, opts: LoadOptions) -> LTData:
    """CIFAR-10/100-LT: LT subset of the official training set, val from unused images, official test."""
    layout = CIFAR10 if spec.num_classes == 10 else CIFAR100
    root = DEFAULT_ROOT if data_root is None else Path(data_root)
    folder = find_cifar_dir(root, layout)
    if folder is None and opts.download:
        _download(spec, root)
        folder = find_cifar_dir(root, layout)
    if folder is None:
        raise UsageError(
            f"{spec.name}: no CIFAR python pickles ({', '.join(layout.train_files + layout.test_files)}) "
            f"in {root / layout.folder} or {root}; pass --data-root to the folder holding "
            f"{layout.folder}/, or download=True to fetch it"
        )
    train_x, train_y = read_cifar([folder / f for f in layout.train_files], layout.label_key)
    test_x, test_y = read_cifar([folder / f for f in layout.test_files], layout.label_key)
    return build_array_lt(
        spec,
        opts,
        train_images=train_x,
        train_labels=train_y,
        test_images=test_x,
        test_labels=test_y,
        source=str(folder),
    )
