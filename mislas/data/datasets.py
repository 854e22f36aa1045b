"""``torch.utils.data.Dataset`` views of the splits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.datasets.folder import default_loader

from mislas.data.types import ArraySplit, FileListSplit, Split

Transform = Callable[[Any], torch.Tensor]


class ArrayDataset(Dataset[tuple[torch.Tensor, int]]):
    """Items of an in-memory split: the uint8 image as a CHW ``tv_tensors.Image``, then ``transform``."""

    def __init__(self, split: ArraySplit, transform: Transform | None = None) -> None:
        self.images = split.images.permute(0, 3, 1, 2)  # NHWC storage, CHW view per item
        self.labels = split.labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image: Any = tv_tensors.Image(self.images[index].contiguous())
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]


class FileListDataset(Dataset[tuple[torch.Tensor, int]]):
    """Items of a list split: ``default_loader`` (PIL, RGB) on ``root / path``, then ``transform``."""

    def __init__(self, split: FileListSplit, transform: Transform | None = None) -> None:
        self.root = split.root
        self.paths = split.paths
        self.labels = split.labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = default_loader(self.root / self.paths[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]


def as_torch_dataset(split: Split, transform: Transform | None) -> ArrayDataset | FileListDataset:
    """Wrap a split as a torch Dataset.

    A Dataset yielding ``(transform(image), int label)``; with the transforms of
    :mod:`mislas.data.transforms` the image is a float CHW tensor, normalised.
    """
    if isinstance(split, ArraySplit):
        return ArrayDataset(split, transform)
    if isinstance(split, FileListSplit):
        return FileListDataset(split, transform)
    raise TypeError(f"split must be an ArraySplit or FileListSplit, got {type(split).__name__}")
