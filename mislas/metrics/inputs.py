"""Input checks and conversions shared by the metrics: one-line errors naming the argument.

Metrics take torch tensors, numpy arrays or sequences; these turn them into float64 / int64
numpy arrays (or tensors) and refuse bad shapes, ranges and dtypes before anything is computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray | Sequence[Any]

# Rows per chunk when a metric walks an [N, K] array: bounds the temporaries to ~2**20 cells
# (8 MiB per float64 array), so iNaturalist's 8,142 classes do not need N·K extra memory.
_CHUNK_CELLS = 1 << 20


def _np(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _torch(x: ArrayLike) -> torch.Tensor:
    return x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _check_n_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    return int(n_bins)


def _check_conf_correct(confidences: ArrayLike, correct: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validated 1-D float64 confidences in [0, 1] and 0/1 correctness of the same length."""
    conf = _np(confidences).astype(np.float64)
    corr = _np(correct)
    if conf.ndim != 1 or corr.ndim != 1:
        raise ValueError(f"confidences and correct must be 1-D, got shapes {conf.shape} and {corr.shape}")
    if conf.shape[0] != corr.shape[0]:
        raise ValueError(
            f"confidences and correct must have the same length, got {conf.shape[0]} and {corr.shape[0]}"
        )
    if conf.size == 0:
        raise ValueError("confidences must be non-empty, got 0 samples")
    if not np.all((conf >= 0.0) & (conf <= 1.0)):  # also rejects NaN
        bad = conf[~((conf >= 0.0) & (conf <= 1.0))][0].item()
        raise ValueError(f"confidences must lie in [0, 1], got {bad!r}")
    corr_f = corr.astype(np.float64)
    if not np.all((corr_f == 0.0) | (corr_f == 1.0)):
        raise ValueError("correct must hold booleans or 0/1 values")
    return conf, corr_f


def _check_logits_labels(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape [N, K], got {tuple(logits.shape)}")
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"labels must have shape [N] with N = logits.shape[0] = {logits.shape[0]}, got {tuple(labels.shape)}"
        )
    if logits.shape[0] == 0:
        raise ValueError("logits must hold at least one sample, got 0")
    k = logits.shape[1]
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= k:
        raise ValueError(f"labels must lie in [0, {k - 1}] for K = {k} classes, got range [{lo}, {hi}]")


def _check_labels(labels: ArrayLike, n: int, k: int | None) -> np.ndarray:
    """1-D int64 class indices of length n, in [0, k) unless k is None (checked elsewhere)."""
    lb = _np(labels)
    if lb.ndim != 1 or lb.shape[0] != n:
        raise ValueError(f"labels must have shape [N] with N = {n}, got {lb.shape}")
    if lb.dtype == np.bool_ or not np.issubdtype(lb.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {lb.dtype}")
    lb = lb.astype(np.int64)
    if k is not None and lb.size and (lb.min() < 0 or lb.max() >= k):
        raise ValueError(f"labels must lie in [0, {k - 1}] for K = {k} classes, got range [{lb.min()}, {lb.max()}]")
    return lb


def _check_probs_labels(probs: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """[N, K] float64 probabilities (finite, in [0, 1], rows summing to 1) and int64 labels.

    The row-sum check is there to catch logits passed where probabilities are expected.
    """
    p = _np(probs)
    if p.ndim != 2:
        raise ValueError(f"probs must have shape [N, K], got {p.shape}")
    if p.shape[0] == 0:
        raise ValueError("probs must hold at least one sample, got 0")
    p = p.astype(np.float64)
    if not np.all((p >= 0.0) & (p <= 1.0)):  # also rejects NaN
        bad = p[~((p >= 0.0) & (p <= 1.0))][0].item()
        raise ValueError(f"probs must lie in [0, 1], got {bad!r}")
    row_err = np.abs(p.sum(axis=1) - 1.0)
    if row_err.max() > 1e-3:
        i = int(row_err.argmax())
        raise ValueError(f"probs rows must sum to 1 (softmax outputs, not logits), row {i} sums to {p[i].sum()!r}")
    return p, _check_labels(labels, p.shape[0], p.shape[1])


def _row_chunks(n: int, k: int) -> list[slice]:
    """Row slices of about ``_CHUNK_CELLS`` cells each for an [n, k] array."""
    step = max(1, _CHUNK_CELLS // max(k, 1))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]
