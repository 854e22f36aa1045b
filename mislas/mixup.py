"""Batch mixup (Zhang et al. 2018), as MiSLAS's Stage 1 (and optionally Stage 2) trains with it."""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["Mixup"]


class Mixup:
    """Batch mixup: x = λx_i + (1−λ)x_j, λ ~ Beta(α, α), j a permutation of the batch.

    Hand-written rather than ``torchvision.transforms.v2.MixUp`` because it owns its
    generator (reproducible, resumable) and returns both label sets for the λ-weighted loss.
    """

    def __init__(self, alpha: float, seed: int, stream: int = 0) -> None:
        """Seed the λ and pairing generators of one mixup stream.

        ``stream``: a data-parallel rank; each rank draws its own λ and pairs (as the
        reference's per-process ``mixup_data``), rank 0 the single-process draws.
        """
        if not (alpha > 0 and math.isfinite(alpha)):
            raise ValueError(f"alpha > 0 must hold, got alpha={alpha}")
        self.alpha = alpha
        if stream:
            seed = int(np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0] >> 1)
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """Mix a batch with a random permutation of itself; returns (mixed x, y, partners' y, λ)."""
        lam = float(self.rng.beta(self.alpha, self.alpha))
        perm = torch.randperm(x.shape[0], generator=self.gen)
        if x.device.type == "cuda":  # a pageable host->device copy would wait for the GPU every step
            perm = perm.pin_memory().to(x.device, non_blocking=True)
        else:
            perm = perm.to(x.device)
        return lam * x + (1.0 - lam) * x[perm], y, y[perm], lam

    def __repr__(self) -> str:
        return f"Mixup(alpha={self.alpha})"
