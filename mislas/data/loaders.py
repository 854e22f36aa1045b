"""``make_loader``: a split, a transform and a sampling rule -> a DataLoader."""

from __future__ import annotations

from typing import Literal

import torch
from torch.utils.data import DataLoader, RandomSampler, Sampler, SequentialSampler

from mislas.data.datasets import Transform, as_torch_dataset
from mislas.data.samplers import ClassAwareSampler
from mislas.data.types import Split
from mislas.errors import UsageError

SAMPLERS = ("instance", "class_aware", "sequential")
SamplerName = Literal["instance", "class_aware", "sequential"]


def make_loader(
    split: Split,
    transform: Transform | None,
    *,
    batch_size: int,
    sampler: SamplerName = "instance",
    num_classes: int,
    generator: torch.Generator,
    num_workers: int = 0,
    drop_last: bool = False,
    samples_per_class: int = 4,
) -> DataLoader[tuple[torch.Tensor, int]]:
    """A DataLoader over ``split``.

    ``instance``: a plain shuffle (Stage 1); ``class_aware``: :class:`ClassAwareSampler` with
    runs of 4 (Stage 2); ``sequential``: split order (evaluation). ``generator`` drives the
    sampler and the workers' base seed, so worker-side augmentation is reproducible too; with
    ``num_workers=0`` augmentation draws from torch's global RNG (seeded by the caller).
    Workers persist across epochs, and memory is pinned when CUDA is available.
    """
    if batch_size < 1:
        raise UsageError(f"batch_size >= 1 must hold, got batch_size={batch_size}")
    if num_workers < 0:
        raise UsageError(f"num_workers >= 0 must hold, got num_workers={num_workers}")
    dataset = as_torch_dataset(split, transform)
    chosen: Sampler[int]
    if sampler == "instance":
        chosen = RandomSampler(dataset, generator=generator)
    elif sampler == "class_aware":
        chosen = ClassAwareSampler(split.labels, num_classes, samples_per_class=samples_per_class, generator=generator,
                                   restart_each_epoch=True)
    elif sampler == "sequential":
        chosen = SequentialSampler(dataset)
    else:
        raise UsageError(f"unknown sampler {sampler!r}; allowed: {', '.join(SAMPLERS)}")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=chosen,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=generator,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
