"""What the stages hand back: one record per finished epoch, one result per trained model.

Both are plain data, so a checkpoint stores the records as dicts (:func:`epoch_records`
reads them back) and the study turns them into Parquet rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mislas.metrics import EvalResult
from mislas.models import Network

__all__ = ["EpochRecord", "OnEpoch", "OnGroupEpoch", "StageResult", "epoch_records"]


@dataclass(frozen=True)
class EpochRecord:
    """What one finished epoch reports: to the console, to checkpoints, to Ray Tune.

    ``steps``: optimizer steps (batches) of the epoch; 0 in records written before it existed.
    """

    stage: int
    epoch: int
    lr: float
    classifier_lr: float
    train_loss: float
    val: dict[str, float | None]
    wall_s: float
    steps: int = 0


@dataclass
class StageResult:
    """A trained model with its validation and test evaluation."""

    model: Network
    val: EvalResult
    test: EvalResult
    epochs: list[EpochRecord] = field(default_factory=list)
    weight_norms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    extras: dict[str, Any] = field(default_factory=dict)
    # post-hoc temperature scaling (Guo et al. 2017): T fitted on val, and val/test with logits / T
    temperature: float | None = None
    val_ts: EvalResult | None = None
    test_ts: EvalResult | None = None


OnEpoch = Callable[[EpochRecord], None]
"""Called after each finished epoch of a single run (what a scheduler such as ASHA acts on)."""
OnGroupEpoch = Callable[[int, EpochRecord], None]
"""Called after each finished epoch of a Stage-2 group, once per member: (member index, record)."""


def epoch_records(raw: Iterable[dict[str, Any]]) -> list[EpochRecord]:
    """Records from their dicts (``dataclasses.asdict``), as checkpoints store them."""
    return [EpochRecord(**r) for r in raw]


@dataclass(frozen=True)
class FinalEvaluation:
    """One head's final evaluation: val and test, and both again after temperature scaling."""

    val: EvalResult
    test: EvalResult
    temperature: float
    val_ts: EvalResult
    test_ts: EvalResult
