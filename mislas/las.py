"""Label-aware smoothing (LAS) and its related functions ε_y = f(N_y).

Written by hand because no library offers a per-class smoothing factor driven by class
counts (``torch.nn.CrossEntropyLoss(label_smoothing=...)`` takes a single scalar, and
spreads it over all K classes).

Two targets are offered, because the paper and its reference code disagree:

* ``"paper"`` (seed Eq. 9): q_y = 1 − ε_y and q_i = ε_y / (K − 1) for i ≠ y. Its optimum
  (Eq. 12) is the finite logit gap z_y − z_i = log((K − 1)(1 − ε_y) / ε_y).
* ``"reference"`` (the public reference code): (1 − ε_y)·NLL + ε_y·mean_k(−log p_k), i.e.
  q_y = 1 − ε_y + ε_y / K and q_i = ε_y / K; optimum gap log((1 − ε_y + ε_y/K) / (ε_y/K)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mislas import spec
from mislas.errors import UsageError
from mislas.spec import FORMS, TARGETS

__all__ = ["FORMS", "TARGETS", "LabelAwareSmoothing", "related_function"]


def _check_eps(name: str, value: float) -> float:
    """ε is a probability mass taken from the true class: [0, 1) keeps q_y > 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be a number in [0, 1), got {value!r}") from None
    if not (0.0 <= v < 1.0):  # also rejects NaN
        raise UsageError(f"{name} must lie in [0, 1), got {value!r}")
    return v


def _check_counts(counts: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
    """Counts are training images per class: a non-empty 1-D array of positive integers."""
    if isinstance(counts, torch.Tensor):
        counts = counts.detach().cpu().numpy()
    try:
        arr = np.asarray(counts)
    except ValueError:
        raise UsageError(f"counts must be a non-empty 1-D sequence of positive integers, got {counts!r}") from None
    if arr.ndim != 1 or arr.size == 0:
        raise UsageError(f"counts must be a non-empty 1-D sequence of positive integers, got shape {arr.shape}")
    if arr.dtype.kind == "b" or arr.dtype.kind not in "iuf":
        raise UsageError(f"counts must be a non-empty 1-D sequence of positive integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr) & (arr == np.round(arr))):
        bad = arr[~(np.isfinite(arr) & (arr == np.round(arr)))][0].item()
        raise UsageError(f"counts must be positive integers, got {bad!r}")
    if np.any(arr <= 0):
        raise UsageError(f"counts must be positive integers, got {arr[arr <= 0][0].item()!r}")
    return arr.astype(np.float64)


def related_function(
    counts: Sequence[int] | np.ndarray | torch.Tensor,
    eps_1: float,
    eps_k: float,
    form: str = "concave",
    p: float | None = None,
) -> torch.Tensor:
    """Per-class smoothing factor ε_y = f(N_y), float32 tensor of shape [K] (:func:`mislas.spec.related_function`).

    N_1 is the largest and N_K the smallest count; x = (N_y − N_K) / (N_1 − N_K), so that
    every form gives f(N_1) = ε_1 and f(N_K) = ε_K. ``eps_k > eps_1`` is allowed (the formula
    does not need an order). ``p`` is used only by ``form="exp"`` (Eq. 7) and is ignored by
    the other forms. With balanced counts (N_1 == N_K) x is undefined; every class then gets
    ε_1 instead of the reference code's NaN.
    """
    if form not in FORMS:
        raise UsageError(f"form must be one of {', '.join(FORMS)}, got {form!r}")
    e1 = _check_eps("eps_1", eps_1)
    ek = _check_eps("eps_k", eps_k)
    pv: float | None = None
    if form == "exp":
        if p is None:
            raise UsageError("p must be given (p > 0) when form='exp', got None")
        try:
            pv = float(p)
        except (TypeError, ValueError):
            raise UsageError(f"p must be a number > 0, got {p!r}") from None
        if not (pv > 0.0 and math.isfinite(pv)):
            raise UsageError(f"p must be a finite number > 0, got {p!r}")
    n = _check_counts(counts)
    eps = spec.related_function(n, e1, ek, form=form, p=pv)  # the equations (Eq. 3.a-3.c, 7)
    return torch.from_numpy(eps).to(torch.float32)


class LabelAwareSmoothing(nn.Module):
    """Cross-entropy against a label-aware smoothed target, averaged over the batch.

    ε per class lives in the registered buffer ``epsilon`` so that it follows
    ``.to(device)`` / ``.to(dtype)`` with the model. This module does not log anything;
    callers record which ``target`` (``"paper"`` or ``"reference"``) a run used, together
    with ``form``, ``eps_1``, ``eps_k`` and ``p`` (all shown by ``repr``).

    A row whose ε_y is 0 (e.g. ``eps_k=0`` for the tail) reduces exactly to plain
    cross-entropy; logits must be finite.
    """

    epsilon: torch.Tensor

    def __init__(
        self,
        counts: Sequence[int] | np.ndarray | torch.Tensor,
        eps_1: float,
        eps_k: float,
        form: str = "concave",
        p: float | None = None,
        target: str = "paper",
    ) -> None:
        super().__init__()
        if target not in TARGETS:
            raise UsageError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
        eps = related_function(counts, eps_1, eps_k, form=form, p=p)
        if eps.numel() < 2:
            raise UsageError(f"counts must cover at least 2 classes for label smoothing, got {eps.numel()}")
        self.register_buffer("epsilon", eps)
        self.form = form
        self.eps_1 = float(eps_1)
        self.eps_k = float(eps_k)
        self.p = float(p) if (form == "exp" and p is not None) else None  # ignored otherwise
        self.target = target

    @property
    def num_classes(self) -> int:
        """Number of classes K (one ε per class)."""
        return int(self.epsilon.numel())

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean label-aware smoothed cross-entropy of ``logits`` [B, K] against ``labels`` [B]."""
        k = self.num_classes
        if logits.ndim != 2 or logits.shape[1] != k:
            raise ValueError(f"logits must have shape [B, {k}], got {tuple(logits.shape)}")
        if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
            raise ValueError(
                f"labels must have shape [B] with B = logits.shape[0] = {logits.shape[0]}, got {tuple(labels.shape)}"
            )
        log_p = F.log_softmax(logits, dim=1)
        eps = self.epsilon[labels].to(log_p.dtype)
        nll = -log_p.gather(1, labels.unsqueeze(1)).squeeze(1)
        total = -log_p.sum(dim=1)  # Σ_k −log p_k
        if self.target == "paper":
            # −Σ q log p with q_y = 1 − ε, q_i = ε/(K−1): the K−1 non-true terms share ε.
            loss = (1.0 - eps) * nll + eps / (k - 1) * (total - nll)
        else:
            loss = (1.0 - eps) * nll + eps / k * total
        return loss.mean()

    def extra_repr(self) -> str:
        """The loss's settings, shown by ``repr``."""
        return (
            f"form={self.form!r}, eps_1={self.eps_1}, eps_k={self.eps_k}, p={self.p}, "
            f"target={self.target!r}, num_classes={self.num_classes}"
        )
