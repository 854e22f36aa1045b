"""The value types of the data layer: splits, a loaded long-tailed data set, a registry entry.

They are frozen so that a loaded data set can be shared between callers (Stage 1, Stage 2,
the baselines) without one of them changing what another sees. Splits use ``eq=False``:
they hold tensors, whose ``==`` is element-wise, so identity is the only honest equality.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch


@dataclass(frozen=True, eq=False)
class ArraySplit:
    """An in-memory split (CIFAR, Fashion-MNIST), read once into uint8 tensors."""

    images: torch.Tensor  # uint8 [N, H, W, C]
    labels: torch.Tensor  # int64 [N]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 [N, H, W, C], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must be int64 [N] with N = {self.images.shape[0]}, "
                f"got {self.labels.dtype} {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True, eq=False)
class FileListSplit:
    """A split read from an image list; images are opened only when an item is fetched."""

    root: Path  # data root; image path = root / rel
    paths: tuple[str, ...]
    labels: torch.Tensor  # int64 [N]
    list_file: Path  # where it came from (for error messages)

    def __post_init__(self) -> None:
        if self.labels.dtype != torch.int64 or self.labels.shape != (len(self.paths),):
            raise ValueError(
                f"labels must be int64 [N] with N = {len(self.paths)}, "
                f"got {self.labels.dtype} {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return len(self.paths)


Split = ArraySplit | FileListSplit


@dataclass(frozen=True)
class LTData:
    """A loaded long-tailed data set: three splits and what defines them."""

    name: str
    num_classes: int
    train: Split
    val: Split
    test: Split
    class_counts: tuple[int, ...]  # train images per class index
    image_size: int  # 32 CIFAR, 28 Fashion-MNIST, 224 list data sets
    in_channels: int  # 3, or 1 for Fashion-MNIST
    mean: tuple[float, ...]  # per channel, in [0, 1] pixel units
    std: tuple[float, ...]
    fingerprint: str  # sha256 hex of what defines the data (see mislas.data.lt.fingerprint)


@dataclass(frozen=True)
class LoadOptions:
    """What a caller of ``load_dataset`` may choose; ``None`` means the data set's default."""

    imb_factor: float | None = None
    n_max: int | None = None
    seed: int = 0
    val_per_class: int | None = None
    test_per_class: int | None = None
    train_list: str | None = None
    val_list: str | None = None
    test_list: str | None = None
    download: bool = False


Loader = Callable[["DatasetSpec", "Path | None", LoadOptions], LTData]


@dataclass(frozen=True)
class DatasetSpec:
    """One registry entry: the facts of a data set and the function that loads it."""

    name: str
    num_classes: int
    kind: Literal["array", "list"]
    default_backbone: Literal["resnet32", "resnet50", "resnet152_places"]
    default_imb_factor: float | None  # None for list sets (their imbalance is in the list)
    default_n_max: int | None  # None for list sets
    default_val_per_class: int | None  # None where the val split is a list of its own
    image_size: int
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_list: str | None  # list file names under the data root (list sets only)
    val_list: str | None
    test_list: str | None
    loader: Loader
    description: str = ""
