"""A Stage-1 loop in the reference implementation's style, the baseline of ``stage1_speedup``.

What the MiSLAS reference code does for CIFAR: a Dataset that turns each uint8 HWC array into
a PIL image and applies ``torchvision.transforms`` (v1) RandomCrop(32, padding=4),
RandomHorizontalFlip, ToTensor, Normalize; a shuffling DataLoader; the model in fp32 with
the default (contiguous) memory format; mixup drawn with ``np.random.beta`` and a
``torch.randperm`` per batch; ``loss.item()`` and a top-1 count read back every step for
its running meters. Written here from that description (no code of it is copied).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms


class PILArrayDataset(Dataset[tuple[torch.Tensor, int]]):
    """uint8 NHWC images -> PIL -> transforms v1, one image per ``__getitem__``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: tuple[float, ...],
                 std: tuple[float, ...]) -> None:
        self.images = images.numpy()
        self.labels = labels.tolist()
        size = self.images.shape[1]
        self.transform = transforms.Compose([
            transforms.RandomCrop(size, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.images[index]
        pil = Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img)
        return self.transform(pil), self.labels[index]


def reference_loader(dataset: PILArrayDataset, *, batch_size: int, num_workers: int,
                     pin_memory: bool) -> DataLoader[tuple[torch.Tensor, int]]:
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                      pin_memory=pin_memory, drop_last=False)


def reference_steps(model: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], steps: int, *,
                    optimizer: torch.optim.Optimizer, device: torch.device, alpha: float = 1.0) -> int:
    """``steps`` mixup SGD steps from ``batches``; returns the number of images seen."""
    model.train()
    seen = 0
    for _ in range(steps):
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        lam = float(np.random.beta(alpha, alpha))
        index = torch.randperm(x.shape[0]).to(device)
        mixed = lam * x + (1 - lam) * x[index]
        out = model(mixed)
        loss = lam * F.cross_entropy(out, y) + (1 - lam) * F.cross_entropy(out, y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        _ = loss.item(), (out.argmax(1) == y).sum().item()  # the reference's running meters
        seen += x.shape[0]
    return seen
