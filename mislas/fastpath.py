"""Device-resident batches for in-memory data sets (CIFAR-LT, Fashion-MNIST-LT).

Why: a ResNet-32 on a GPU eats a CIFAR batch in a few milliseconds, while a DataLoader with
per-image transforms spends that long in Python per batch. As airbench's ``CifarLoader``
does, the whole uint8 split moves to the training device once (zero-padded by 4 pixels when
it is augmented), and each batch is built there by one gather: a random crop is an offset
into the padded image and a horizontal flip is a reversed column index, so neither needs a
Python loop per sample. The cast and normalisation are the same tensor ops as
``torchvision.transforms.v2.ToDtype(scale=True)`` + ``Normalize``, so an un-augmented batch
equals the torchvision eval transform bit for bit.

Randomness: at the start of each epoch, the order comes from
:func:`mislas.data.loaders.epoch_order` with the caller's generator, or from the caller's
:class:`mislas.data.samplers.ClassAwareEpochs` (Stage 2; its epoch length, e.g. the
reference's ``ceil(N/B) + 1`` batches, is the number of batches here too) -- the same as the
DataLoader path either way, so Stage 2's class-aware order is identical on both -- then one crop offset
and one flip bit per position from the same generator, all on the CPU, moved to the device
in one transfer. A caller that reseeds the generator per (seed, stage, epoch), as the
stages do (:mod:`mislas.seeding`), gets batches that depend on that epoch seed alone, so resumed
runs reproduce uninterrupted ones. Mixup stays in :class:`mislas.mixup.Mixup`.

The resident copies are cached per (split, device, padding) and live as long as the split.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from mislas.data.loaders import Order, Shard, epoch_order, order_length
from mislas.data.types import ArraySplit, LTData, Split
from mislas.errors import UsageError

PAD = 4
"""Zero padding of the random crop, in pixels (method.md: crop 32 with padding 4)."""

_RESIDENT: weakref.WeakKeyDictionary[ArraySplit, dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]]] = (
    weakref.WeakKeyDictionary()
)


def selected(split: Split, loader: str) -> bool:
    """Whether ``split`` goes through the fast path under ``data.loader`` = ``loader``."""
    if loader == "torch":
        return False
    if loader == "fast":
        if not isinstance(split, ArraySplit):
            raise UsageError("data.loader='fast' needs an in-memory data set (CIFAR, Fashion-MNIST); "
                             f"got a {type(split).__name__}, use 'auto' or 'torch'")
        return True
    if loader == "auto":
        return isinstance(split, ArraySplit)
    raise UsageError(f"data.loader must be one of auto, torch, fast, got {loader!r}")


def _canonical(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def resident(split: ArraySplit, device: torch.device, pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``split``'s images (uint8 NHWC, zero-padded by ``pad`` on H and W) and labels on ``device``, cached."""
    device = _canonical(device)
    per_split = _RESIDENT.setdefault(split, {})
    key = (str(device), pad)
    if key not in per_split:
        images = split.images.to(device)
        if pad:
            images = torch.nn.functional.pad(images, (0, 0, pad, pad, pad, pad))  # NHWC: W and H, zeros
        per_split[key] = (images, split.labels.to(device))
    return per_split[key]


@dataclass(frozen=True)
class CropFlip:
    """The reference's CIFAR augmentation on a batch of tensors.

    Random crop of the image's own size from a ``pad``-zero-padded copy, then a flip with
    probability ``flip_p``: ``v2.RandomCrop(size, padding=pad)`` + ``v2.RandomHorizontalFlip(flip_p)``.
    """

    pad: int = PAD
    flip_p: float = 0.5

    def __post_init__(self) -> None:
        if self.pad < 0:
            raise ValueError(f"pad >= 0 must hold, got pad={self.pad}")
        if not 0.0 <= self.flip_p <= 1.0:
            raise ValueError(f"0 <= flip_p <= 1 must hold, got flip_p={self.flip_p}")


def train_augmentation(data: LTData) -> CropFlip | None:
    """The in-memory sets' training augmentation (mislas.data.transforms.train_transform's array branch)."""
    return CropFlip(pad=PAD, flip_p=0.5)


class DeviceBatches:
    """Batches ``(x, y)`` of an :class:`ArraySplit` built on ``device``.

    ``x`` is float32 [B, C, H, W], normalised, channels_last when asked (the gather from the
    NHWC store gives that layout for free), ``y`` int64 [B]; both on ``device``. Iterating
    draws one epoch (see the module docstring); ``len`` is the number of batches.
    """

    def __init__(
        self,
        split: ArraySplit,
        *,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        batch_size: int,
        device: torch.device,
        sampler: Order = "sequential",
        generator: torch.Generator | None = None,
        num_classes: int | None = None,
        samples_per_class: int = 4,
        augment: CropFlip | None = None,
        channels_last: bool = True,
        shard: Shard = Shard(),
    ) -> None:
        if not isinstance(split, ArraySplit):
            raise TypeError(f"split must be an ArraySplit, got {type(split).__name__}")
        if batch_size < 1:
            raise ValueError(f"batch_size >= 1 must hold, got batch_size={batch_size}")
        channels = split.images.shape[3]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean and std need one value per channel ({channels}), got {len(mean)} and {len(std)}")
        if sampler != "sequential" and generator is None:
            raise ValueError(f"sampler {sampler!r} draws from a generator; pass generator=")
        self.split = split
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.sampler: Order = sampler
        self.generator = generator
        self.num_classes = num_classes if num_classes is not None else int(split.labels.max()) + 1 if len(split) else 0
        self.samples_per_class = samples_per_class
        self.augment = augment
        self.channels_last = channels_last
        self.pad = augment.pad if augment is not None else 0
        # the same float32 constants v2.Normalize builds from its lists
        self.mean = torch.as_tensor(list(mean), dtype=torch.float32, device=self.device).view(-1, 1, 1)
        self.std = torch.as_tensor(list(std), dtype=torch.float32, device=self.device).view(-1, 1, 1)
        _, self.height, self.width = split.images.shape[:3]
        self.shard = shard  # data-parallel training: this rank's part of each epoch
        self._n = shard.length(order_length(sampler, split.labels, self.num_classes))

    def __len__(self) -> int:
        return math.ceil(self._n / self.batch_size)

    def __repr__(self) -> str:
        return (f"DeviceBatches(n={len(self.split)}, batch_size={self.batch_size}, sampler={self.sampler!r}, "
                f"augment={self.augment}, device={self.device}, channels_last={self.channels_last})")

    def _draw_epoch(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Order, crop offsets [n, 2] and flip bits [n], on the CPU, in that order of draws."""
        gen = self.generator if self.generator is not None else torch.Generator()
        order = epoch_order(self.sampler, self.split.labels, num_classes=self.num_classes, generator=gen,
                            samples_per_class=self.samples_per_class)
        if self.augment is None:
            return order, None, None
        n = order.numel()
        offsets = torch.randint(0, 2 * self.augment.pad + 1, (n, 2), generator=gen)
        flips = torch.rand(n, generator=gen) < self.augment.flip_p
        return order, offsets, flips

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        images, labels = resident(self.split, self.device, self.pad)
        order, offsets, flips = self._draw_epoch()
        if self.shard.world > 1:  # the global epoch's draws, split over the ranks
            order = self.shard.take(order)
            offsets = None if offsets is None else self.shard.take(offsets)
            flips = None if flips is None else self.shard.take(flips)
        n = order.numel()
        if offsets is None or flips is None:  # no augmentation: the centre of the (unpadded) store
            offsets = torch.full((n, 2), self.pad, dtype=torch.int64)
            flips = torch.zeros(n, dtype=torch.bool)
        # one transfer per epoch: order, row offset, column offset, flip
        plan = torch.stack([order, offsets[:, 0], offsets[:, 1], flips.to(torch.int64)], 1).to(self.device)
        rows_base = torch.arange(self.height, device=self.device)
        cols_base = torch.arange(self.width, device=self.device)
        cols_flip = cols_base.flip(0)
        for start in range(0, n, self.batch_size):
            chunk = plan[start : start + self.batch_size]
            idx, dy, dx, flip = chunk.unbind(1)
            rows = dy[:, None] + rows_base  # [B, H]
            cols = dx[:, None] + torch.where(flip[:, None].bool(), cols_flip, cols_base)  # [B, W]
            x = images[idx[:, None, None], rows[:, :, None], cols[:, None, :]]  # [B, H, W, C] uint8
            x = x.permute(0, 3, 1, 2)  # NCHW view with channels_last strides
            if not self.channels_last:
                x = x.contiguous()
            # v2.ToDtype(float32, scale=True) then v2.Normalize, op for op
            x = x.to(torch.float32).mul_(1.0 / 255).sub_(self.mean).div_(self.std)
            yield x, labels[idx]


def train_batches(
    data: LTData, *, device: torch.device, sampler: Order, batch_size: int, generator: torch.Generator,
    samples_per_class: int = 4, channels_last: bool = True, shard: Shard = Shard(),
) -> DeviceBatches:
    """Training batches of ``data.train`` with the data set's augmentation (:func:`train_augmentation`)."""
    if not isinstance(data.train, ArraySplit):
        raise TypeError(f"the fast path needs an ArraySplit, got {type(data.train).__name__}")
    aug = train_augmentation(data)
    if data.train.images.shape[1:3] != (data.image_size, data.image_size):
        raise ValueError(f"images must be {data.image_size}x{data.image_size} (the crop size), "
                         f"got {tuple(data.train.images.shape[1:3])}")
    return DeviceBatches(
        data.train, mean=data.mean, std=data.std, batch_size=batch_size, device=device, sampler=sampler,
        generator=generator, num_classes=data.num_classes, samples_per_class=samples_per_class, augment=aug,
        channels_last=channels_last, shard=shard,
    )


def eval_batches(data: LTData, split: str, *, device: torch.device, batch_size: int,
                 channels_last: bool = True) -> DeviceBatches:
    """Sequential, un-augmented batches of ``data.<split>`` (what the eval transform gives)."""
    s = getattr(data, split)
    if not isinstance(s, ArraySplit):
        raise TypeError(f"the fast path needs an ArraySplit, got {type(s).__name__}")
    return DeviceBatches(s, mean=data.mean, std=data.std, batch_size=batch_size, device=device,
                         sampler="sequential", num_classes=data.num_classes, channels_last=channels_last)
