"""Data fixtures in the real on-disk formats, generated small (no download, no real data).

- CIFAR: python pickles in ``cifar-10-batches-py`` / ``cifar-100-python`` layout
  (dicts with ``b"data"`` [N, 3072] uint8 and ``b"labels"`` / ``b"fine_labels"``).
- Fashion-MNIST: gzip IDX files as Debian ships them.
- Image lists: ``relative/path label`` text files; one tree also holds real JPEG/PNG images.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mislas.data import ArraySplit, LTData

CIFAR_TINY_PER_CLASS = 30  # CIFAR-10 tiny: n_max up to 30
CIFAR100_TINY_PER_CLASS = 12
FMNIST_TINY_PER_CLASS = 30


def write_cifar(root: Path, *, num_classes: int, per_class: int, test_per_class: int, zeros: bool = False) -> Path:
    """CIFAR pickles in the official layout under ``root``; returns ``root``."""
    rng = np.random.default_rng(0)

    def rows(n: int) -> np.ndarray:
        if zeros:
            return np.zeros((n, 3072), dtype=np.uint8)
        return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)

    def labels(per: int) -> list[int]:
        lab = np.repeat(np.arange(num_classes), per)
        return rng.permutation(lab).tolist()

    def dump(path: Path, data: np.ndarray, lab: list[int], key: bytes) -> None:
        with open(path, "wb") as fh:
            pickle.dump({b"batch_label": b"generated", key: lab, b"data": data}, fh, protocol=pickle.HIGHEST_PROTOCOL)

    train_lab, test_lab = labels(per_class), labels(test_per_class)
    if num_classes == 10:
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        chunks = np.array_split(np.arange(len(train_lab)), 5)
        for i, chunk in enumerate(chunks, 1):
            dump(folder / f"data_batch_{i}", rows(chunk.size), [train_lab[j] for j in chunk], b"labels")
        dump(folder / "test_batch", rows(len(test_lab)), test_lab, b"labels")
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        dump(folder / "train", rows(len(train_lab)), train_lab, b"fine_labels")
        dump(folder / "test", rows(len(test_lab)), test_lab, b"fine_labels")
    return root


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file: 00 00 08 ndim, big-endian int32 dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_fashion_mnist(folder: Path, *, per_class: int, test_per_class: int, gz: bool = True) -> Path:
    """The four Fashion-MNIST IDX files (gzip by default) in ``folder``."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, per in (("train", per_class), ("t10k", test_per_class)):
        lab = rng.permutation(np.repeat(np.arange(10), per)).astype(np.uint8)
        img = rng.integers(0, 256, size=(lab.size, 28, 28), dtype=np.uint8)
        for kind, arr in (("images-idx3", img), ("labels-idx1", lab)):
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                with gzip.open(folder / f"{name}.gz", "wb", compresslevel=1) as fh:
                    fh.write(idx_bytes(arr))
            else:
                (folder / name).write_bytes(idx_bytes(arr))
    return folder


def write_list(path: Path, entries: list[tuple[str, int]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{p} {label}\n" for p, label in entries))
    return path


def descending_counts(num_classes: int, most: int = 6) -> list[int]:
    """Train images per class, from ``most`` down to 1 (a long tail in miniature)."""
    return [1 + (most - 1) * (num_classes - 1 - c) // max(1, num_classes - 1) for c in range(num_classes)]


def write_list_tree(root: Path, name: str, num_classes: int, lists: tuple[str, str | None, str]) -> Path:
    """Split lists only (no images) for a list data set with every class present in train."""
    counts = (
        descending_counts(num_classes) if name != "inat2018" else [4 if c % 2 == 0 else 2 for c in range(num_classes)]
    )
    train = [(f"train/{c}/{i}.jpg", c) for c in range(num_classes) for i in range(counts[c])]
    write_list(root / lists[0], train)
    if lists[1] is not None:
        write_list(root / lists[1], [(f"val/{c}/0.jpg", c) for c in range(num_classes)])
    write_list(root / lists[2], [(f"test/{c}/0.jpg", c) for c in range(num_classes)])
    return root


@pytest.fixture(scope="session")
def make_cifar():  # type: ignore[no-untyped-def]
    """``write_cifar`` as a fixture, so tests need not import conftest."""
    return write_cifar


@pytest.fixture(scope="session")
def make_fashion_mnist():  # type: ignore[no-untyped-def]
    """``write_fashion_mnist`` as a fixture."""
    return write_fashion_mnist


@pytest.fixture(scope="session")
def make_list():  # type: ignore[no-untyped-def]
    """``write_list`` as a fixture."""
    return write_list


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cifar(
        tmp_path_factory.mktemp("cifar10"), num_classes=10, per_class=CIFAR_TINY_PER_CLASS, test_per_class=3
    )


@pytest.fixture(scope="session")
def cifar100_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cifar(
        tmp_path_factory.mktemp("cifar100"), num_classes=100, per_class=CIFAR100_TINY_PER_CLASS, test_per_class=2
    )


@pytest.fixture(scope="session")
def fmnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fashion_mnist(tmp_path_factory.mktemp("fmnist"), per_class=FMNIST_TINY_PER_CLASS, test_per_class=4)


@pytest.fixture(scope="session")
def list_roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A list-only tree for each registered list data set."""
    from mislas.data import DATASETS

    roots = {}
    for name, spec in DATASETS.items():
        if spec.kind == "list":
            assert spec.train_list and spec.test_list
            roots[name] = write_list_tree(
                tmp_path_factory.mktemp(name), name, spec.num_classes, (spec.train_list, spec.val_list, spec.test_list)
            )
    return roots


IMAGE_TREE_TRAIN = [
    ("train/a/img 0.jpg", 0, "RGB", "JPEG", (40, 30)),
    ("train/a/img1.png", 0, "L", "PNG", (20, 50)),
    ("train/b/img2.jpg", 1, "RGB", "JPEG", (64, 64)),
    ("train/c/img3.png", 364, "RGBA", "PNG", (33, 17)),
]
IMAGE_TREE_EVAL = [("val/x.jpg", 1, "RGB", "JPEG", (48, 36)), ("val/y.png", 364, "L", "PNG", (30, 30))]


@pytest.fixture(scope="session")
def image_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Places-LT style tree with real small JPEG/PNG images (grey, RGBA, a path with a space)."""
    root = tmp_path_factory.mktemp("places_images")
    rng = np.random.default_rng(2)
    for rel, _, mode, fmt, (w, h) in IMAGE_TREE_TRAIN + IMAGE_TREE_EVAL:
        channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
        pixels = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels)  # L / RGB / RGBA by shape
        assert image.mode == mode
        image.save(path, format=fmt)
    write_list(root / "Places_LT_train.txt", [(e[0], e[1]) for e in IMAGE_TREE_TRAIN])
    write_list(root / "Places_LT_val.txt", [(e[0], e[1]) for e in IMAGE_TREE_EVAL])
    write_list(root / "Places_LT_test.txt", [(e[0], e[1]) for e in IMAGE_TREE_EVAL])
    return root


def tiny_split(counts: list[int], seed: int, size: int = 12) -> ArraySplit:
    """Class-dependent blobs (1 channel) so a tiny net learns something in a few steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(counts)])
    base = torch.rand(len(counts), size, size, 1, generator=g) * 200
    noise = torch.rand(len(labels), size, size, 1, generator=g) * 55
    return ArraySplit((base[labels] + noise).to(torch.uint8), labels)


@pytest.fixture(scope="session")
def tiny() -> LTData:
    """A 3-class long-tailed set of 12x12 blobs (40/16/6 train images), for stage-level tests."""
    counts = [40, 16, 6]
    return LTData(
        name="tiny", num_classes=3, train=tiny_split(counts, 1), val=tiny_split([8, 8, 8], 2),
        test=tiny_split([10, 10, 10], 3), class_counts=tuple(counts), image_size=12, in_channels=1, mean=(0.5,),
        std=(0.25,), fingerprint="f" * 64,
    )


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread. On a shared CPU, a second OpenMP thread that gets
    descheduled stalls every small op (measured here: 40x slower), and the tests check math, not speed."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
