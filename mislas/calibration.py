"""Post-hoc temperature scaling (Guo et al. 2017), the usual baseline MiSLAS's calibration is
compared against: one scalar T > 0 fitted on validation logits, test logits divided by T.

Temperature scaling leaves the arg-max, hence top-1, unchanged and changes only confidence.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from mislas.metrics import ArrayLike, EvalResult, _check_logits_labels, _np, _torch, evaluate_logits

# The search interval for T. A fit that ends on a bound means the NLL is still falling there
# (separable data for the lower bound, logits carrying no signal for the upper one).
TEMPERATURE_BOUNDS: tuple[float, float] = (1e-2, 1e2)

# Rows per chunk: keeps the float64 temporaries near 2**20 cells whatever K is.
_CHUNK_CELLS = 1 << 20
_MAX_ITER = 200


def _as_logits(logits: ArrayLike, name: str = "logits") -> torch.Tensor:
    lg = _torch(logits)
    if lg.ndim != 2:
        raise ValueError(f"{name} must have shape [N, K], got {tuple(lg.shape)}")
    if lg.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one sample, got 0")
    if not lg.dtype.is_floating_point:
        raise ValueError(f"{name} must be floating point, got dtype {lg.dtype}")
    if not bool(torch.isfinite(lg).all()):
        n_nan = int(torch.isnan(lg).sum())
        n_inf = int(torch.isinf(lg).sum())
        raise ValueError(f"{name} must be finite, got {n_nan} NaN and {n_inf} infinite entries")
    return lg


def _grad_curv(z: torch.Tensor, y: torch.Tensor, beta: float) -> tuple[float, float]:
    """dNLL/dβ and d²NLL/dβ² of NLL(β) = mean_i [logsumexp(β z_i) − β z_{i, y_i}].

    With p = softmax(β z): the gradient is mean_i (E_p[z_i] − z_{i, y_i}) and the curvature
    mean_i Var_p[z_i] ≥ 0, computed as E_p[(z − E_p z)²] to avoid cancellation.
    """
    n, k = z.shape
    step = max(1, _CHUNK_CELLS // k)
    g = 0.0
    h = 0.0
    for i in range(0, n, step):
        zc = z[i : i + step]
        p = torch.softmax(beta * zc, dim=1)
        m1 = (p * zc).sum(dim=1)
        g += float((m1 - zc.gather(1, y[i : i + step, None]).squeeze(1)).sum())
        h += float((p * (zc - m1[:, None]) ** 2).sum())
    return g / n, h / n


def fit_temperature(logits: ArrayLike, labels: ArrayLike) -> float:
    """The T > 0 minimising the mean NLL of softmax(logits / T) on ``(logits, labels)``.

    Method: safeguarded Newton on β = 1/T over [1/T_max, 1/T_min], in float64. The NLL is
    convex in β (a log-sum-exp of functions linear in β, minus a linear term) with closed-form
    gradient mean(E_p[z] − z_y) and curvature mean(Var_p[z]), so the minimiser is the root of
    a monotone 1-D function: the sign of the gradient keeps a bracket, Newton steps converge
    quadratically and a geometric bisection takes over whenever a step leaves the bracket.
    This is deterministic, needs no line-search or initial-value tuning (LBFGS does), and,
    because it solves gradient = 0 rather than comparing NLL values as golden section does
    (limited to ~sqrt(machine eps) by the flat minimum), is exact to ~1e-12 relative.

    Edge cases: the bounds are :data:`TEMPERATURE_BOUNDS` = (1e-2, 1e2). If the NLL still
    decreases at a bound, that bound is returned: T = 1e-2 for perfectly separable data (every
    label the strict arg-max, where the NLL falls toward 0 as T → 0), T = 1e2 when the logits
    carry no usable signal. If every row is constant the NLL does not depend on T and 1.0 is
    returned. Empty input, a non-2-D or integer ``logits``, NaN / infinite logits and bad
    labels raise ValueError.

    Hand-worked example: the logit row (log 3, 0) seen 4 times, with labels 0, 0, 0, 1, is
    already calibrated (softmax gives 3/4, the label frequency), so T = 1.

    >>> round(fit_temperature([[math.log(3.0), 0.0]] * 4, [0, 0, 0, 1]), 9)
    1.0
    """
    lg = _as_logits(logits)
    lb = _torch(labels)
    _check_logits_labels(lg, lb)
    z = lg.detach().to(device="cpu", dtype=torch.float64)
    z = z - z.max(dim=1, keepdim=True).values  # shift-invariant; keeps E_p[z] − z_y well scaled
    y = lb.detach().to(device="cpu", dtype=torch.long)
    if not bool((z != 0).any()):
        return 1.0  # every row constant: softmax is uniform for every T

    t_min, t_max = TEMPERATURE_BOUNDS
    lo, hi = 1.0 / t_max, 1.0 / t_min  # bracket in β
    if _grad_curv(z, y, hi)[0] <= 0.0:
        return t_min  # NLL still falling at the smallest T
    if _grad_curv(z, y, lo)[0] >= 0.0:
        return t_max  # NLL still falling at the largest T

    beta = 1.0
    for _ in range(_MAX_ITER):
        g, h = _grad_curv(z, y, beta)
        if g == 0.0:
            break
        if g < 0.0:
            lo = beta
        else:
            hi = beta
        nxt = beta - g / h if h > 0.0 else math.nan
        if not lo < nxt < hi:  # also catches NaN
            nxt = math.sqrt(lo * hi)
        done = abs(nxt - beta) <= 1e-13 * beta or hi / lo - 1.0 <= 1e-13
        beta = nxt
        if done:
            break
    return 1.0 / beta


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / temperature``: the calibrated logits (top-1 unchanged for any T > 0).

    Half-precision logits are promoted to float32 first: T can be as small as 1e-2, and
    float16 overflows at 65504.
    """
    t = float(temperature)
    if not math.isfinite(t) or t <= 0.0:
        raise ValueError(f"temperature must be finite and > 0, got {temperature!r}")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return logits / t


def temperature_scaled_results(
    val_logits: ArrayLike,
    val_labels: ArrayLike,
    test_logits: ArrayLike,
    test_labels: ArrayLike,
    class_counts: ArrayLike,
    **evaluate_logits_kwargs: Any,
) -> tuple[float, EvalResult, EvalResult]:
    """Fit T on validation, then evaluate validation and test logits divided by T.

    T comes from validation only, so test numbers stay unselected. ``evaluate_logits_kwargs``
    go to :func:`mislas.metrics.evaluate_logits` (``n_bins``, ``many_above``, ...).
    Returns (T, val result, test result).
    """
    val = _as_logits(val_logits, "val_logits")
    test = _as_logits(test_logits, "test_logits")
    t = fit_temperature(val, val_labels)
    counts = _np(class_counts)
    val_res = evaluate_logits(apply_temperature(val, t), val_labels, counts, **evaluate_logits_kwargs)
    test_res = evaluate_logits(apply_temperature(test, t), test_labels, counts, **evaluate_logits_kwargs)
    return t, val_res, test_res
