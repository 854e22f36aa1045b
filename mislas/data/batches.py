"""Batch factories of the stages: training and evaluation batches, device-resident or a DataLoader.

Either path (:mod:`mislas.fastpath` on the device, or :func:`mislas.data.make_loader`)
draws its order and augmentation from generators the caller reseeds per epoch, so both
give runs that resume where they stopped.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from mislas import fastpath
from mislas.config import RunConfig
from mislas.data.loaders import Order, Shard, make_loader
from mislas.data.transforms import eval_transform, train_transform
from mislas.data.types import LTData

__all__ = ["Batches", "eval_batches", "train_batches"]

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
"""(inputs, labels) batches of a split, on the CPU or already on the device."""


def train_batches(data: LTData, cfg: RunConfig, *, sampler: Order, batch_size: int, generator: torch.Generator,
                  samples_per_class: int = 4, device: torch.device | None = None, shard: Shard = Shard()) -> Batches:
    """Training batches: device-resident (:mod:`mislas.fastpath`) when selected, else a DataLoader.

    Either way the order comes from ``sampler`` (a name, drawn from ``generator``; or Stage 2's
    :class:`ClassAwareEpochs`) and the augmentation from ``generator``, reseeded per epoch.
    """
    if device is not None and fastpath.selected(data.train, cfg.data.loader):
        return fastpath.train_batches(data, device=device, sampler=sampler, batch_size=batch_size,
                                      generator=generator, samples_per_class=samples_per_class,
                                      channels_last=cfg.channels_last, shard=shard)
    return make_loader(
        data.train, train_transform(data), batch_size=batch_size, sampler=sampler, num_classes=data.num_classes,
        generator=generator, num_workers=cfg.data.num_workers, samples_per_class=samples_per_class, shard=shard,
    )


def eval_batches(data: LTData, split: str, cfg: RunConfig, device: torch.device | None = None) -> Batches:
    """Sequential eval batches: on ``device`` via the fast path when ``cfg.data.loader`` selects it."""
    if device is not None and fastpath.selected(getattr(data, split), cfg.data.loader):
        return fastpath.eval_batches(data, split, device=device, batch_size=cfg.eval.batch_size,
                                     channels_last=cfg.channels_last)
    return make_loader(
        getattr(data, split), eval_transform(data), batch_size=cfg.eval.batch_size, sampler="sequential",
        num_classes=data.num_classes, generator=torch.Generator().manual_seed(0), num_workers=cfg.data.num_workers,
    )
