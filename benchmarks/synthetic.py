"""Synthetic data of the real shapes: CIFAR-10-LT-like arrays and an ImageNet-like JPEG tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mislas.data import ArraySplit, FileListSplit, LTData, lt_class_counts

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _array_split(counts: list[int], size: int, channels: int, gen: torch.Generator) -> ArraySplit:
    labels = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(counts)])
    images = torch.randint(0, 256, (len(labels), size, size, channels), generator=gen, dtype=torch.uint8)
    return ArraySplit(images, labels)


def cifar_lt(*, num_classes: int = 10, n_max: int = 5000, imb_factor: float = 100.0, eval_per_class: int = 100,
             seed: int = 0) -> LTData:
    """Random 32x32x3 uint8 images with CIFAR-LT class counts (n_max 5000, β 100: 12,406 images)."""
    gen = torch.Generator().manual_seed(seed)
    counts = [int(c) for c in lt_class_counts(num_classes, n_max, imb_factor)]
    return LTData(
        name=f"synthetic_cifar{num_classes}_lt", num_classes=num_classes,
        train=_array_split(counts, 32, 3, gen), val=_array_split([eval_per_class] * num_classes, 32, 3, gen),
        test=_array_split([eval_per_class] * num_classes, 32, 3, gen), class_counts=tuple(counts), image_size=32,
        in_channels=3, mean=CIFAR_MEAN, std=CIFAR_STD, fingerprint="0" * 64,
    )


def jpeg_tree(root: Path, *, images: int, num_classes: int = 10, size: tuple[int, int] = (500, 375),
              seed: int = 0) -> LTData:
    """``images`` JPEGs of ``size`` (ImageNet's typical size) with smooth, photo-like content, and a list split."""
    rng = np.random.default_rng(seed)
    w, h = size
    paths, labels = [], []
    for i in range(images):
        # low-frequency noise, upsampled: decodes like a photo, unlike white noise
        small = rng.integers(0, 256, size=(h // 25 + 1, w // 25 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.BILINEAR)
        rel = f"train/{i % num_classes}/{i}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        img.save(root / rel, format="JPEG", quality=90)
        paths.append(rel)
        labels.append(i % num_classes)
    list_file = root / "train.txt"
    list_file.write_text("".join(f"{p} {y}\n" for p, y in zip(paths, labels)))
    split = FileListSplit(root, tuple(paths), torch.tensor(labels, dtype=torch.int64), list_file)
    counts = tuple(int(c) for c in torch.bincount(split.labels, minlength=num_classes))
    return LTData(name="synthetic_jpeg", num_classes=num_classes, train=split, val=split, test=split,
                  class_counts=counts, image_size=224, in_channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                  fingerprint="0" * 64)


def trained_logits(n: int, k: int, *, seed: int = 0, top1: float = 0.65, noise: float = 1.5,
                   margin: tuple[float, float] = (6.0, 9.0), scale: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, k] float32 logits shaped like a trained classifier's, and their labels.

    Gaussian noise (σ ``noise``) plus a margin drawn from ``margin`` on the label for a
    ``top1`` share of the rows and on a random class for the rest, all times ``scale``: right
    about ``top1`` of the time and over-confident (the NLL-optimal temperature is above 1), as
    a network's validation logits are. iNaturalist 2018's val set is ``trained_logits(24_426, 8_142)``.
    """
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g) * noise
    y = torch.randint(0, k, (n,), generator=g)
    hit = torch.rand(n, generator=g) < top1
    target = torch.where(hit, y, torch.randint(0, k, (n,), generator=g))
    lo, hi = margin
    z[torch.arange(n), target] += lo + (hi - lo) * torch.rand(n, generator=g)
    return z.mul_(scale), y
