"""Scores that need no binning: NLL (nats), per-sample NLL and the multi-class Brier score."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mislas.metrics.inputs import ArrayLike, _check_logits_labels, _check_probs_labels, _row_chunks, _torch


def nll(logits: ArrayLike, labels: ArrayLike) -> float:
    """Mean cross-entropy in nats; half-precision logits are promoted to float32 first."""
    lg, lb = _torch(logits), _torch(labels)
    _check_logits_labels(lg, lb)
    if not lg.dtype.is_floating_point:
        raise ValueError(f"logits must be floating point, got dtype {lg.dtype}")
    if lg.dtype in (torch.float16, torch.bfloat16):
        lg = lg.float()
    per_sample = F.cross_entropy(lg, lb.long().to(lg.device), reduction="none")
    return float(per_sample.double().mean())


def _brier_sum(p: np.ndarray, labels: np.ndarray) -> float:
    """Σ_i Σ_k (p_ik − 1[y_i = k])², the un-normalised Brier score of a chunk."""
    d = p.copy()
    d[np.arange(p.shape[0]), labels] -= 1.0
    return float(np.einsum("ij,ij->", d, d))


def brier_score(probs: ArrayLike, labels: ArrayLike) -> float:
    """Multi-class Brier score: mean over samples of Σ_k (p_k − 1[y = k])², in [0, 2].

    A proper scoring rule that, unlike ECE, needs no binning. Hand-worked example: rows
    (0.7, 0.2, 0.1) with label 0 and (0.5, 0.5, 0) with label 1 score
    0.3² + 0.2² + 0.1² = 0.14 and 0.5² + 0.5² + 0² = 0.5, mean 0.32.

    >>> round(brier_score([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0]], [0, 1]), 12)
    0.32
    """
    p, lb = _check_probs_labels(probs, labels)
    return _brier_sum(p, lb) / int(p.shape[0])


def _sample_nll(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """−log softmax(logits)[label] per row, in float64, a chunk of rows at a time."""
    n, k = logits.shape
    out = np.empty(n, dtype=np.float64)
    for rows in _row_chunks(n, k):
        lp = F.log_softmax(logits[rows].double(), dim=1)
        out[rows] = (-lp.gather(1, labels[rows].view(-1, 1)).squeeze(1)).cpu().numpy()
    return out
