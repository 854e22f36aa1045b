"""Train and eval transforms (method.md), as ``torchvision.transforms.v2`` pipelines.

Array splits (CIFAR, Fashion-MNIST) are uint8 CHW tensors: crop with padding 4 and flip run
on them directly, with no PIL round trip. List splits get the ImageNet recipe: train
RandomResizedCrop 224, flip, ColorJitter(0.4, 0.4, 0.4, 0); eval resize 256, centre crop 224.
The kind of split decides the recipe (no data-set names here), the LTData gives size and
normalisation. Outputs are plain float tensors, CHW, normalised.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from mislas.data.types import FileListSplit, LTData

EVAL_RESIZE_RATIO = 256 / 224
"""Eval resizes the short side to 256 before the 224 centre crop (the standard ratio)."""


def _finish(data: LTData) -> list[v2.Transform]:
    return [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(data.mean), std=list(data.std)),
        v2.ToPureTensor(),
    ]


def train_transform(data: LTData) -> v2.Compose:
    """Augmenting transform for training; randomness comes from torch's RNG (per worker seeded by the loader)."""
    if isinstance(data.train, FileListSplit):
        steps: list[v2.Transform] = [
            v2.ToImage(),
            v2.RandomResizedCrop(data.image_size, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.0),
        ]
    else:
        steps = [v2.RandomCrop(data.image_size, padding=4), v2.RandomHorizontalFlip()]
    return v2.Compose(steps + _finish(data))


def eval_transform(data: LTData) -> v2.Compose:
    """Deterministic transform for val/test and for feature extraction."""
    if isinstance(data.train, FileListSplit):
        steps: list[v2.Transform] = [
            v2.ToImage(),
            v2.Resize(round(data.image_size * EVAL_RESIZE_RATIO), antialias=True),
            v2.CenterCrop(data.image_size),
        ]
    else:
        steps = []
    return v2.Compose(steps + _finish(data))
