"""``make_loader``: a split, a transform and a sampling rule -> a DataLoader.

Also ``epoch_order``, the one definition of an epoch's sample order, shared with the
device-resident fast path (:mod:`mislas.fastpath`) so both paths draw the same order from
the same generator (or, for Stage 2, take it from the same :class:`ClassAwareEpochs`), and
``resolve_num_workers`` ("auto": the CPUs this process was given, by Ray inside a trial or
by the affinity mask, minus one for the training loop).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator, Sized
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, SequentialSampler

from mislas.data.datasets import Transform, as_torch_dataset
from mislas.data.samplers import ClassAwareEpochs, ClassAwareSampler
from mislas.data.types import Split
from mislas.errors import UsageError

SAMPLERS = ("instance", "class_aware", "sequential")
SamplerName = Literal["instance", "class_aware", "sequential"]
Order = SamplerName | ClassAwareEpochs
"""A sampling rule by name, or Stage 2's class-aware epochs (continuing cycles, set length)."""
NumWorkers = int | Literal["auto"]
DEFAULT_PREFETCH = 4
"""Batches each worker keeps ready (torch's default is 2): slack for uneven JPEG decode times."""


@dataclass(frozen=True)
class Shard:
    """Rank ``rank`` of ``world`` data-parallel processes: the part of each epoch it trains on.

    Every rank draws the same global epoch (same generator seed), pads it to a multiple of
    ``world`` by repeating its start and takes every ``world``-th position from ``rank`` on, as
    torch's ``DistributedSampler`` does: disjoint shards of equal length, so every rank runs the
    same number of steps (a DDP step is a collective). The augmentation draws of the global
    epoch are sharded with it, so a sharded epoch is the global epoch split over ranks.
    """

    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise UsageError(f"a shard needs 0 <= rank < world, got rank={self.rank}, world={self.world}")

    def length(self, n: int) -> int:
        """Positions of this rank in an epoch of ``n``."""
        return math.ceil(n / self.world) if n else 0

    def take(self, values: torch.Tensor) -> torch.Tensor:
        """This rank's positions of an epoch's per-position tensor (first dimension)."""
        n = int(values.shape[0])
        if self.world == 1 or n == 0:
            return values
        padded = torch.arange(self.length(n) * self.world) % n
        return values[padded[self.rank :: self.world]]


def available_cpus() -> int:
    """CPUs this process may use, most specific source first.

    ``MISLAS_NUM_CPUS`` (an explicit override); inside a Ray task or actor (a Tune trial) the
    CPUs Ray assigned to it, read only if this process already imported and initialised Ray;
    else the scheduler's affinity mask (taskset, cgroup cpusets), else ``os.cpu_count()``.
    """
    env = os.environ.get("MISLAS_NUM_CPUS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise UsageError(f"MISLAS_NUM_CPUS must be a positive integer, got {env!r}") from None
    ray = sys.modules.get("ray")
    if ray is not None:
        try:
            if ray.is_initialized():
                cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
                if cpus:
                    return max(1, int(cpus))
        except Exception:  # not in a worker, or an older Ray: fall back to the affinity mask
            pass
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_num_workers(num_workers: NumWorkers) -> int:
    """``"auto"``: one fewer than :func:`available_cpus` (the training loop keeps one), at least 0."""
    if num_workers == "auto":
        return max(available_cpus() - 1, 0)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise UsageError(f"num_workers >= 0 or 'auto' must hold, got num_workers={num_workers!r}")
    return num_workers


def epoch_order(
    sampler: Order, labels: torch.Tensor, *, num_classes: int, generator: torch.Generator,
    samples_per_class: int = 4,
) -> torch.Tensor:
    """One epoch's sample indices (int64, CPU), drawn from ``generator``.

    ``instance``: one ``randperm`` (a plain shuffle); ``class_aware``: fresh
    :class:`ClassAwareSampler` cycles from the generator's state, i.e. what a sampler with
    ``restart_each_epoch=True`` draws; ``sequential``: split order, no draw. A
    :class:`ClassAwareEpochs` gives its current epoch and draws nothing from ``generator``.
    """
    if isinstance(sampler, ClassAwareEpochs):
        return torch.from_numpy(sampler.indices())
    n = int(labels.shape[0])
    if sampler == "instance":
        return torch.randperm(n, generator=generator)
    if sampler == "class_aware":
        cas = ClassAwareSampler(labels, num_classes, samples_per_class=samples_per_class, generator=generator)
        return torch.from_numpy(cas.epoch_indices())
    if sampler == "sequential":
        return torch.arange(n)
    raise UsageError(f"unknown sampler {sampler!r}; allowed: {', '.join(SAMPLERS)}")


def order_length(sampler: Order, labels: torch.Tensor, num_classes: int) -> int:
    """Samples in one epoch of ``sampler`` over ``labels``."""
    if isinstance(sampler, ClassAwareEpochs):
        return len(sampler)
    n = int(labels.shape[0])
    if sampler == "class_aware" and n:
        return num_classes * int(torch.bincount(labels, minlength=num_classes).max())
    return n


class _SeededOrder(Sampler[tuple[int, int]]):
    """Yields ``(index, seed)``: the epoch's order, then one augmentation seed per position.

    Why: with persistent workers a worker's RNG would run on across epochs, so a run resumed
    at epoch e would augment differently from an uninterrupted one, and the result would
    depend on the worker count. Drawing every seed from the (per-epoch reseeded) generator
    makes each item's augmentation a function of (seed, epoch, position) alone.
    """

    def __init__(self, kind: Order, labels: torch.Tensor, *, num_classes: int, generator: torch.Generator,
                 samples_per_class: int, shard: Shard = Shard()) -> None:
        self.kind, self.labels, self.num_classes = kind, labels, num_classes
        self.generator, self.samples_per_class, self.shard = generator, samples_per_class, shard
        self.length = shard.length(order_length(kind, labels, num_classes))

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = epoch_order(self.kind, self.labels, num_classes=self.num_classes, generator=self.generator,
                            samples_per_class=self.samples_per_class)
        base = int(torch.randint(0, 2**62, (), generator=self.generator))
        if self.shard.world == 1:
            return iter(zip(order.tolist(), range(base, base + order.numel())))
        seeds = torch.arange(base, base + order.numel(), dtype=torch.int64)
        return iter(zip(self.shard.take(order).tolist(), self.shard.take(seeds).tolist()))


class _SeededItems(Dataset[tuple[Any, int]]):
    """``dataset[index]`` with torch's CPU RNG seeded by the item's seed (state restored after)."""

    def __init__(self, dataset: Dataset[tuple[Any, int]]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        assert isinstance(self.dataset, Sized)
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Any, int]:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.dataset[index]


def make_loader(
    split: Split,
    transform: Transform | None,
    *,
    batch_size: int,
    sampler: Order = "instance",
    num_classes: int,
    generator: torch.Generator,
    num_workers: NumWorkers = 0,
    drop_last: bool = False,
    samples_per_class: int = 4,
    prefetch_factor: int = DEFAULT_PREFETCH,
    pin_memory: bool | None = None,
    shard: Shard = Shard(),
) -> DataLoader[tuple[torch.Tensor, int]]:
    """A DataLoader over ``split``.

    ``instance``: a plain shuffle (Stage 1); ``class_aware``: :class:`ClassAwareSampler` with
    runs of ``samples_per_class``; a :class:`ClassAwareEpochs`: its epochs (Stage 2, the
    caller sets the epoch); ``sequential``: split order (evaluation).
    ``generator`` draws each epoch's order and then one augmentation seed per item (see
    :class:`_SeededOrder`), so a caller that reseeds it per epoch gets the same batches with
    any worker count, and on resume. ``num_workers="auto"`` uses :func:`resolve_num_workers`;
    workers persist across epochs and keep ``prefetch_factor`` batches ready; memory is
    pinned when CUDA is available (``pin_memory`` overrides). ``shard``: this process's part of
    each training epoch in data-parallel training (:class:`Shard`; evaluation is not sharded).
    """
    if batch_size < 1:
        raise UsageError(f"batch_size >= 1 must hold, got batch_size={batch_size}")
    workers = resolve_num_workers(num_workers)
    if prefetch_factor < 1:
        raise UsageError(f"prefetch_factor >= 1 must hold, got prefetch_factor={prefetch_factor}")
    dataset: Dataset[Any] = as_torch_dataset(split, transform)
    chosen: Sampler[Any]
    if isinstance(sampler, ClassAwareEpochs):
        chosen = _SeededOrder(sampler, split.labels, num_classes=num_classes, generator=generator,
                              samples_per_class=samples_per_class, shard=shard)
        dataset = _SeededItems(dataset)
    elif sampler == "sequential":
        chosen = SequentialSampler(range(int(split.labels.shape[0])))
    elif sampler in ("instance", "class_aware"):
        if sampler == "class_aware":  # check the labels now, not at the first epoch
            ClassAwareSampler(split.labels, num_classes, samples_per_class=samples_per_class,
                              generator=torch.Generator())
        chosen = _SeededOrder(sampler, split.labels, num_classes=num_classes, generator=generator,
                              samples_per_class=samples_per_class, shard=shard)
        dataset = _SeededItems(dataset)
    else:
        raise UsageError(f"unknown sampler {sampler!r}; allowed: {', '.join(SAMPLERS)}")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=chosen,
        num_workers=workers,
        drop_last=drop_last,
        # The loader's own draw (the workers' base seed) comes from a private generator, so it
        # does not shift ``generator``'s stream between fresh and persistent iterators.
        generator=torch.Generator().manual_seed(0),
        persistent_workers=workers > 0,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
    )
