"""The seeds of a run's random streams, derived from (run seed, stage, epoch).

Every random component (sampler order, augmentation, mixup, re-initialisation) owns a
generator seeded from these, so an interrupted run resumed at its last finished epoch draws
the same data order as an uninterrupted one.
"""

from __future__ import annotations

__all__ = ["class_aware_seed", "epoch_seed"]


def epoch_seed(seed: int, stage: int, epoch: int) -> int:
    """A distinct, reproducible seed for each (run seed, stage, epoch)."""
    return (seed * 1_000_003 + stage * 10_007 + epoch) % (2**63 - 1)


def class_aware_seed(seed: int) -> int:
    """The seed of Stage 2's class-aware stream (:class:`ClassAwareEpochs`), apart from the epoch seeds."""
    return (epoch_seed(seed, 2, 0) + 0x9E3779B97F4A7C15) % (2**63 - 1)
