"""Learning-rate factors per epoch: Stage 1's warm-up + multistep or cosine, Stage 2's cosine."""

from __future__ import annotations

import math

from mislas.config import Stage1Config

__all__ = ["cosine_factor", "stage1_lr_factor"]


def stage1_lr_factor(cfg: Stage1Config, epoch: int) -> float:
    """Learning-rate factor of 1-based ``epoch``: warm-up + multistep (CIFAR) or cosine."""
    if cfg.schedule == "cosine":
        return cosine_factor(epoch - 1, cfg.epochs)
    if epoch <= cfg.warmup_epochs:
        return epoch / cfg.warmup_epochs
    return float(0.1 ** sum(epoch > m for m in cfg.milestones))


def cosine_factor(step: int, total: int) -> float:
    """½(1 + cos(π·e/E)) for 0-based epoch e: lr at the start of each of E epochs."""
    return 0.5 * (1.0 + math.cos(math.pi * step / total))
