"""Class-aware (class-balanced) sampling for Stage 2.

Hand-written: neither torch nor torchvision has this sampler (``WeightedRandomSampler`` draws
i.i.d. with replacement, which is balanced only in expectation and has no 4-image runs).
It follows method.md, i.e. the behaviour of the MiSLAS / decoupling reference: each draw takes
the next class from a shuffled cycle over the classes (reshuffled when exhausted), then
``samples_per_class`` consecutive indices from that class's own shuffled cycle (reshuffled
when exhausted); an epoch has ``K * max class count`` samples.

By default iterating again *continues* the cycles where the previous epoch stopped (as the reference
does, whose cycles live on the sampler), so two epochs differ, and the whole sequence of
epochs is a deterministic function of the generator's state at construction. If an epoch
length is not a multiple of ``samples_per_class`` its last run is cut short.
``restart_each_epoch=True`` (what training uses) starts new cycles from the generator's state
at each iteration, so resumed runs reproduce uninterrupted ones.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from mislas.data.lt import per_class_indices


class _ShuffledCycle:
    """Items in a random order, reshuffled with ``generator`` each time they run out."""

    def __init__(self, items: np.ndarray, generator: torch.Generator) -> None:
        self.items = items
        self.generator = generator
        self.order = self._shuffle()
        self.pos = 0

    def _shuffle(self) -> np.ndarray:
        order: np.ndarray = self.items[torch.randperm(self.items.size, generator=self.generator).numpy()]
        return order

    def take(self, count: int) -> np.ndarray:
        """The next ``count`` items of the cycle, reshuffling as often as needed."""
        out = []
        while count > 0:
            if self.pos == self.order.size:
                self.order, self.pos = self._shuffle(), 0
            chunk = self.order[self.pos : self.pos + count]
            self.pos += chunk.size
            count -= chunk.size
            out.append(chunk)
        return np.concatenate(out) if out else np.empty(0, dtype=self.items.dtype)


class ClassAwareSampler(Sampler[int]):
    """Class-balanced sampler: shuffled class cycle, runs of ``samples_per_class`` per class.

    Every class must have at least one image (an empty class cannot be sampled from).
    """

    def __init__(
        self,
        labels: Sequence[int] | torch.Tensor,
        num_classes: int,
        samples_per_class: int = 4,
        generator: torch.Generator | None = None,
        restart_each_epoch: bool = False,
    ) -> None:
        label_arr = torch.as_tensor(labels).to(torch.int64).numpy().reshape(-1)
        if num_classes < 1:
            raise ValueError(f"num_classes >= 1 must hold, got num_classes={num_classes}")
        if samples_per_class < 1:
            raise ValueError(f"samples_per_class >= 1 must hold, got samples_per_class={samples_per_class}")
        if label_arr.size and (label_arr.min() < 0 or label_arr.max() >= num_classes):
            raise ValueError(
                f"labels must lie in 0..{num_classes - 1}, got {int(label_arr.min())}..{int(label_arr.max())}"
            )
        per_class = per_class_indices(label_arr, num_classes)
        empty = [c for c, idx in enumerate(per_class) if idx.size == 0]
        if empty:
            raise ValueError(
                f"every class needs >= 1 image for class-aware sampling; "
                f"{len(empty)} classes have none, e.g. {empty[:10]}"
            )
        if generator is None:
            # Same fallback as torch's RandomSampler: one draw from the global RNG.
            generator = torch.Generator().manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        self.num_classes = num_classes
        self.samples_per_class = samples_per_class
        self.generator = generator
        self.max_count = max(idx.size for idx in per_class)
        self.restart_each_epoch = restart_each_epoch
        self._per_class = per_class
        self._new_cycles()

    def _new_cycles(self) -> None:
        self._class_cycle = _ShuffledCycle(np.arange(self.num_classes), self.generator)
        self._data_cycles = [_ShuffledCycle(idx, self.generator) for idx in self._per_class]

    def __len__(self) -> int:
        return self.num_classes * self.max_count

    def epoch_indices(self) -> np.ndarray:
        """The next epoch's indices, advancing the cycles.

        Equal to drawing run by run, computed per class instead: the class sequence of the
        epoch is taken from the class cycle first, then each class hands out all its runs of
        the epoch in one ``take`` (a class's runs consume its own cycle in time order either
        way). This keeps an iNat epoch (8142 x 1000 draws) out of a Python loop per draw.
        """
        n, spc = len(self), self.samples_per_class
        runs = -(-n // spc)
        classes = self._class_cycle.take(runs)
        out = np.empty((runs, spc), dtype=np.int64)
        for c, rows in enumerate(per_class_indices(classes, self.num_classes)):
            if rows.size:
                out[rows] = self._data_cycles[c].take(rows.size * spc).reshape(rows.size, spc)
        return out.reshape(-1)[:n]

    def __iter__(self) -> Iterator[int]:
        if self.restart_each_epoch:
            # Fresh cycles from the generator's current state: a caller that reseeds the
            # generator per epoch gets each epoch's order from (seed, epoch) alone, so a run
            # resumed at epoch e draws what an uninterrupted run would have drawn.
            self._new_cycles()
        return iter(self.epoch_indices().tolist())
