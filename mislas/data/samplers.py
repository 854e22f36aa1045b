"""Class-aware (class-balanced) sampling for Stage 2, and how long a Stage-2 epoch is.

Hand-written: neither torch nor torchvision has this sampler (``WeightedRandomSampler`` draws
i.i.d. with replacement, which is balanced only in expectation and has no 4-image runs).
It follows method.md, i.e. the behaviour of the MiSLAS / decoupling reference: each draw takes
the next class from a shuffled cycle over the classes (reshuffled when exhausted), then
``samples_per_class`` consecutive indices from that class's own shuffled cycle (reshuffled
when exhausted); the sampler's nominal epoch has ``K * max class count`` samples.

By default iterating again *continues* the cycles where the previous epoch stopped (as the reference
does, whose cycles live on the sampler), so two epochs differ, and the whole sequence of
epochs is a deterministic function of the generator's state at construction. If an epoch
length is not a multiple of ``samples_per_class`` its last run is cut short.
``restart_each_epoch=True`` starts new cycles from the generator's state at each iteration.

Training uses :class:`ClassAwareEpochs`: continuing cycles, epochs of any length
(:func:`class_aware_epoch_samples`: the reference's ``ceil(N/B) + 1`` batches by default), and
epoch ``e``'s draws a function of ``(seed, e)`` alone, so a resumed run draws what an
uninterrupted one would have.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Literal

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
        """The next nominal epoch's indices (``len(self)`` of them), advancing the cycles."""
        return self.take(len(self))

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` indices of the stream, advancing the cycles (a cut last run is dropped).

        Equal to drawing run by run, computed per class instead: the class sequence of the
        draw is taken from the class cycle first, then each class hands out all its runs of
        the draw in one ``take`` (a class's runs consume its own cycle in time order either
        way). This keeps an iNat epoch (8142 x 1000 draws) out of a Python loop per draw.
        """
        if n < 0:
            raise ValueError(f"n >= 0 must hold, got n={n}")
        spc = self.samples_per_class
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


EpochLength = int | Literal["reference", "sampler"]


def class_aware_epoch_samples(epoch_length: EpochLength, class_counts: Sequence[int], batch_size: int) -> int:
    """Samples in one Stage-2 epoch of class-aware batches of ``batch_size``.

    * ``"reference"``: what the MiSLAS reference trains on per epoch. Its train_stage2.py
      (dvlab-research/MiSLAS at 0fc381e) sets ``end_steps = ceil(N / B)`` from the LT training
      set's size N (lines 294-295) and breaks when the batch index exceeds it (lines 318-320), so an epoch
      is ``ceil(N/B) + 1`` batches, or the sampler's whole ``K * n_max`` if that is shorter
      (the ``for`` loop then ends first). Kang et al.'s cRT/LWS code (facebookresearch/
      classifier-balancing f162ade, run_networks.py: ``epoch_steps`` in ``__init__`` and the
      ``train`` loop) runs
      ``floor(N/B)`` steps instead; an integer
      ``epoch_length`` reproduces that.
    * ``"sampler"``: the sampler's nominal epoch, ``K * n_max`` (every class drawn as often as
      the largest has images): K·n_max/N times the reference's (4x on CIFAR-10-LT β=100, 29x
      on Places-LT).
    * an integer S: exactly S batches (S·B samples; the continuing class-aware stream has no end).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size >= 1 must hold, got batch_size={batch_size}")
    counts = [int(c) for c in class_counts]
    if not counts or min(counts) < 1:
        raise ValueError(f"class_counts must be a non-empty sequence of positive counts, got {class_counts!r}")
    nominal = len(counts) * max(counts)
    if epoch_length == "sampler":
        return nominal
    if epoch_length == "reference":
        return min((math.ceil(sum(counts) / batch_size) + 1) * batch_size, nominal)
    if isinstance(epoch_length, bool) or not isinstance(epoch_length, int) or epoch_length < 1:
        raise ValueError(f"epoch_length must be 'reference', 'sampler' or an integer >= 1, got {epoch_length!r}")
    return epoch_length * batch_size


def class_aware_epoch_steps(epoch_length: EpochLength, class_counts: Sequence[int], batch_size: int) -> int:
    """Optimizer steps (batches, the last one possibly partial) in one Stage-2 epoch."""
    return math.ceil(class_aware_epoch_samples(epoch_length, class_counts, batch_size) / batch_size)


class ClassAwareEpochs:
    """Stage 2's class-aware epochs: cycles that continue across epochs, epochs of a set length.

    Why continue: the reference's sampler (Kang et al.'s ClassAwareSampler, classifier-balancing
    f162ade, data/ClassAwareSampler.py, which MiSLAS's datasets/cifar10.py etc. use) builds its class
    cycle and per-class cycles once, in ``__init__``; ``__iter__`` returns a new generator over those same cycles. Each epoch's new ``for`` over the
    loader (MiSLAS train_stage2.py at 0fc381e, line 318) therefore starts a new iteration whose count
    restarts but whose cycles go on where the last epoch left them: over a few short epochs a
    head class is walked through without repeats. We follow that. Departure: the reference's
    DataLoader has prefetched a few batches past its break, which are lost to the next epoch;
    here the next epoch continues exactly after the last used draw.

    Resumable: epoch ``e`` (1-based, :meth:`set_epoch`) is drawn from a stream seeded with
    ``seed``; asked for an epoch other than the next, the stream is replayed from its seed one
    epoch at a time (the same chunks, hence the same draws), so a resumed run's epoch ``e``
    equals an uninterrupted run's. Replaying costs index arithmetic only.
    """

    def __init__(
        self,
        labels: Sequence[int] | torch.Tensor,
        num_classes: int,
        *,
        seed: int,
        samples_per_class: int = 4,
        samples_per_epoch: int | None = None,
    ) -> None:
        self.labels = torch.as_tensor(labels).to(torch.int64).reshape(-1)
        self.num_classes = num_classes
        self.samples_per_class = samples_per_class
        self.seed = int(seed)
        probe = self._new_stream()  # validates the labels now, not at the first epoch
        self.samples_per_epoch = len(probe) if samples_per_epoch is None else int(samples_per_epoch)
        if self.samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch >= 1 must hold, got samples_per_epoch={samples_per_epoch}")
        self.epoch = 1
        self._stream: ClassAwareSampler | None = probe
        self._served = 0  # epochs already drawn from self._stream
        self._cached: tuple[int, np.ndarray] | None = None

    def _new_stream(self) -> ClassAwareSampler:
        return ClassAwareSampler(self.labels, self.num_classes, samples_per_class=self.samples_per_class,
                                 generator=torch.Generator().manual_seed(self.seed))

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __repr__(self) -> str:
        return (f"ClassAwareEpochs(num_classes={self.num_classes}, samples_per_class={self.samples_per_class}, "
                f"samples_per_epoch={self.samples_per_epoch}, seed={self.seed}, epoch={self.epoch})")

    def set_epoch(self, epoch: int) -> None:
        """Which (1-based) epoch :meth:`indices` returns next."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
            raise ValueError(f"epoch >= 1 must hold, got epoch={epoch!r}")
        self.epoch = epoch

    def indices(self) -> np.ndarray:
        """Epoch :attr:`epoch`'s sample indices (int64, ``len(self)`` of them)."""
        e = self.epoch
        if self._cached is not None and self._cached[0] == e:
            return self._cached[1]
        if self._stream is None or self._served >= e:
            self._stream, self._served = self._new_stream(), 0
        while self._served < e - 1:  # replay the epochs before e, one chunk each
            self._stream.take(self.samples_per_epoch)
            self._served += 1
        out = self._stream.take(self.samples_per_epoch)
        self._served = e
        self._cached = (e, out)
        return out
